"""Unit tests of sessions/cluster.py and the cluster setting (no server: slots are pure CRC16)."""

from __future__ import annotations

import pytest

from push.config import Settings
from push.exceptions import ConfigError
from push.redis_client import connect
from sessions.cluster import check_one_slot, slot
from sessions.exceptions import CrossSlot
from sessions.keys import channel_key, feed_key, user_tag


def test_a_users_keys_share_the_slot_of_its_tag() -> None:
    user = "tagx}:evil"  # encoded: its tag stays its own
    assert slot(feed_key(user, "home")) == slot(channel_key(user)) == slot(user_tag(user) + "x")
    assert slot("pr:{u:alice}:feed:home") == slot(b"u:alice")
    assert check_one_slot([feed_key(user, "home"), channel_key(user)], "write") == slot(
        channel_key(user)
    )
    assert check_one_slot([], "keyless") is None


def test_keys_of_two_slots_raise_naming_positions_not_keys() -> None:
    keys = ["pr:{u:alice}:feed:home", "pr:{u:alice}:recent", "pr:{u:bob}:recent"]
    with pytest.raises(CrossSlot) as caught:
        check_one_slot(keys, "event")
    message = str(caught.value)
    assert message.startswith("event: keys of 2 hash slots in one call")
    assert f"KEYS[3] slot {slot(keys[2])}" in message
    assert "alice" not in message and "bob" not in message  # user ids stay out of errors
    assert isinstance(caught.value, ValueError)


def test_cluster_mode_needs_a_tcp_url() -> None:
    with pytest.raises(ConfigError, match="PUSHREC_REDIS_CLUSTER=1 needs PUSHREC_REDIS_URL"):
        Settings.from_env({"PUSHREC_REDIS_CLUSTER": "1"})
    with pytest.raises(ConfigError, match="naming a node"):
        Settings.from_env(
            {"PUSHREC_REDIS_CLUSTER": "1", "PUSHREC_REDIS_URL": "unix:///run/redis.sock"}
        )
    settings = Settings.from_env(
        {"PUSHREC_REDIS_CLUSTER": "yes", "PUSHREC_REDIS_URL": "redis://10.0.0.5:7000/0"}
    )
    assert settings.redis_cluster is True


def test_a_cluster_url_with_a_database_is_refused() -> None:
    with pytest.raises(ValueError, match="only database 0"):
        connect("redis://127.0.0.1:7000/3", cluster=True)
