"""Verification and minting of visitor tokens (JWT: HS256, RS256/RS384, ES256/ES384).

Guarantees: :meth:`TokenVerifier.verify_claims` returns claims only for a token

- whose header ``alg`` is one of the configured algorithms (never ``none``), verified with the key
  of that algorithm's family: HS256 with the shared secret, RS*/ES* with the public key. The key is
  chosen from the header but only among keys of the right type, so a public key can never be used
  as an HMAC secret (algorithm confusion);
- carrying a non-empty string ``sub`` and an ``exp`` that has not passed (with ``leeway_s`` of
  clock skew, :data:`LEEWAY_S` by default); ``exp``, ``iat`` and ``nbf`` must be JSON numbers
  (RFC 7519 NumericDate, fractions allowed; a string, bool, null or anything else is refused
  with ``claims``), and ``nbf``/``iat`` may not be later than now plus the leeway;
- that is *anonymous* only if signed by this server (HS256 with the secret) with ``anon: true`` and
  a ``sub`` starting with ``anon:``. Anonymous tokens verify even when HS256 is not among the
  configured algorithms (the server issues them itself). The ``anon:`` namespace is reserved: any
  other token whose ``sub`` starts with it, or an HS256 token whose ``anon`` claim disagrees with
  its ``sub``, is refused (``claims``).

Error messages never repeat the token; :attr:`InvalidToken.reason` is one of ``malformed``,
``expired``, ``signature``, ``claims``, ``algorithm``.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jwt

from sessions.exceptions import InvalidToken

MAX_SUBJECT_LEN = 128
MAX_TOKEN_LEN = 4096
#: RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (32 bytes).
MIN_SECRET_LEN = 32
#: Subjects starting with this are anonymous visitor ids issued by this server.
ANON_PREFIX = "anon:"
#: Default lifetime of an anonymous token (30 days).
ANON_TTL_S = 30 * 86_400
#: Default clock skew allowed on ``exp``/``nbf``/``iat`` (s): enough for clocks kept by NTP, short
#: enough that an expired token stops working within seconds.
LEEWAY_S = 5.0
#: The registered time claims (RFC 7519 §4.1.4-6), checked here rather than by PyJWT, which
#: accepts a string of digits.
_TIME_CLAIMS = ("exp", "nbf", "iat")

HMAC_ALGORITHMS = frozenset({"HS256"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384"})
EC_ALGORITHMS = frozenset({"ES256", "ES384"})
#: Algorithms verified with the public key.
PUBLIC_KEY_ALGORITHMS = RSA_ALGORITHMS | EC_ALGORITHMS
#: Every algorithm a verifier may be configured with.
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS
#: The curve each ECDSA algorithm requires (RFC 7518 §3.4).
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1"}


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says: its subject (user id), expiry (epoch s) and kind."""

    sub: str
    exp: int
    #: Issued by this server to a visitor without an account (``sub`` starts with ``anon:``).
    anonymous: bool


class AnonymousToken(NamedTuple):
    """A freshly minted anonymous token: ``(user_id, token, expires_at)``."""

    user_id: str
    token: str
    expires_at: int


def load_public_key(pem: str, algorithms: Iterable[str]) -> Any:
    """The public key in ``pem``, checked to suit every RS*/ES* algorithm in ``algorithms``.

    Raises :class:`ValueError` with a message fit for an operator (the key is not repeated).
    """
    try:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
    except ImportError:  # pragma: no cover - cryptography is a dependency (pyjwt[crypto])
        raise ValueError(
            "RS256/ES256 tokens need the cryptography package (pip install 'pyjwt[crypto]')"
        ) from None
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise ValueError(
            "the token public key is not a PEM public key "
            "(expected '-----BEGIN PUBLIC KEY-----'; give the public half, not the private key)"
        ) from None
    for alg in algorithms:
        if alg in RSA_ALGORITHMS and not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"{alg} needs an RSA public key; the token public key is not one")
        if alg in EC_ALGORITHMS:
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise ValueError(f"{alg} needs an EC public key; the token public key is not one")
            if key.curve.name != _EC_CURVES[alg]:
                raise ValueError(
                    f"{alg} needs a key on curve {_EC_CURVES[alg]}, "
                    f"the token public key is on {key.curve.name}"
                )
    return key


class TokenVerifier:
    """Checks visitor tokens: HS256 with a shared secret, RS*/ES* with a public key.

    ``algorithms`` lists the accepted algorithms (of :data:`SUPPORTED_ALGORITHMS`);
    ``public_key`` (PEM) is required when an RS*/ES* algorithm is listed. Raises
    :class:`ValueError` for a configuration that cannot work.
    """

    def __init__(
        self,
        secret: str,
        *,
        leeway_s: float = LEEWAY_S,
        algorithms: Iterable[str] = ("HS256",),
        public_key: str | None = None,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(secret) < MIN_SECRET_LEN:
            raise ValueError(f"the token secret must be at least {MIN_SECRET_LEN} characters long")
        algs = frozenset(algorithms)
        if not algs:
            raise ValueError("at least one token algorithm must be accepted")
        unknown = algs - SUPPORTED_ALGORITHMS
        if unknown:
            raise ValueError(
                f"unsupported token algorithm(s) {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(sorted(SUPPORTED_ALGORITHMS))}"
            )
        asymmetric = algs & PUBLIC_KEY_ALGORITHMS
        if asymmetric and public_key is None:
            raise ValueError(f"{', '.join(sorted(asymmetric))} tokens need a public key (PEM)")
        if public_key is not None and not asymmetric:
            raise ValueError("a token public key was given but no RS*/ES* algorithm is accepted")
        self._secret = secret
        self._leeway_s = leeway_s
        self._algorithms = algs
        self._public_key: Any = (
            None if public_key is None else load_public_key(public_key, asymmetric)
        )
        # Tokens verified before, by their exact text: a visitor's token is presented on every
        # REST read and reconnect, and the signature check was a quarter of a feed read's CPU
        # (docs/benchmarks.md, REST feed reads). Only the identical string hits, so a changed
        # signature or payload is verified afresh; expiry is checked again on every hit.
        self._verified: dict[str, Claims] = {}
        self._cache_size = cache_size
        self._clock = clock

    @property
    def algorithms(self) -> frozenset[str]:
        """The configured algorithms (anonymous HS256 tokens are accepted in any case)."""
        return self._algorithms

    def verify(self, token: str) -> str:
        """The token's subject (user id); raises :class:`InvalidToken` otherwise."""
        return self.verify_claims(token).sub

    def verify_claims(self, token: str) -> Claims:
        """The token's :class:`Claims`; raises :class:`InvalidToken` otherwise.

        A token verified before is answered from a bounded cache, its expiry checked again.
        """
        known = self._verified.get(token)
        if known is not None:
            if self._clock() > known.exp + self._leeway_s:
                del self._verified[token]
                raise InvalidToken("expired", "token expired: get a new one")
            return known
        claims = self._verify(token)
        if len(self._verified) >= self._cache_size:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> Claims:
        if not token or len(token) > MAX_TOKEN_LEN:
            raise InvalidToken("malformed", "token missing or too long")
        if not token.isascii():  # a JWT is base64url and dots; PyJWT would raise on surrogates
            raise InvalidToken("malformed", "token is not a valid JWT")
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            raise InvalidToken("malformed", "token is not a valid JWT") from None
        if not isinstance(alg, str):
            raise InvalidToken("malformed", "token header lacks an algorithm")
        key: Any
        if alg in HMAC_ALGORITHMS:
            # Always the secret: even when HS256 is not listed, anonymous tokens are ours.
            key = self._secret
        elif alg in PUBLIC_KEY_ALGORITHMS and alg in self._algorithms:
            key = self._public_key
        else:
            # `none`, other HMAC sizes, unlisted RS*/ES*, anything unknown. `alg` is not echoed
            # past a short, printable prefix.
            shown = alg[:16] if alg.isprintable() else "?"
            raise InvalidToken("algorithm", f"token algorithm {shown!r} is not accepted")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                # The time claims are checked below: their types first (PyJWT takes "123").
                options={
                    "require": ["sub", "exp"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise InvalidToken("signature", "token signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken("claims", f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("claims", "token audience is not accepted") from None
        except jwt.InvalidAlgorithmError:
            raise InvalidToken("algorithm", "token algorithm is not accepted") from None
        except jwt.PyJWTError:
            raise InvalidToken("malformed", "token is not a valid JWT") from None
        exp = self._check_times(claims)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUBJECT_LEN:
            raise InvalidToken("claims", "token subject must be a non-empty string")
        anon_sub = sub.startswith(ANON_PREFIX)
        if alg in HMAC_ALGORITHMS:
            anon_claim = claims.get("anon") is True
            if anon_sub != anon_claim:
                raise InvalidToken(
                    "claims",
                    f"only anonymous tokens (anon: true) may name an {ANON_PREFIX} subject",
                )
            if not anon_claim and alg not in self._algorithms:
                raise InvalidToken(
                    "algorithm", f"{alg} is accepted only for anonymous tokens issued by the server"
                )
            anonymous = anon_claim
        else:
            if anon_sub:
                raise InvalidToken(
                    "claims", f"subjects starting with {ANON_PREFIX!r} are reserved for the server"
                )
            anonymous = False
        return Claims(sub=sub, exp=exp, anonymous=anonymous)

    def _check_times(self, claims: dict[str, Any]) -> int:
        """``exp`` (whole seconds, rounded down) once every time claim is a finite JSON number,
        ``exp`` has not passed and ``nbf``/``iat`` are not in the future (each with the leeway);
        raises :class:`InvalidToken` otherwise."""
        for name in _TIME_CLAIMS:
            if name not in claims:
                continue
            value = claims[name]
            # bool is an int in Python, not a number in JSON.
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidToken("claims", f"token claim {name!r} must be a number (NumericDate)")
            if not math.isfinite(value):
                raise InvalidToken("claims", f"token claim {name!r} must be a finite number")
        now = self._clock()
        exp: float = claims["exp"]  # a number, checked above
        if exp <= now - self._leeway_s:
            raise InvalidToken("expired", "token expired: get a new one")
        for name in ("nbf", "iat"):
            if name in claims and claims[name] > now + self._leeway_s:
                raise InvalidToken("claims", f"token is not valid yet ({name} in the future)")
        return math.floor(exp)

    def mint(self, subject: str, *, ttl_s: int = 86_400) -> str:
        """An HS256 token for ``subject`` valid for ``ttl_s`` seconds.

        ``subject`` may not start with ``anon:`` (see :meth:`mint_anonymous`).
        """
        if subject.startswith(ANON_PREFIX):
            raise ValueError(f"subjects starting with {ANON_PREFIX!r} are minted by mint_anonymous")
        now = int(time.time())
        return jwt.encode(
            {"sub": subject, "iat": now, "exp": now + ttl_s}, self._secret, algorithm="HS256"
        )

    def mint_anonymous(self, ttl_s: int = ANON_TTL_S) -> AnonymousToken:
        """A new anonymous visitor id (``anon:`` + 22 random characters) and its token."""
        return self._mint_anonymous(ANON_PREFIX + secrets.token_urlsafe(16), ttl_s)

    def refresh_anonymous(self, token: str, ttl_s: int = ANON_TTL_S) -> AnonymousToken:
        """A fresh token for the same anonymous id as ``token``.

        Raises :class:`InvalidToken` when ``token`` does not verify (e.g. ``expired``) or is not
        anonymous (``claims``).
        """
        claims = self.verify_claims(token)
        if not claims.anonymous:
            raise InvalidToken("claims", "only anonymous tokens can be refreshed here")
        return self._mint_anonymous(claims.sub, ttl_s)

    def _mint_anonymous(self, user_id: str, ttl_s: int) -> AnonymousToken:
        now = int(time.time())
        expires_at = now + ttl_s
        token = jwt.encode(
            {"sub": user_id, "anon": True, "iat": now, "exp": expires_at},
            self._secret,
            algorithm="HS256",
        )
        return AnonymousToken(user_id, token, expires_at)
