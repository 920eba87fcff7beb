"""Unit tests of push/config.py: Settings defaults, environment casting and validation."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from push.config import PREFIX, Settings
from push.exceptions import ConfigError


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.redis_url is None
    assert settings.data_dir is None
    assert settings.secret is None
    assert settings.admin_key is None
    assert settings.log_format == "auto"
    assert settings.feed_size == 12
    assert settings.max_pending_diffs == 8
    assert settings.token_leeway_s == 30.0
    assert settings.demo is False


def test_default_settings_validate() -> None:
    Settings().validate()


def test_unrelated_and_empty_variables_are_ignored() -> None:
    env = {"PORT": "1", "PUSHREC_PORT": "", "PUSHREC_NOT_A_SETTING": "x", "pushrec_port": "2"}
    assert Settings.from_env(env) == Settings()


def test_env_casting() -> None:
    env = {
        "PUSHREC_HOST": "192.0.2.1",
        "PUSHREC_PORT": "9090",
        "PUSHREC_REDIS_URL": "redis://localhost:6379/1",
        "PUSHREC_DATA_DIR": "/var/lib/pushrec",
        "PUSHREC_SECRET": "s" * 32,
        "PUSHREC_ADMIN_KEY": "k" * 16,
        "PUSHREC_LOG_FORMAT": "json",
        "PUSHREC_FEED_SIZE": "20",
        "PUSHREC_TOKEN_LEEWAY_S": "2.5",
        "PUSHREC_SEND_TIMEOUT_S": "3",
        "PUSHREC_DEMO": "true",
    }
    settings = Settings.from_env(env)
    assert settings.host == "192.0.2.1"
    assert settings.port == 9090
    assert isinstance(settings.port, int)
    assert settings.redis_url == "redis://localhost:6379/1"
    assert settings.data_dir == Path("/var/lib/pushrec")
    assert isinstance(settings.data_dir, Path)
    assert settings.secret == "s" * 32
    assert settings.admin_key == "k" * 16
    assert settings.log_format == "json"
    assert settings.feed_size == 20
    assert settings.token_leeway_s == 2.5
    assert settings.send_timeout_s == 3.0
    assert isinstance(settings.send_timeout_s, float)
    assert settings.demo is True


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "on"])
def test_bool_true_spellings(raw: str) -> None:
    assert Settings.from_env({"PUSHREC_DEMO": raw}).demo is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "no", "off"])
def test_bool_false_spellings(raw: str) -> None:
    assert Settings.from_env({"PUSHREC_DEMO": raw}).demo is False


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("PUSHREC_PORT", "eighty"),
        ("PUSHREC_PORT", "80.5"),
        ("PUSHREC_FEED_SIZE", "12x"),
        ("PUSHREC_TOKEN_LEEWAY_S", "soon"),
        ("PUSHREC_DEMO", "maybe"),
    ],
)
def test_malformed_value_names_the_variable(var: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: raw})
    assert var in str(info.value)
    assert raw in str(info.value)


def test_bad_int_message_names_the_type() -> None:
    with pytest.raises(ConfigError, match=r"PUSHREC_PORT must be a int"):
        Settings.from_env({"PUSHREC_PORT": "x"})


@pytest.mark.parametrize(("var", "minimum"), [("PUSHREC_SECRET", 32), ("PUSHREC_ADMIN_KEY", 16)])
def test_short_secret_is_refused(var: str, minimum: int) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: "s" * (minimum - 1)})
    assert var in str(info.value)
    assert "s" * (minimum - 1) not in str(info.value)  # the secret is not echoed


@pytest.mark.parametrize(("var", "minimum"), [("PUSHREC_SECRET", 32), ("PUSHREC_ADMIN_KEY", 16)])
def test_secret_of_minimum_length_is_accepted(var: str, minimum: int) -> None:
    Settings.from_env({var: "s" * minimum})


def test_bad_log_format_is_refused() -> None:
    with pytest.raises(ConfigError, match="PUSHREC_LOG_FORMAT"):
        Settings.from_env({"PUSHREC_LOG_FORMAT": "xml"})


@pytest.mark.parametrize(
    "name", ["bus_partitions", "bus_capacity", "max_batch", "feed_size", "history_len"]
)
def test_counts_must_be_positive(name: str) -> None:
    var = PREFIX + name.upper()
    with pytest.raises(ConfigError, match=var):
        Settings.from_env({var: "0"})


def test_replace_overrides_and_keeps_the_rest() -> None:
    base = Settings.from_env({"PUSHREC_PORT": "9000"})
    changed = base.replace(host="::1")
    assert changed.host == "::1"
    assert changed.port == 9000
    assert base.host == "127.0.0.1"


def test_every_field_is_read_from_its_variable() -> None:
    # A well-formed value for every field's type, so a field with a type _cast does not know
    # would show up here.
    samples = {
        "int": "7",
        "float": "1.5",
        "bool": "yes",
        "Path": "/srv/pushrec-data",
        "str": "value-" + "v" * 32,
    }
    env: dict[str, str] = {}
    for f in fields(Settings):
        kind = str(f.type).split(" ")[0]
        env[PREFIX + f.name.upper()] = samples[kind]
    env["PUSHREC_LOG_FORMAT"] = "console"
    settings = Settings.from_env(env)
    assert settings.port == 7
    assert settings.token_leeway_s == 1.5
    assert settings.demo is True
    assert settings.data_dir == Path("/srv/pushrec-data")
    assert settings.log_format == "console"
