"""The gateway's own signing keys: generated on first run, rotated, published as JWKS.

Rules:
- The newest key that is not retired signs. Rotation adds a new key and retires the
  previous one with ``publish_until`` = now + token lifetime + refresh interval + a
  margin, so every token the old key signed (including those signed by a gateway that
  had not yet seen the rotation) stays verifiable until it expires; after that the key
  is deleted.
- A running gateway re-reads the keys every ``oauth.key_refresh``, so a rotation made
  by the CLI reaches it without a restart.
- ``kid`` is the key's RFC 7638 thumbprint.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ...config.model import OAuthSpec
from ...context import Clock
from ...stores.base import CredentialStore, SigningKeyRecord
from .keys import VerificationKey, family_of

log = logging.getLogger("gateway.signing")

_MARGIN = 60.0
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}


def generate_key(algorithm: str, clock: Clock) -> SigningKeyRecord:
    private: Any
    if algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"cannot generate keys for {algorithm}")
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    jwk = public_jwk(private.public_key())
    return SigningKeyRecord(
        kid=thumbprint(jwk), algorithm=algorithm, private_pem=pem, created_at=clock.wall()
    )


def public_jwk(public_key: Any) -> dict[str, Any]:
    family = family_of(public_key)
    algorithm: Any = {
        "EC": jwt.algorithms.ECAlgorithm,
        "RSA": jwt.algorithms.RSAAlgorithm,
        "OKP": jwt.algorithms.OKPAlgorithm,
    }[family]
    document: dict[str, Any] = algorithm.to_jwk(public_key, as_dict=True)
    return document


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: SHA-256 over the required members, sorted, without white space."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(orjson.dumps(members, option=orjson.OPT_SORT_KEYS)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def rotate_signing_key(
    store: CredentialStore, spec: OAuthSpec, clock: Clock
) -> SigningKeyRecord:
    """Add a new signing key and retire the active ones (their public keys stay)."""
    new = generate_key(spec.algorithm, clock)
    await store.add_signing_key(new)
    now = clock.wall()
    publish_until = now + spec.token_ttl + spec.key_refresh + _MARGIN
    for record in await store.list_signing_keys():
        if record.kid != new.kid and record.retired_at is None:
            await store.retire_signing_key(record.kid, now, publish_until)
    return new


class SigningKeys:
    """What a running gateway signs with and publishes."""

    def __init__(self, store: CredentialStore, spec: OAuthSpec, clock: Clock) -> None:
        self._store = store
        self._spec = spec
        self._clock = clock
        self._active: tuple[str, str, Any] | None = None  # kid, algorithm, private key
        self._published: dict[str, VerificationKey] = {}
        self._jwks = b'{"keys":[]}'
        self._refresher: asyncio.Task[None] | None = None

    async def load(self) -> None:
        """Read the keys; create the first one on first run; drop expired ones."""
        records = await self._store.list_signing_keys()
        now = self._clock.wall()
        for record in records:
            if record.publish_until is not None and record.publish_until <= now:
                await self._store.delete_signing_key(record.kid)
        records = [r for r in records if r.publish_until is None or r.publish_until > now]
        if not any(r.retired_at is None for r in records):
            first = generate_key(self._spec.algorithm, self._clock)
            await self._store.add_signing_key(first)
            records.append(first)
            log.info("generated signing key %s (%s)", first.kid, first.algorithm)
        published: dict[str, VerificationKey] = {}
        documents = []
        active: tuple[str, str, Any] | None = None
        for record in records:
            private = serialization.load_pem_private_key(record.private_pem, password=None)
            public = private.public_key()
            published[record.kid] = VerificationKey(record.kid, family_of(public), public)
            documents.append(
                {**public_jwk(public), "kid": record.kid, "alg": record.algorithm, "use": "sig"}
            )
            if record.retired_at is None:
                active = (record.kid, record.algorithm, private)  # newest wins: oldest first
        self._active = active
        self._published = published
        self._jwks = orjson.dumps({"keys": documents})

    def start(self) -> None:
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._spec.key_refresh)
            try:
                await self.load()
            except Exception:  # a failed refresh keeps the keys already loaded
                log.exception("could not refresh the signing keys")

    def sign(self, claims: dict[str, Any]) -> str:
        assert self._active is not None, "load() first"
        kid, algorithm, private = self._active
        return jwt.encode(claims, private, algorithm=algorithm, headers={"kid": kid, "typ": "JWT"})

    def key(self, kid: str | None) -> VerificationKey | None:
        return self._published.get(kid) if kid is not None else None

    @property
    def jwks_document(self) -> bytes:
        return self._jwks
