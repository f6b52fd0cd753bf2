"""Public keys for verifying JWTs, bound to the algorithms their type allows.

Binding a key to its family is what stops algorithm confusion: an RSA or EC public key
is never handed to an HMAC check (``HS256`` signed with the public key as the secret),
and an EC key never verifies an RSA signature, whatever a token's header claims.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

#: Algorithms each key type may verify. No HMAC: a shared secret is not a public key.
FAMILIES: dict[str, frozenset[str]] = {
    "EC": frozenset({"ES256", "ES384", "ES512"}),
    "RSA": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    "OKP": frozenset({"EdDSA"}),
}
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str | None
    family: str
    key: Any  # a cryptography public key object

    def allows(self, algorithm: str) -> bool:
        if algorithm not in FAMILIES[self.family]:
            return False
        curve = _EC_CURVES.get(algorithm)
        return curve is None or self.key.curve.name == curve


def family_of(key: Any) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC"
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "OKP"
    raise ValueError(f"unsupported key type {type(key).__name__}")


def from_pem(pem: str | bytes, kid: str | None) -> VerificationKey:
    data = pem.encode() if isinstance(pem, str) else pem
    key = serialization.load_pem_public_key(data)
    return VerificationKey(kid, family_of(key), key)


def from_jwk(document: dict[str, Any]) -> VerificationKey:
    """A public JWK; private members or an ``oct`` (shared secret) key are refused."""
    kty = document.get("kty")
    if kty not in FAMILIES:
        raise ValueError(f"unsupported JWK key type {kty!r}")
    if "d" in document:
        raise ValueError("a private JWK was given where a public one belongs")
    key = jwt.PyJWK.from_dict(document).key
    public = key.public_key() if hasattr(key, "public_key") and not _is_public(key) else key
    return VerificationKey(document.get("kid"), family_of(public), public)


def _is_public(key: Any) -> bool:
    return isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey)
