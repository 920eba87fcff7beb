"""Unit tests of consent (streams/consent.py): the ``consent`` event's validation on every way in
(HTTP/WebSocket through :func:`parse_event`, Kafka records through :func:`decode_record`), the
record and the policy, the policy compiled into the event script, and ``PUSHREC_CONSENT``."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from push.config import Settings
from push.exceptions import ConfigError
from streams.consent import (
    IMPLIED,
    REQUIRED,
    ConsentRecord,
    ConsentStore,
    consent_key,
    parse_record,
    withdrawal_keys,
)
from streams.events import CONSENT, EVENT_TYPES, Event, parse_event
from streams.exceptions import InvalidEvent
from streams.profile import WEIGHTS, ProfileTuning, ScoringTuning, script_source
from streams.records import decode_record

NOW = 1_750_000_000_000


def _consent(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "event_id": "c-1",
        "user_id": "u-1",
        "type": "consent",
        "ts": NOW - 1000,
        "props": {"personalization": False},
    }
    obj.update(changes)
    return obj


def _reason(obj: Any, auth_user: str | None = None) -> str:
    with pytest.raises(InvalidEvent) as exc:
        parse_event(obj, auth_user=auth_user, now_ms=NOW)
    return exc.value.reason


def test_consent_is_an_event_type_that_changes_no_aggregate() -> None:
    assert CONSENT in EVENT_TYPES
    assert WEIGHTS[CONSENT] == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("granted", [True, False])
def test_a_consent_event_carries_one_boolean(granted: bool) -> None:
    event = parse_event(_consent(props={"personalization": granted}), auth_user=None, now_ms=NOW)
    assert event == Event("c-1", "u-1", CONSENT, None, NOW - 1000, {"personalization": granted})
    # item_id: null is the same as no item.
    assert parse_event(_consent(item_id=None), auth_user=None, now_ms=NOW).item_id is None


@pytest.mark.parametrize(
    "props",
    [
        None,
        {},
        {"personalization": "true"},
        {"personalization": 1},
        {"personalization": 0},
        {"personalization": None},
        {"personalization": [True]},
        {"personalization": True, "source": "api"},
        {"marketing": True},
    ],
)
def test_bad_consent_props_are_refused_with_their_own_reason(props: Any) -> None:
    obj = _consent(props=props)
    assert _reason(obj) == "bad_consent"


def test_a_consent_event_names_no_item() -> None:
    assert _reason(_consent(item_id="sku-1")) == "bad_consent"


def test_a_visitor_token_records_only_its_own_decision() -> None:
    mine = parse_event(
        {k: v for k, v in _consent().items() if k != "user_id"}, auth_user="u-1", now_ms=NOW
    )
    assert (mine.user_id, mine.props) == ("u-1", {"personalization": False})
    assert _reason(_consent(user_id="u-2"), auth_user="u-1") == "forbidden_user"


def test_the_general_rules_still_apply_to_consent_events() -> None:
    assert _reason(_consent(ts=NOW + 2 * 86_400_000)) == "bad_ts"
    assert _reason(_consent(event_id="")) == "bad_event_id"
    assert _reason(_consent(props=[True])) == "bad_props"


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_kafka_records_are_held_to_the_same_rules(encoding: str) -> None:
    def encode(obj: dict[str, Any]) -> bytes:
        if encoding == "json":
            return json.dumps(obj).encode()
        data: bytes = msgpack.packb(obj)
        return data

    event = decode_record(encode(_consent()), None, record_ts_ms=NOW)
    assert (event.type, event.props) == (CONSENT, {"personalization": False})
    with pytest.raises(InvalidEvent) as exc:
        decode_record(encode(_consent(props={"personalization": "no"})), None, record_ts_ms=NOW)
    assert exc.value.reason == "bad_consent"


def test_the_record_key_is_per_user_under_the_users_hash_tag() -> None:
    assert consent_key("u-1") == "pr:{u:u-1}:consent"
    assert all(key.startswith("pr:{u:u-1}:ev:") for key in withdrawal_keys("u-1"))


def test_a_record_is_read_from_its_hash_fields() -> None:
    assert parse_record([None, None, None, None]) is None
    assert parse_record([b"maybe", b"1", b"api", None]) is None
    record = parse_record([b"denied", b"1750000000000", b"event", b"1750000000.123456"])
    assert record == ConsentRecord(False, 1_750_000_000_000, "event", True)
    assert record.to_json() == {
        "personalization": False,
        "recorded_at": 1_750_000_000_000,
        "source": "event",
        "pending_erase": True,
    }
    granted = parse_record([b"granted", b"5", b"api", None])
    assert granted is not None and granted.granted and not granted.pending_erase


@pytest.mark.parametrize(
    ("required", "record", "personal"),
    [
        (False, None, True),  # implied: personalize unless denied
        (False, ConsentRecord(True, 1, "api"), True),
        (False, ConsentRecord(False, 1, "api"), False),
        (True, None, False),  # required: only after a recorded grant
        (True, ConsentRecord(True, 1, "event"), True),
        (True, ConsentRecord(False, 1, "event"), False),
    ],
)
def test_the_policy_decides_who_is_personalized(
    required: bool, record: ConsentRecord | None, personal: bool
) -> None:
    store = ConsentStore(None, required=required)  # type: ignore[arg-type]  # no I/O here
    assert store.personal(record) is personal
    assert store.policy == (REQUIRED if required else IMPLIED)


def test_the_policy_is_compiled_into_the_event_script_as_a_number() -> None:
    implied = script_source(ProfileTuning(), ScoringTuning())
    required = script_source(ProfileTuning(consent_required=True), ScoringTuning())
    assert "(not consent[1] and 0 == 0)" in implied
    assert "(not consent[1] and 1 == 0)" in required
    assert "True" not in required and "${" not in required


def test_pushrec_consent_takes_implied_or_required() -> None:
    assert Settings.from_env({}).consent == IMPLIED
    assert Settings.from_env({"PUSHREC_CONSENT": "required"}).consent == REQUIRED
    with pytest.raises(ConfigError, match="PUSHREC_CONSENT must be implied or required"):
        Settings.from_env({"PUSHREC_CONSENT": "opt-in"})
