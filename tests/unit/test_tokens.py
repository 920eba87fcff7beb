"""Unit tests of sessions/tokens.py: TokenVerifier.mint / verify / verify_claims, anonymous
tokens, and RS256/ES256 verification with a public key (including algorithm confusion)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import re
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sessions.exceptions import InvalidToken
from sessions.tokens import MAX_SUBJECT_LEN, Claims, TokenVerifier

# At least 32 bytes: PyJWT warns (InsecureKeyLengthWarning) about shorter HS256 keys.
SECRET = "unit-test-secret-0123456789abcdef"
OTHER_SECRET = "another-secret-9876543210-fedcba"


def _verifier(leeway_s: float = 30.0) -> TokenVerifier:
    return TokenVerifier(SECRET, leeway_s=leeway_s)


def _refusal(token: str, verifier: TokenVerifier | None = None) -> InvalidToken:
    with pytest.raises(InvalidToken) as info:
        (verifier or _verifier()).verify(token)
    error = info.value
    if token:
        assert token not in str(error)
        assert token not in repr(error)
        assert all(token not in str(arg) for arg in error.args)
    assert error.__cause__ is None
    return error


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signed(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def _exp(delta_s: int = 3600) -> int:
    return int(time.time()) + delta_s


def test_mint_verify_round_trip() -> None:
    verifier = _verifier()
    assert verifier.verify(verifier.mint("visitor-42")) == "visitor-42"


def test_minted_token_carries_sub_iat_exp() -> None:
    token = _verifier().mint("visitor-42", ttl_s=600)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "visitor-42"
    assert claims["exp"] - claims["iat"] == 600
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_token_of_another_verifier_with_the_same_secret_verifies() -> None:
    token = TokenVerifier(SECRET).mint("u")
    assert _verifier().verify(token) == "u"


def test_expired_token_is_refused() -> None:
    verifier = _verifier(leeway_s=30)
    token = verifier.mint("visitor-42", ttl_s=-120)
    assert _refusal(token, verifier).reason == "expired"


def test_expiry_within_leeway_is_accepted() -> None:
    verifier = _verifier(leeway_s=30)
    assert verifier.verify(verifier.mint("visitor-42", ttl_s=-5)) == "visitor-42"


def test_wrong_secret_is_a_signature_error() -> None:
    token = TokenVerifier(OTHER_SECRET).mint("visitor-42")
    assert _refusal(token).reason == "signature"


def test_tampered_payload_is_a_signature_error() -> None:
    token = _verifier().mint("visitor-42")
    header, _, signature = token.split(".")
    payload = _b64(json.dumps({"sub": "admin", "exp": _exp()}).encode())
    assert _refusal(f"{header}.{payload}.{signature}").reason == "signature"


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "...", "x" * 200, "eyJhbGciOiJIUzI1NiJ9.%%%.%%%", "", "x" * 5000],
    ids=["word", "three-parts", "dots", "long-word", "bad-base64", "empty", "too-long"],
)
def test_garbage_is_malformed(token: str) -> None:
    assert _refusal(token).reason == "malformed"


def test_alg_none_token_is_refused() -> None:
    claims = {"sub": "visitor-42", "exp": _exp()}
    token = jwt.encode(claims, "", algorithm="none")
    assert token.endswith(".")
    assert _refusal(token).reason == "algorithm"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_hand_made_alg_none_token_with_any_signature_is_refused(alg: str) -> None:
    payload = {"sub": "visitor-42", "exp": _exp()}
    for signature in ("", "AAAA"):
        token = _hand_made({"alg": alg, "typ": "JWT"}, payload, signature)
        assert _refusal(token).reason == "algorithm"
        assert _refusal(token, _rsa_verifier()).reason == "algorithm"


def test_other_hmac_algorithm_is_refused() -> None:
    token = jwt.encode({"sub": "visitor-42", "exp": _exp()}, SECRET * 2, algorithm="HS512")
    assert _refusal(token, TokenVerifier(SECRET * 2)).reason == "algorithm"


def test_missing_sub_is_a_claims_error() -> None:
    error = _refusal(_signed({"exp": _exp()}))
    assert error.reason == "claims"
    assert "sub" in str(error)


def test_missing_exp_is_a_claims_error() -> None:
    error = _refusal(_signed({"sub": "visitor-42"}))
    assert error.reason == "claims"
    assert "exp" in str(error)


@pytest.mark.parametrize(
    "sub",
    ["", 42, None, ["u"], "x" * (MAX_SUBJECT_LEN + 1)],
    ids=["empty", "int", "null", "list", "too-long"],
)
def test_bad_subject_is_refused(sub: object) -> None:
    token = jwt.encode({"sub": sub, "exp": _exp()}, SECRET, algorithm="HS256")
    # PyJWT itself may refuse a non-string sub as malformed; either way it is refused.
    assert _refusal(token).reason in {"claims", "malformed"}


def test_subject_of_max_length_is_accepted() -> None:
    sub = "x" * MAX_SUBJECT_LEN
    assert _verifier().verify(_signed({"sub": sub, "exp": _exp()})) == sub


@pytest.mark.parametrize("secret", ["", "short", "x" * 31])
def test_short_secret_is_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="32"):
        TokenVerifier(secret)


def test_secret_of_32_characters_is_accepted() -> None:
    verifier = TokenVerifier("x" * 32)
    assert verifier.verify(verifier.mint("u")) == "u"


def test_error_messages_never_contain_the_token() -> None:
    verifier = _verifier()
    tokens = [
        verifier.mint("visitor-42", ttl_s=-3600),
        TokenVerifier(OTHER_SECRET).mint("visitor-42"),
        _signed({"exp": _exp()}),
        _signed({"sub": "visitor-42"}),
        "not-a-token-at-all-but-quite-distinctive",
    ]
    for token in tokens:
        error = _refusal(token, verifier)
        for part in token.split("."):
            if len(part) > 8:
                assert part not in str(error)


# --- helpers for public-key tokens ---------------------------------------------------------------


def _hand_made(header: dict[str, Any], payload: dict[str, Any], signature: str = "") -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}.{signature}"


def _hs256_with_key(payload: dict[str, Any], key: bytes) -> str:
    """An HS256 token keyed with arbitrary bytes (PyJWT refuses to HMAC with a PEM key)."""
    signing_input = (
        f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}."
        f"{_b64(json.dumps(payload).encode())}"
    )
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())
RSA_PUBLIC_PEM = _public_pem(RSA_KEY)
EC_PUBLIC_PEM = _public_pem(EC_KEY)
EC384_PUBLIC_PEM = _public_pem(EC384_KEY)


def _rsa_verifier(
    algorithms: tuple[str, ...] = ("RS256",), leeway_s: float = 30.0
) -> TokenVerifier:
    return TokenVerifier(
        SECRET, leeway_s=leeway_s, algorithms=algorithms, public_key=RSA_PUBLIC_PEM
    )


def _ec_verifier(algorithms: tuple[str, ...] = ("ES256",)) -> TokenVerifier:
    return TokenVerifier(SECRET, algorithms=algorithms, public_key=EC_PUBLIC_PEM)


def _shop_token(
    claims: dict[str, Any],
    alg: str = "RS256",
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = RSA_KEY,
) -> str:
    return jwt.encode(claims, key, algorithm=alg)


def _claims_refusal(token: str, verifier: TokenVerifier) -> InvalidToken:
    with pytest.raises(InvalidToken) as info:
        verifier.verify_claims(token)
    assert token not in str(info.value)
    return info.value


# --- verify_claims -------------------------------------------------------------------------------


def test_verify_claims_of_a_minted_token() -> None:
    verifier = _verifier()
    before = int(time.time())
    claims = verifier.verify_claims(verifier.mint("visitor-42", ttl_s=600))
    assert claims.sub == "visitor-42"
    assert claims.anonymous is False
    assert before + 600 <= claims.exp <= int(time.time()) + 600
    assert isinstance(claims.exp, int)


def test_claims_are_frozen() -> None:
    claims = Claims(sub="u", exp=1, anonymous=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        claims.sub = "v"  # type: ignore[misc]


# --- RS256 / ES256 -------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "RS384"])
def test_rsa_token_verifies_with_the_public_key(alg: str) -> None:
    verifier = _rsa_verifier(algorithms=(alg,))
    token = _shop_token({"sub": "shopper-1", "exp": _exp()}, alg)
    assert verifier.verify(token) == "shopper-1"
    assert verifier.verify_claims(token) == Claims("shopper-1", _exp_of(token), False)


def test_es256_token_verifies_with_the_public_key() -> None:
    token = _shop_token({"sub": "shopper-1", "exp": _exp()}, "ES256", EC_KEY)
    assert _ec_verifier().verify(token) == "shopper-1"


def test_es384_token_verifies_with_a_p384_key() -> None:
    verifier = TokenVerifier(SECRET, algorithms=("ES384",), public_key=EC384_PUBLIC_PEM)
    token = _shop_token({"sub": "shopper-1", "exp": _exp()}, "ES384", EC384_KEY)
    assert verifier.verify(token) == "shopper-1"


def test_hs256_and_rs256_together() -> None:
    verifier = _rsa_verifier(algorithms=("HS256", "RS256"))
    assert verifier.verify(verifier.mint("visitor-42")) == "visitor-42"
    assert verifier.verify(_shop_token({"sub": "shopper-1", "exp": _exp()})) == "shopper-1"


def _exp_of(token: str) -> int:
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert isinstance(exp, int)
    return exp


def test_rs256_token_of_another_key_is_a_signature_error() -> None:
    token = _shop_token({"sub": "shopper-1", "exp": _exp()}, key=OTHER_RSA_KEY)
    assert _refusal(token, _rsa_verifier()).reason == "signature"


def test_es256_token_of_another_key_is_a_signature_error() -> None:
    token = _shop_token({"sub": "shopper-1", "exp": _exp()}, "ES256", OTHER_EC_KEY)
    assert _refusal(token, _ec_verifier()).reason == "signature"


def test_tampered_rs256_payload_is_a_signature_error() -> None:
    header, _, signature = _shop_token({"sub": "shopper-1", "exp": _exp()}).split(".")
    payload = _b64(json.dumps({"sub": "admin", "exp": _exp()}).encode())
    assert _refusal(f"{header}.{payload}.{signature}", _rsa_verifier()).reason == "signature"


def test_expired_rs256_token_is_refused() -> None:
    token = _shop_token({"sub": "shopper-1", "exp": _exp(-120)})
    assert _refusal(token, _rsa_verifier()).reason == "expired"


def test_rs256_expiry_within_leeway_is_accepted() -> None:
    token = _shop_token({"sub": "shopper-1", "exp": _exp(-5)})
    assert _rsa_verifier(leeway_s=30).verify(token) == "shopper-1"


def test_rs256_token_without_exp_is_a_claims_error() -> None:
    assert _refusal(_shop_token({"sub": "shopper-1"}), _rsa_verifier()).reason == "claims"


def test_error_messages_of_rs256_tokens_never_contain_the_token() -> None:
    verifier = _rsa_verifier()
    tokens = [
        _shop_token({"sub": "shopper-1", "exp": _exp(-3600)}),
        _shop_token({"sub": "shopper-1", "exp": _exp()}, key=OTHER_RSA_KEY),
        _shop_token({"sub": "anon:shopper", "exp": _exp()}),
        _shop_token({"sub": "shopper-1", "exp": _exp()}, "ES256", EC_KEY),
    ]
    for token in tokens:
        error = _refusal(token, verifier)
        for part in token.split("."):
            if len(part) > 8:
                assert part not in str(error)


# --- algorithm selection -------------------------------------------------------------------------


@pytest.mark.parametrize("listed", [("RS256",), ("HS256", "RS256")])
def test_hs256_token_keyed_with_the_rsa_public_key_is_refused(listed: tuple[str, ...]) -> None:
    """The classic algorithm confusion: the public key (known to anyone) used as an HMAC secret."""
    verifier = _rsa_verifier(algorithms=listed)
    for key in (RSA_PUBLIC_PEM.encode(), RSA_PUBLIC_PEM.strip().encode()):
        for sub in ("shopper-1", "anon:shopper"):
            payload: dict[str, Any] = {"sub": sub, "exp": _exp(), "anon": sub.startswith("anon:")}
            token = _hs256_with_key(payload, key)
            assert _refusal(token, verifier).reason == "signature"


def test_hs256_token_keyed_with_the_ec_public_key_is_refused() -> None:
    token = _hs256_with_key({"sub": "shopper-1", "exp": _exp()}, EC_PUBLIC_PEM.encode())
    assert _refusal(token, _ec_verifier(("HS256", "ES256"))).reason == "signature"


def test_rs256_token_is_refused_when_only_hs256_is_listed() -> None:
    token = _shop_token({"sub": "shopper-1", "exp": _exp()})
    assert _refusal(token).reason == "algorithm"


def test_unlisted_public_key_algorithm_is_refused() -> None:
    verifier = _rsa_verifier(algorithms=("RS256",))
    token = _shop_token({"sub": "shopper-1", "exp": _exp()}, "RS384")
    assert _refusal(token, verifier).reason == "algorithm"
    ec_token = _shop_token({"sub": "shopper-1", "exp": _exp()}, "ES256", EC_KEY)
    assert _refusal(ec_token, verifier).reason == "algorithm"


@pytest.mark.parametrize("alg", ["PS256", "HS384", "HS512", "EdDSA", "XYZ", "", "rs256"])
def test_unsupported_algorithms_are_refused(alg: str) -> None:
    token = _hand_made({"alg": alg}, {"sub": "shopper-1", "exp": _exp()}, "AAAA")
    assert _refusal(token, _rsa_verifier(("HS256", "RS256"))).reason == "algorithm"


def test_hs256_server_token_is_refused_when_only_rs256_is_listed() -> None:
    # Only anonymous tokens may use the server secret then.
    verifier = _rsa_verifier(algorithms=("RS256",))
    token = verifier.mint("visitor-42")
    assert _refusal(token, verifier).reason == "algorithm"


@pytest.mark.parametrize("header", [{"typ": "JWT"}, {"alg": 256}, {"alg": None}, {"alg": ["x"]}])
def test_header_without_a_string_alg_is_malformed(header: dict[str, Any]) -> None:
    token = _hand_made(header, {"sub": "shopper-1", "exp": _exp()}, "AAAA")
    assert _refusal(token).reason == "malformed"


# --- construction --------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithms", [("RS256",), ("ES256",), ("HS256", "RS384")])
def test_public_key_algorithm_without_a_key_is_refused(algorithms: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="public key"):
        TokenVerifier(SECRET, algorithms=algorithms)


@pytest.mark.parametrize("algorithms", [(), ("none",), ("HS512",), ("PS256",), ("hs256",)])
def test_unsupported_algorithm_lists_are_refused(algorithms: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="algorithm"):
        TokenVerifier(SECRET, algorithms=algorithms)


def test_public_key_without_a_public_key_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="no RS"):
        TokenVerifier(SECRET, public_key=RSA_PUBLIC_PEM)


@pytest.mark.parametrize(
    "pem",
    ["", "not a key", _private_pem(RSA_KEY), RSA_PUBLIC_PEM.replace("A", "B", 5)],
    ids=["empty", "text", "private-key", "corrupt"],
)
def test_malformed_public_key_is_refused(pem: str) -> None:
    with pytest.raises(ValueError, match="PEM public key") as info:
        TokenVerifier(SECRET, algorithms=("RS256",), public_key=pem)
    if pem:
        assert pem not in str(info.value)


@pytest.mark.parametrize(
    ("algorithms", "pem", "match"),
    [
        (("RS256",), EC_PUBLIC_PEM, "RSA"),
        (("ES256",), RSA_PUBLIC_PEM, "EC"),
        (("ES256",), EC384_PUBLIC_PEM, "secp256r1"),
        (("ES384",), EC_PUBLIC_PEM, "secp384r1"),
        (("RS256", "ES256"), RSA_PUBLIC_PEM, "EC"),
    ],
)
def test_public_key_of_the_wrong_type_is_refused(
    algorithms: tuple[str, ...], pem: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        TokenVerifier(SECRET, algorithms=algorithms, public_key=pem)


def test_secret_is_checked_even_with_public_key_algorithms() -> None:
    with pytest.raises(ValueError, match="32"):
        TokenVerifier("short", algorithms=("RS256",), public_key=RSA_PUBLIC_PEM)


def test_algorithms_property() -> None:
    assert _rsa_verifier(("HS256", "RS256")).algorithms == frozenset({"HS256", "RS256"})


# --- anonymous tokens ----------------------------------------------------------------------------

ANON_ID = re.compile(r"anon:[A-Za-z0-9_-]{22}")


def test_mint_anonymous() -> None:
    verifier = _verifier()
    before = int(time.time())
    user_id, token, expires_at = verifier.mint_anonymous(600)
    assert ANON_ID.fullmatch(user_id)
    assert before + 600 <= expires_at <= int(time.time()) + 600
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims == {
        "sub": user_id,
        "anon": True,
        "iat": expires_at - 600,
        "exp": expires_at,
    }
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert verifier.verify_claims(token) == Claims(user_id, expires_at, anonymous=True)
    assert verifier.verify(token) == user_id


def test_mint_anonymous_named_fields_and_default_ttl() -> None:
    minted = _verifier().mint_anonymous()
    assert minted.user_id == minted[0]
    assert minted.token == minted[1]
    assert minted.expires_at - int(time.time()) in range(30 * 86_400 - 5, 30 * 86_400 + 1)


def test_anonymous_ids_are_unique() -> None:
    verifier = _verifier()
    assert len({verifier.mint_anonymous(60).user_id for _ in range(200)}) == 200


@pytest.mark.parametrize("listed", [("RS256",), ("ES256",)])
def test_anonymous_token_verifies_when_only_public_key_algorithms_are_listed(
    listed: tuple[str, ...],
) -> None:
    pem = RSA_PUBLIC_PEM if listed == ("RS256",) else EC_PUBLIC_PEM
    verifier = TokenVerifier(SECRET, algorithms=listed, public_key=pem)
    user_id, token, _ = verifier.mint_anonymous(600)
    assert verifier.verify_claims(token).anonymous is True
    assert verifier.verify(token) == user_id


def test_anonymous_token_of_another_secret_is_refused() -> None:
    _, token, _ = TokenVerifier(OTHER_SECRET).mint_anonymous(600)
    assert _refusal(token).reason == "signature"
    assert _refusal(token, _rsa_verifier()).reason == "signature"


def test_expired_anonymous_token_is_refused() -> None:
    verifier = _verifier()
    _, token, _ = verifier.mint_anonymous(-120)
    assert _refusal(token, verifier).reason == "expired"


def test_refresh_anonymous_keeps_the_id() -> None:
    verifier = _rsa_verifier(("RS256",))
    user_id, token, expires_at = verifier.mint_anonymous(60)
    new_id, new_token, new_expires_at = verifier.refresh_anonymous(token, 3600)
    assert new_id == user_id
    assert new_expires_at >= expires_at + 3600 - 60
    assert verifier.verify_claims(new_token) == Claims(user_id, new_expires_at, anonymous=True)


def test_refresh_anonymous_within_leeway() -> None:
    verifier = _verifier(leeway_s=30)
    user_id, token, _ = verifier.mint_anonymous(-5)
    assert verifier.refresh_anonymous(token, 600).user_id == user_id


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda v: v.mint("visitor-42"), "claims"),
        (lambda v: _shop_token({"sub": "shopper-1", "exp": _exp()}), "claims"),
        (lambda v: _shop_token({"sub": "shopper-1", "anon": True, "exp": _exp()}), "claims"),
        (lambda v: v.mint_anonymous(-120).token, "expired"),
        (lambda v: TokenVerifier(OTHER_SECRET).mint_anonymous(600).token, "signature"),
        (lambda v: "garbage", "malformed"),
    ],
    ids=["user", "shop", "shop-anon-claim", "expired", "other-secret", "garbage"],
)
def test_refresh_anonymous_refuses_other_tokens(make: Any, reason: str) -> None:
    verifier = _rsa_verifier(("HS256", "RS256"))
    token = make(verifier)
    with pytest.raises(InvalidToken) as info:
        verifier.refresh_anonymous(token, 600)
    assert info.value.reason == reason
    assert token not in str(info.value)


def test_shop_token_with_an_anon_subject_is_refused() -> None:
    for listed, token in [
        (("RS256",), _shop_token({"sub": "anon:shopper", "exp": _exp()})),
        (("RS256",), _shop_token({"sub": "anon:shopper", "anon": True, "exp": _exp()})),
    ]:
        error = _claims_refusal(token, _rsa_verifier(listed))
        assert error.reason == "claims"
        assert "anon:" in str(error)
    es_token = _shop_token({"sub": "anon:x", "anon": True, "exp": _exp()}, "ES256", EC_KEY)
    assert _claims_refusal(es_token, _ec_verifier()).reason == "claims"


def test_shop_token_with_an_anon_claim_is_not_anonymous() -> None:
    token = _shop_token({"sub": "shopper-1", "anon": True, "exp": _exp()})
    assert _rsa_verifier().verify_claims(token).anonymous is False


@pytest.mark.parametrize(
    "payload",
    [
        {"sub": "anon:abc"},
        {"sub": "anon:abc", "anon": False},
        {"sub": "anon:abc", "anon": "true"},
        {"sub": "anon:abc", "anon": 1},
        {"sub": "visitor-42", "anon": True},
    ],
    ids=["no-claim", "false", "string", "int", "claim-without-prefix"],
)
def test_hs256_token_whose_anon_claim_and_subject_disagree_is_refused(
    payload: dict[str, Any],
) -> None:
    token = _signed({**payload, "exp": _exp()})
    assert _claims_refusal(token, _verifier()).reason == "claims"
    assert _claims_refusal(token, _rsa_verifier(("RS256",))).reason == "claims"


def test_mint_refuses_anon_subjects() -> None:
    with pytest.raises(ValueError, match="mint_anonymous"):
        _verifier().mint("anon:abc")


def test_a_verified_token_is_answered_from_the_cache_until_it_expires() -> None:
    now = [time.time()]
    verifier = TokenVerifier(SECRET, leeway_s=30, clock=lambda: now[0])
    token = _signed({"sub": "u-1", "exp": int(now[0]) + 60})
    first = verifier.verify_claims(token)
    assert verifier.verify_claims(token) is first  # no second signature check
    now[0] += 60 + 29
    assert verifier.verify(token) == "u-1"  # within the leeway
    now[0] += 2
    assert _refusal(token, verifier).reason == "expired"


def test_the_cache_never_vouches_for_a_different_string() -> None:
    verifier = _verifier()
    token = _signed({"sub": "u-1", "exp": _exp()})
    verifier.verify(token)
    header = token.split(".")[0]
    forged = f"{header}.{_b64(json.dumps({'sub': 'u-1', 'exp': _exp()}).encode())}.{token[-10:]}"
    assert _refusal(forged, verifier).reason in {"signature", "malformed"}
    other = _signed({"sub": "u-2", "exp": _exp()}, OTHER_SECRET)
    assert _refusal(other, verifier).reason == "signature"


def test_the_cache_is_bounded_oldest_first() -> None:
    verifier = TokenVerifier(SECRET, cache_size=2)
    tokens = [_signed({"sub": f"u-{i}", "exp": _exp()}) for i in range(3)]
    claims = [verifier.verify_claims(t) for t in tokens]
    assert verifier.verify_claims(tokens[2]) is claims[2]
    assert verifier.verify_claims(tokens[1]) is claims[1]
    assert verifier.verify_claims(tokens[0]) is not claims[0]  # evicted, verified again


# -- issue 12, defect 11: leeway default and claim types ----------------------------------------


def test_default_leeway_refuses_a_token_expired_20_s_ago() -> None:
    verifier = TokenVerifier(SECRET)  # the default leeway: a few seconds of clock skew
    token = verifier.mint("visitor-42", ttl_s=-20)
    assert _refusal(token, verifier).reason == "expired"
    assert verifier.verify(verifier.mint("visitor-42", ttl_s=-2)) == "visitor-42"


def test_default_leeway_setting_is_a_few_seconds() -> None:
    from push.config import Settings

    assert 0 < Settings().token_leeway_s <= 5
    token = TokenVerifier(SECRET).mint("visitor-42", ttl_s=-20)
    assert _refusal(token, Settings(secret=SECRET).build_verifier(SECRET)).reason == "expired"


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": str(_exp())},
        {"exp": "soon"},
        {"exp": True},
        {"exp": [_exp()]},
        {"exp": {"at": _exp()}},
        {"exp": _exp(), "iat": str(int(time.time()))},
        {"exp": _exp(), "iat": True},
        {"exp": _exp(), "nbf": "0"},
        {"exp": _exp(), "nbf": False},
        {"exp": _exp(), "nbf": None},
    ],
    ids=repr,
)
def test_time_claims_must_be_json_numbers(claims: dict[str, Any]) -> None:
    error = _refusal(_signed({"sub": "visitor-42", **claims}))
    assert error.reason == "claims"
    assert re.search(r"\b(exp|iat|nbf)\b", str(error))


def test_time_claims_may_be_fractional_numbers() -> None:
    # RFC 7519 §2: a NumericDate may be non-integer.
    token = _signed({"sub": "visitor-42", "exp": _exp() + 0.5, "iat": time.time()})
    assert _verifier().verify_claims(token).exp == _exp()


def test_fractional_expired_token_is_expired() -> None:
    token = _signed({"sub": "visitor-42", "exp": time.time() - 60.5})
    assert _refusal(token, _verifier(leeway_s=5)).reason == "expired"


def test_future_nbf_and_iat_beyond_the_leeway_are_refused() -> None:
    verifier = _verifier(leeway_s=5)
    for claim in ("nbf", "iat"):
        token = _signed({"sub": "visitor-42", "exp": _exp(), claim: time.time() + 60})
        assert _refusal(token, verifier).reason == "claims"
        token = _signed({"sub": "visitor-42", "exp": _exp(), claim: time.time() + 2})
        assert verifier.verify(token) == "visitor-42"
