"""Unit tests of sessions/tokens.py: TokenVerifier.mint / verify."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest

from sessions.exceptions import InvalidToken
from sessions.tokens import MAX_SUBJECT_LEN, TokenVerifier

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
    token = jwt.encode(claims, None, algorithm="none")
    assert token.endswith(".")
    assert _refusal(token).reason != "ok"


def test_hand_made_alg_none_token_with_any_signature_is_refused() -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64(json.dumps({"sub": "visitor-42", "exp": _exp()}).encode())
    for signature in ("", "AAAA"):
        _refusal(f"{header}.{payload}.{signature}")


def test_other_hmac_algorithm_is_refused() -> None:
    token = jwt.encode({"sub": "visitor-42", "exp": _exp()}, SECRET * 2, algorithm="HS512")
    _refusal(token, TokenVerifier(SECRET * 2))


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
