"""JWT validation against trusted issuers, with pinned algorithms and cached results.

Order of checks (each refusal names its reason in ``error_description``):
1. shape: three base64url parts and a JSON header;
2. the header may not bring its own key (``jku``, ``x5u``, ``jwk``, ``x5c``), and
   ``alg: none`` is never accepted;
3. the (still unverified) ``iss`` must be a trusted issuer, and ``alg`` one of the
   algorithms pinned for it;
4. the key is found by ``kid`` in that issuer's keys, and must be of the family the
   algorithm needs (no HMAC with a public key, no RSA key for ES256);
5. pyjwt verifies the signature, ``aud`` and ``iss``;
6. ``exp``, ``nbf`` and ``iat`` are checked against the injected clock with the
   issuer's leeway (pyjwt would read the system clock).
A verified token is cached until it expires, so a client that reuses its token pays
for one signature check, not one per request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt

from ...config.model import IssuerSpec
from ...context import Clock, Consumer
from .api_keys import InvalidCredential
from .keys import VerificationKey

KeyLookup = Callable[[str | None], Awaitable[VerificationKey | None]]

_SELF_KEYED_HEADERS = ("jku", "x5u", "jwk", "x5c")
_CACHE_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class TrustedIssuer:
    name: str
    spec: IssuerSpec
    keys: KeyLookup


class JwtVerifier:
    def __init__(self, issuers: list[TrustedIssuer], clock: Clock) -> None:
        self._by_iss = {issuer.spec.issuer: issuer for issuer in issuers}
        self._clock = clock
        # token -> (consumer, issuer name, exp, leeway)
        self._verified: OrderedDict[str, tuple[Consumer, str, float, float]] = OrderedDict()

    async def verify(self, token: str, allowed: frozenset[str] | None) -> Consumer:
        cached = self._verified.get(token)
        if cached is not None:
            consumer, issuer_name, expires, leeway = cached
            if self._clock.wall() >= expires + leeway:
                del self._verified[token]
                raise InvalidCredential("the token has expired")
            if allowed is not None and issuer_name not in allowed:
                raise InvalidCredential("the token's issuer is not accepted here")
            return consumer
        return await self._verify_new(token, allowed)

    async def _verify_new(self, token: str, allowed: frozenset[str] | None) -> Consumer:
        if token.count(".") != 2:
            raise InvalidCredential("the token is malformed")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise InvalidCredential("the token is malformed") from None
        if any(name in header for name in _SELF_KEYED_HEADERS):
            raise InvalidCredential("the token may not name its own key")
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm.lower() == "none":
            raise InvalidCredential("unsigned tokens are not accepted")
        claimed_issuer = unverified.get("iss")
        issuer = self._by_iss.get(claimed_issuer) if isinstance(claimed_issuer, str) else None
        if issuer is None:
            raise InvalidCredential("the token's issuer is not trusted")
        if allowed is not None and issuer.name not in allowed:
            raise InvalidCredential("the token's issuer is not accepted here")
        spec = issuer.spec
        if algorithm not in spec.algorithms:
            # Never echo the header's own text: it could carry quotes or line breaks.
            raise InvalidCredential("the token's algorithm is not accepted for this issuer")
        kid = header.get("kid")
        key = await issuer.keys(kid if isinstance(kid, str) else None)
        if key is None:
            raise InvalidCredential("the token's signing key is unknown")
        if not key.allows(algorithm):
            raise InvalidCredential("the signing key does not fit the token's algorithm")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=list(spec.audience),
                issuer=spec.issuer,
                # Times are checked below against the injected clock.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["exp", "iss", "aud", spec.consumer_claim],
                },
            )
        except jwt.InvalidSignatureError:
            raise InvalidCredential("the token's signature is not valid") from None
        except jwt.InvalidAudienceError:
            raise InvalidCredential("the token is not meant for this audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidCredential("the token's issuer is not trusted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidCredential(f"the token has no {exc.claim!r} claim") from None
        except jwt.PyJWTError:
            raise InvalidCredential("the token is malformed") from None
        expires = self._check_times(claims, spec.leeway)
        consumer = _consumer(claims, spec)
        self._verified[token] = (consumer, issuer.name, expires, spec.leeway)
        if len(self._verified) > _CACHE_LIMIT:
            self._verified.popitem(last=False)
        return consumer

    def _check_times(self, claims: dict[str, Any], leeway: float) -> float:
        now = self._clock.wall()
        expires = claims["exp"]
        if not isinstance(expires, int | float) or isinstance(expires, bool):
            raise InvalidCredential("the token's 'exp' is not a number")
        if now >= expires + leeway:
            raise InvalidCredential("the token has expired")
        not_before = claims.get("nbf")
        if not_before is not None:
            if not isinstance(not_before, int | float) or isinstance(not_before, bool):
                raise InvalidCredential("the token's 'nbf' is not a number")
            if now + leeway < not_before:
                raise InvalidCredential("the token is not valid yet")
        issued = claims.get("iat")
        if issued is not None:
            if not isinstance(issued, int | float) or isinstance(issued, bool):
                raise InvalidCredential("the token's 'iat' is not a number")
            if issued > now + leeway:
                raise InvalidCredential("the token was issued in the future")
        return float(expires)


def _consumer(claims: dict[str, Any], spec: IssuerSpec) -> Consumer:
    subject = claims.get(spec.consumer_claim)
    if (
        not isinstance(subject, str)
        or not subject
        or len(subject) > 256
        or not subject.isprintable()
    ):
        # It becomes a header value and a rate-limit key: plain, printable text only.
        raise InvalidCredential(f"the token's {spec.consumer_claim!r} claim is not a usable id")
    plan = claims.get(spec.plan_claim)
    if not isinstance(plan, str) or not plan.isprintable():
        plan = None
    raw_scopes = claims.get(spec.scope_claim, "")
    if isinstance(raw_scopes, str):
        scopes = frozenset(raw_scopes.split())
    elif isinstance(raw_scopes, list) and all(isinstance(s, str) for s in raw_scopes):
        scopes = frozenset(raw_scopes)
    else:
        raise InvalidCredential(f"the token's {spec.scope_claim!r} claim is not a scope list")
    return Consumer(
        id=subject,
        plan=plan if isinstance(plan, str) and plan else spec.default_plan,
        scopes=scopes,
        credential="jwt",
        credential_id=f"{_client_of(claims, subject)}@{spec.issuer}",
        claims=claims,
    )


#: Where a token names the client it was issued to: RFC 9068's ``client_id`` (the
#: gateway's own tokens carry it), then OpenID Connect's ``azp``.
_CLIENT_CLAIMS = ("client_id", "azp")


def _client_of(claims: dict[str, Any], subject: str) -> str:
    """The client a token was issued to, else its subject (the ``consumer_claim``). With
    the issuer, the credential a token stands for, which ``rate_limit: {by: api_key}``
    counts: two issuers' clients of one name are two credentials.

    Not the token's ``jti``: a client may fetch a new token whenever it likes, and
    each would start a fresh budget; a token without one would share a budget with
    every other such token.
    """
    for name in _CLIENT_CLAIMS:
        value = claims.get(name)
        if isinstance(value, str) and value and len(value) <= 256 and value.isprintable():
            return value
    return subject
