"""Unit tests of push/config.py: Settings defaults, environment casting and validation."""

from __future__ import annotations

import os
import time
from dataclasses import fields
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from push.config import PREFIX, Settings
from push.exceptions import ConfigError
from sessions.exceptions import InvalidToken

SECRET = "config-test-secret-0123456789abcdef"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def rsa_pem(tmp_path: Path) -> Path:
    path = tmp_path / "issuer-rsa.pem"
    path.write_bytes(_public_pem(RSA_KEY))
    return path


@pytest.fixture
def ec_pem(tmp_path: Path) -> Path:
    path = tmp_path / "issuer-ec.pem"
    path.write_bytes(_public_pem(EC_KEY))
    return path


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
    assert settings.token_leeway_s == 5.0
    assert settings.demo is False
    assert settings.token_algorithms == "HS256"
    assert settings.token_public_key_file is None
    assert settings.anon_token_ttl_s == 30 * 86_400
    assert settings.allowed_origins == ""
    assert settings.max_messages_per_s == 20.0
    assert settings.message_burst == 40
    assert settings.ws_deflate is False
    assert settings.ws_deflate_min_bytes == 256
    assert settings.algorithms() == ("HS256",)
    assert settings.origins() is None


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


def test_every_field_is_read_from_its_variable(tmp_path: Path) -> None:
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
    # Settings whose str / Path values have a shape of their own.
    pem = tmp_path / "issuer.pem"
    pem.write_bytes(_public_pem(RSA_KEY))
    env["PUSHREC_TOKEN_ALGORITHMS"] = "HS256,RS256"
    env["PUSHREC_TOKEN_PUBLIC_KEY_FILE"] = str(pem)
    env["PUSHREC_ALLOWED_ORIGINS"] = "https://shop.example"
    env["PUSHREC_CONSENT"] = "required"
    env["PUSHREC_LOG_LEVEL_LIBS"] = "debug"
    env["PUSHREC_REDIS_URL"] = "redis://redis:6379/0"  # PUSHREC_REDIS_CLUSTER needs a node's URL
    settings = Settings.from_env(env)
    assert settings.port == 7
    assert settings.consent == "required"
    assert settings.token_leeway_s == 1.5
    assert settings.demo is True
    assert settings.data_dir == Path("/srv/pushrec-data")
    assert settings.log_format == "console"


# --- new settings: casting -----------------------------------------------------------------------


def test_env_casting_of_token_and_client_settings(rsa_pem: Path) -> None:
    env = {
        "PUSHREC_TOKEN_ALGORITHMS": "HS256, RS256",
        "PUSHREC_TOKEN_PUBLIC_KEY_FILE": str(rsa_pem),
        "PUSHREC_ANON_TOKEN_TTL_S": "3600",
        "PUSHREC_ALLOWED_ORIGINS": "https://shop.example, http://localhost:3000",
        "PUSHREC_MAX_MESSAGES_PER_S": "5.5",
        "PUSHREC_MESSAGE_BURST": "10",
    }
    settings = Settings.from_env(env)
    assert settings.token_algorithms == "HS256, RS256"
    assert settings.algorithms() == ("HS256", "RS256")
    assert settings.token_public_key_file == rsa_pem
    assert isinstance(settings.token_public_key_file, Path)
    assert settings.anon_token_ttl_s == 3600
    assert settings.origins() == frozenset({"https://shop.example", "http://localhost:3000"})
    assert settings.max_messages_per_s == 5.5
    assert settings.message_burst == 10


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("PUSHREC_ANON_TOKEN_TTL_S", "30d"),
        ("PUSHREC_MAX_MESSAGES_PER_S", "fast"),
        ("PUSHREC_MESSAGE_BURST", "4.5"),
    ],
)
def test_malformed_new_numbers_name_the_variable(var: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=var):
        Settings.from_env({var: raw})


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("PUSHREC_ANON_TOKEN_TTL_S", "0"),
        ("PUSHREC_MESSAGE_BURST", "0"),
        ("PUSHREC_MAX_MESSAGES_PER_S", "0"),
        ("PUSHREC_MAX_MESSAGES_PER_S", "-1"),
        ("PUSHREC_MAX_MESSAGES_PER_S", "nan"),
        ("PUSHREC_MAX_MESSAGES_PER_S", "inf"),
    ],
)
def test_rate_settings_must_be_positive(var: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=var):
        Settings.from_env({var: raw})


def test_small_rate_is_accepted() -> None:
    assert Settings.from_env({"PUSHREC_MAX_MESSAGES_PER_S": "0.1"}).max_messages_per_s == 0.1


def test_ws_deflate_settings() -> None:
    env = {"PUSHREC_WS_DEFLATE": "1", "PUSHREC_WS_DEFLATE_MIN_BYTES": "0"}
    settings = Settings.from_env(env)
    assert settings.ws_deflate is True
    assert settings.ws_deflate_min_bytes == 0  # 0: compress every data frame
    assert Settings.from_env({"PUSHREC_WS_DEFLATE": "off"}).ws_deflate is False
    with pytest.raises(ConfigError, match="PUSHREC_WS_DEFLATE_MIN_BYTES"):
        Settings.from_env({"PUSHREC_WS_DEFLATE_MIN_BYTES": "-1"})
    with pytest.raises(ConfigError, match="PUSHREC_WS_DEFLATE"):
        Settings.from_env({"PUSHREC_WS_DEFLATE": "gzip"})


# --- token algorithms and public key -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("HS256", ("HS256",)),
        ("hs256", ("HS256",)),
        (" HS256 , HS256 ,", ("HS256",)),
    ],
)
def test_token_algorithms_are_normalized(raw: str, expected: tuple[str, ...]) -> None:
    assert Settings.from_env({"PUSHREC_TOKEN_ALGORITHMS": raw}).algorithms() == expected


@pytest.mark.parametrize("raw", ["none", "HS512", "PS256", "RS256;ES256", "HS256,EdDSA"])
def test_unsupported_token_algorithm_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="PUSHREC_TOKEN_ALGORITHMS") as info:
        Settings.from_env({"PUSHREC_TOKEN_ALGORITHMS": raw})
    assert "HS256, RS256" in str(info.value) or "ES256" in str(info.value)  # lists the choices


@pytest.mark.parametrize("raw", [",", " , ,"])
def test_empty_token_algorithm_list_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="at least one"):
        Settings.from_env({"PUSHREC_TOKEN_ALGORITHMS": raw})


@pytest.mark.parametrize("raw", ["RS256", "HS256,ES256", "rs384"])
def test_public_key_algorithm_needs_a_key_file(raw: str) -> None:
    with pytest.raises(ConfigError, match="PUSHREC_TOKEN_PUBLIC_KEY_FILE"):
        Settings.from_env({"PUSHREC_TOKEN_ALGORITHMS": raw})


def test_key_file_without_a_public_key_algorithm_is_refused(rsa_pem: Path) -> None:
    with pytest.raises(ConfigError, match="PUSHREC_TOKEN_PUBLIC_KEY_FILE is set"):
        Settings.from_env({"PUSHREC_TOKEN_PUBLIC_KEY_FILE": str(rsa_pem)})


def test_missing_key_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match="does not exist") as info:
        Settings(token_algorithms="RS256", token_public_key_file=missing).validate()
    assert "PUSHREC_TOKEN_PUBLIC_KEY_FILE" in str(info.value)
    assert str(missing) in str(info.value)


def test_directory_as_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="directory"):
        Settings(token_algorithms="RS256", token_public_key_file=tmp_path).validate()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_key_file_is_refused(rsa_pem: Path) -> None:
    rsa_pem.chmod(0)
    with pytest.raises(ConfigError, match="not readable"):
        Settings(token_algorithms="RS256", token_public_key_file=rsa_pem).validate()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "not a PEM public key"),
        (b"hello", "not a PEM public key"),
        (b"\xff\xfe binary", "not a PEM text file"),
        (
            RSA_KEY.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "not the private key",
        ),
        (_public_pem(EC_KEY), "RSA public key"),
    ],
    ids=["empty", "text", "binary", "private-key", "ec-key-for-rs256"],
)
def test_bad_key_file_is_refused(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="PUSHREC_TOKEN_PUBLIC_KEY_FILE") as info:
        Settings(token_algorithms="RS256", token_public_key_file=path).validate()
    assert match in str(info.value)
    assert "PRIVATE" not in str(info.value)  # the key is not echoed


def test_ec_key_file_is_accepted_for_es256(ec_pem: Path) -> None:
    env = {"PUSHREC_TOKEN_ALGORITHMS": "ES256", "PUSHREC_TOKEN_PUBLIC_KEY_FILE": str(ec_pem)}
    assert Settings.from_env(env).algorithms() == ("ES256",)


# --- build_verifier ------------------------------------------------------------------------------


def test_build_verifier_default_is_hs256() -> None:
    verifier = Settings(token_leeway_s=0).build_verifier(SECRET)
    assert verifier.algorithms == frozenset({"HS256"})
    assert verifier.verify(verifier.mint("u")) == "u"
    with pytest.raises(InvalidToken) as info:
        verifier.verify(verifier.mint("u", ttl_s=-5))  # no leeway
    assert info.value.reason == "expired"


def test_build_verifier_with_rs256(rsa_pem: Path) -> None:
    settings = Settings(token_algorithms="RS256", token_public_key_file=rsa_pem)
    settings.validate()
    verifier = settings.build_verifier(SECRET)
    now = int(time.time())
    shop = jwt.encode({"sub": "shopper-1", "exp": now + 60}, RSA_KEY, algorithm="RS256")
    assert verifier.verify(shop) == "shopper-1"
    user_id, token, _ = verifier.mint_anonymous(settings.anon_token_ttl_s)
    assert verifier.verify_claims(token).anonymous is True
    assert verifier.verify(token) == user_id
    with pytest.raises(InvalidToken) as info:
        verifier.verify(verifier.mint("visitor-42"))
    assert info.value.reason == "algorithm"


def test_build_verifier_with_a_short_secret_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="32"):
        Settings().build_verifier("short")


def test_build_verifier_with_a_missing_key_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(token_algorithms="RS256", token_public_key_file=tmp_path / "gone.pem")
    with pytest.raises(ConfigError, match="does not exist"):
        settings.build_verifier(SECRET)


# --- allowed origins -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["", "*", " * ", " ", ","])
def test_any_origin(raw: str) -> None:
    settings = Settings(allowed_origins=raw)
    settings.validate()
    assert settings.origins() is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://shop.example", {"https://shop.example"}),
        ("HTTPS://Shop.Example", {"https://shop.example"}),
        ("https://shop.example:443", {"https://shop.example"}),
        ("http://shop.example:80", {"http://shop.example"}),
        ("http://shop.example:443", {"http://shop.example:443"}),
        (
            "http://localhost:3000,http://127.0.0.1:8080",
            {"http://localhost:3000", "http://127.0.0.1:8080"},
        ),
        ("http://[::1]:8080", {"http://[::1]:8080"}),
        ("https://a.example, https://a.example ,", {"https://a.example"}),
        ("chrome-extension://abcdefghijklmnop", {"chrome-extension://abcdefghijklmnop"}),
        ("capacitor://localhost", {"capacitor://localhost"}),
        ("https://xn--bcher-kva.example", {"https://xn--bcher-kva.example"}),
    ],
)
def test_origins_are_normalized(raw: str, expected: set[str]) -> None:
    settings = Settings.from_env({"PUSHREC_ALLOWED_ORIGINS": raw})
    assert settings.origins() == frozenset(expected)


@pytest.mark.parametrize(
    "raw",
    [
        "shop.example",
        "https://shop.example/",
        "https://shop.example/path",
        "https://shop.example?x=1",
        "https://",
        "https//shop.example",
        "://shop.example",
        "https://shop.example:0",
        "https://shop.example:99999",
        "https://shop.example:",
        "https://*.shop.example",
        "https://user@shop.example",
        "https://shop_example.com",
        "https://-shop.example",
        "null",
        "*,https://shop.example",
        "https://shop.example,*",
        "https://ok.example, bad",
    ],
)
def test_malformed_origin_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="PUSHREC_ALLOWED_ORIGINS"):
        Settings.from_env({"PUSHREC_ALLOWED_ORIGINS": raw})
