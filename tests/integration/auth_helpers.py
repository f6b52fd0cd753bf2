"""Shared helpers for the JWT and OAuth integration tests.

A gateway with a top-level ``auth:`` section (the conftest helper only writes
``server:``), an upstream that echoes the headers it received, test key pairs, and
hand-made tokens for the shapes pyjwt refuses to produce.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from multidict import CIMultiDict

from gateway.config import load_config
from gateway.context import Clock, ManualClock
from gateway.server import Gateway

#: The wall time every ManualClock in these tests starts at.
T0 = 1_700_000_000.0


# -- keys ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    """A private key with its public forms; ``algorithm`` is what it signs with."""

    private: Any
    kid: str
    algorithm: str

    @property
    def public_pem(self) -> str:
        data: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return data.decode()

    def public_jwk(self, **extra: Any) -> dict[str, Any]:
        algorithm: Any = (
            jwt.algorithms.RSAAlgorithm
            if isinstance(self.private, rsa.RSAPrivateKey)
            else jwt.algorithms.ECAlgorithm
        )
        document: dict[str, Any] = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**document, "kid": self.kid, **extra}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        headers = {"kid": self.kid, **header}
        if headers["kid"] is None:
            del headers["kid"]
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers=headers)

    def sign_payload(self, claims: dict[str, Any]) -> str:
        """Sign the claims as they are, without pyjwt's checks on their types."""
        payload = json.dumps(claims, separators=(",", ":")).encode()
        return jwt.PyJWS().encode(
            payload, self.private, algorithm=self.algorithm, headers={"kid": self.kid}
        )


def rsa_key(kid: str) -> KeyPair:
    return KeyPair(rsa.generate_private_key(public_exponent=65537, key_size=2048), kid, "RS256")


def ec_key(kid: str) -> KeyPair:
    return KeyPair(ec.generate_private_key(ec.SECP256R1()), kid, "ES256")


# -- hand-made tokens ------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(document: dict[str, Any]) -> str:
    return b64url(json.dumps(document, separators=(",", ":")).encode())


def unsigned_token(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """``header.payload.`` with an empty signature (``alg: none``)."""
    return f"{segment(header)}.{segment(claims)}."


def hmac_token(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """HS256 over header and payload with any bytes as the secret (pyjwt refuses a PEM)."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def ec_token_with_hash(
    key: KeyPair, header: dict[str, Any], claims: dict[str, Any], digest: hashes.HashAlgorithm
) -> str:
    """A genuine ECDSA signature on ``key``'s curve with any hash (ES384 on P-256, say)."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    der = key.private.sign(signing_input.encode(), ec.ECDSA(digest))
    r, s = decode_dss_signature(der)
    size = (key.private.curve.key_size + 7) // 8
    return f"{signing_input}.{b64url(r.to_bytes(size, 'big') + s.to_bytes(size, 'big'))}"


def flip_signature_byte(token: str) -> str:
    """The same token with one byte of its signature changed."""
    head, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{payload}.{b64url(bytes(raw))}"


# -- upstream --------------------------------------------------------------------------


def echo_app(hits: list[str] | None = None) -> web.Application:
    """An upstream that answers with the headers it received (every value, in order);
    every request's path is appended to ``hits``."""

    async def echo(request: web.Request) -> web.Response:
        if hits is not None:
            hits.append(request.raw_path)
        return web.json_response(
            {"path": request.raw_path, "headers": [[k, v] for k, v in request.headers.items()]}
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def header_values(payload: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in payload["headers"] if k.lower() == name.lower()]


# -- gateway ---------------------------------------------------------------------------


@dataclass
class RunningGateway:
    gateway: Gateway
    url: str
    clock: ManualClock
    folder: Path

    @property
    def gw(self) -> Gateway:
        return self.gateway


class GatewayStarter:
    """Writes a complete ``gateway.yaml`` (JSON is YAML) and runs it on port 0."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        self._running: list[Gateway] = []

    async def start(
        self,
        *,
        auth: dict[str, Any],
        routes: list[dict[str, Any]],
        clock: ManualClock | None = None,
    ) -> RunningGateway:
        folder = self._tmp_path / f"gw{len(self._running)}"
        folder.mkdir()
        auth = {
            "sqlite_path": str(folder / "credentials.db"),
            "pepper_file": str(folder / "pepper.json"),
            **auth,
        }
        config = {
            "server": {
                "listen": {"host": "127.0.0.1", "port": 0},
                "access_log": "off",
                "shutdown_timeout": "2s",
                "watch": False,
            },
            "admin": {"enabled": False},
            "auth": auth,
            "routes": routes,
        }
        path = folder / "gateway.yaml"
        path.write_text(json.dumps(config, indent=2))
        clock = clock or ManualClock(wall=T0)
        gateway = Gateway(load_config(path), clock=clock)
        await gateway.start()
        self._running.append(gateway)
        return RunningGateway(gateway, f"http://127.0.0.1:{gateway.port}", clock, folder)

    async def close(self) -> None:
        for gateway in self._running:
            await gateway.stop()


def proxy_route(path: str, upstream_url: str, **extra: Any) -> dict[str, Any]:
    return {"path": path, "methods": ["GET"], "proxy": {"url": upstream_url}, **extra}


# -- responses -------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def get(
    http: aiohttp.ClientSession, url: str, token: str | None = None, **headers: str
) -> Answer:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with http.get(url, headers=headers) as response:
        return Answer(response.status, CIMultiDict(response.headers), await response.read())


def now_claims(clock: Clock, **claims: Any) -> dict[str, Any]:
    """iat/exp around the clock's wall time; ``None`` values remove a claim."""
    now = int(clock.wall())
    document: dict[str, Any] = {"iat": now, "exp": now + 600, **claims}
    return {name: value for name, value in document.items() if value is not None}
