"""Verification and minting of visitor tokens (JWT, HS256).

Guarantees: :meth:`TokenVerifier.verify` returns a subject only for a token signed with the
configured secret, of an allowed algorithm (never ``none``), carrying a non-empty string ``sub``
and an ``exp`` that has not passed (with ``leeway_s`` of clock skew). Error messages never repeat
the token.
"""

from __future__ import annotations

import time

import jwt

from sessions.exceptions import InvalidToken

MAX_SUBJECT_LEN = 128
#: RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (32 bytes).
MIN_SECRET_LEN = 32


class TokenVerifier:
    """Checks HS256 tokens signed with one shared secret."""

    def __init__(self, secret: str, *, leeway_s: float = 30.0) -> None:
        if len(secret) < MIN_SECRET_LEN:
            raise ValueError(f"the token secret must be at least {MIN_SECRET_LEN} characters long")
        self._secret = secret
        self._leeway_s = leeway_s

    def verify(self, token: str) -> str:
        """The token's subject (user id); raises :class:`InvalidToken` otherwise."""
        if not token or len(token) > 4096:
            raise InvalidToken("malformed", "token missing or too long")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                leeway=self._leeway_s,
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("expired", "token expired: get a new one") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("signature", "token signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken("claims", f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError:
            raise InvalidToken("malformed", "token is not a valid JWT") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUBJECT_LEN:
            raise InvalidToken("claims", "token subject must be a non-empty string")
        return sub

    def mint(self, subject: str, *, ttl_s: int = 86_400) -> str:
        """A token for ``subject`` valid for ``ttl_s`` seconds."""
        now = int(time.time())
        return jwt.encode(
            {"sub": subject, "iat": now, "exp": now + ttl_s}, self._secret, algorithm="HS256"
        )
