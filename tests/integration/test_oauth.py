"""The OAuth2 token endpoint (client credentials) and the JWKS, over real HTTP:
issuing, RFC 6749 section 5.2 errors, and signing-key rotation on an injected clock."""

from __future__ import annotations

import asyncio
import base64
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from multidict import CIMultiDict

from gateway.policies.auth.manage import create_client
from gateway.policies.auth.signing import rotate_signing_key
from gateway.stores.base import ClientRecord
from tests.conftest import raw_request
from tests.integration.auth_helpers import (
    T0,
    Answer,
    GatewayStarter,
    RunningGateway,
    echo_app,
    get,
    header_values,
    proxy_route,
)

pytestmark = pytest.mark.timeout(30)

ISSUER = "https://gateway.test"
AUDIENCE = "gateway-api"
TTL = 300
LEEWAY = 30  # the default leeway of the gateway's own issuer
KEY_REFRESH = 10
FORM = "application/x-www-form-urlencoded"
SCOPES = ("orders:read", "orders:write")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Client:
    client_id: str
    secret: str

    def basic(self, secret: str | None = None) -> str:
        pair = f"{quote(self.client_id, safe='')}:{quote(secret or self.secret, safe='')}"
        return "Basic " + base64.b64encode(pair.encode()).decode()


@dataclass
class OAuthEnv:
    running: RunningGateway
    hits: list[str]
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def auth(self) -> Any:
        assert self.running.gateway.auth is not None
        return self.running.gateway.auth

    async def client(
        self, consumer: str = "acme", scopes: tuple[str, ...] = SCOPES, plan: str = "gold"
    ) -> Client:
        created = await create_client(
            self.auth.store,
            self.auth.peppers,
            self.running.clock,
            consumer_id=consumer,
            plan=plan,
            scopes=scopes,
        )
        return Client(created.record.client_id, created.secret)

    async def post(
        self,
        body: bytes | str | dict[str, str],
        *,
        authorization: str | None = None,
        content_type: str = FORM,
    ) -> Answer:
        data = urlencode(body) if isinstance(body, dict) else body
        headers = {"Content-Type": content_type}
        if authorization is not None:
            headers["Authorization"] = authorization
        async with self.http.post(
            self.url + "/oauth/token", data=data, headers=headers
        ) as response:
            return Answer(response.status, CIMultiDict(response.headers), await response.read())

    async def token(self, client: Client, **form: str) -> dict[str, Any]:
        answer = await self.post(
            {"grant_type": "client_credentials", **form}, authorization=client.basic()
        )
        assert answer.status == 200, answer.body
        document: dict[str, Any] = answer.json()
        return document

    async def jwks(self) -> dict[str, Any]:
        async with self.http.get(self.url + "/.well-known/jwks.json") as response:
            assert response.status == 200
            document: dict[str, Any] = orjson.loads(await response.read())
            return document

    async def kids(self) -> set[str]:
        return {key["kid"] for key in (await self.jwks())["keys"]}

    def advance(self, seconds: float) -> None:
        self.running.clock.advance(seconds)


@pytest.fixture
async def env(tmp_path, aiohttp_server, http) -> AsyncIterator[OAuthEnv]:
    hits: list[str] = []
    upstream = await aiohttp_server(echo_app(hits))
    origin = str(upstream.make_url("")).rstrip("/")
    starter = GatewayStarter(tmp_path)
    running = await starter.start(
        auth={
            "oauth": {
                "enabled": True,
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "token_ttl": f"{TTL}s",
                "key_refresh": f"{KEY_REFRESH}s",
            }
        },
        routes=[
            proxy_route("/api/orders", origin, auth=["jwt"]),
            proxy_route("/api/admin", origin, auth=["jwt"], scopes={"all_of": ["admin"]}),
        ],
    )
    try:
        yield OAuthEnv(running, hits, http)
    finally:
        await starter.close()


def assert_oauth_error(answer: Answer, status: int, error: str) -> dict[str, Any]:
    """RFC 6749 section 5.2: the status, a JSON body with error and error_description,
    and never cached."""
    assert answer.status == status, answer.body
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = answer.json()
    assert set(body) == {"error", "error_description"}, body
    assert body["error"] == error, body
    assert isinstance(body["error_description"], str)
    assert body["error_description"]
    return body


def verify_with_jwks(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    header = jwt.get_unverified_header(token)
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=[header["alg"]],
        audience=AUDIENCE,
        issuer=ISSUER,
        # The ManualClock's time is in the past of the real one; times are checked below.
        options={
            "verify_exp": False,
            "require": ["iss", "sub", "aud", "exp", "iat", "jti", "scope"],
        },
    )
    return claims


# -- issuing ---------------------------------------------------------------------------


async def test_token_with_basic_auth_verifies_with_the_published_jwks(env) -> None:
    client = await env.client()
    answer = await env.post({"grant_type": "client_credentials"}, authorization=client.basic())
    assert answer.status == 200, answer.body
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert "refresh_token" not in body
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == TTL
    assert body["scope"] == "orders:read orders:write"

    async with env.http.get(env.url + "/.well-known/jwks.json") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/jwk-set+json")
        assert "max-age=" in response.headers["Cache-Control"]
        jwks = orjson.loads(await response.read())
    for key in jwks["keys"]:
        assert "d" not in key  # public keys only
    header = jwt.get_unverified_header(body["access_token"])
    assert header["kid"] in {key["kid"] for key in jwks["keys"]}
    assert header["alg"] == "ES256"
    claims = verify_with_jwks(body["access_token"], jwks)
    assert claims["iss"] == ISSUER
    assert claims["sub"] == "acme"
    assert claims["aud"] == AUDIENCE
    assert claims["iat"] == int(T0)
    assert claims["exp"] == int(T0) + TTL
    assert isinstance(claims["jti"], str)
    assert len(claims["jti"]) >= 16
    assert claims["scope"] == "orders:read orders:write"
    # A tampered token does not verify with the same JWKS: the check above is real.
    head, payload, signature = body["access_token"].split(".")
    forged = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged["scope"] = "admin"
    forged_payload = base64.urlsafe_b64encode(orjson.dumps(forged)).rstrip(b"=").decode()
    with pytest.raises(jwt.InvalidSignatureError):
        verify_with_jwks(f"{head}.{forged_payload}.{signature}", jwks)


async def test_token_with_credentials_in_the_form_body(env) -> None:
    client = await env.client()
    answer = await env.post(
        {
            "grant_type": "client_credentials",
            "client_id": client.client_id,
            "client_secret": client.secret,
        }
    )
    assert answer.status == 200, answer.body
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert "refresh_token" not in body
    claims = verify_with_jwks(body["access_token"], await env.jwks())
    assert claims["sub"] == "acme"


async def test_every_token_has_its_own_jti(env) -> None:
    client = await env.client()
    first = await env.token(client)
    second = await env.token(client)
    jwks = await env.jwks()
    assert (
        verify_with_jwks(first["access_token"], jwks)["jti"]
        != verify_with_jwks(second["access_token"], jwks)["jti"]
    )


async def test_scope_omitted_grants_everything_allowed(env) -> None:
    client = await env.client(scopes=("b", "a", "c"))
    body = await env.token(client)
    assert body["scope"] == "a b c"
    assert verify_with_jwks(body["access_token"], await env.jwks())["scope"] == "a b c"


async def test_scope_subset_grants_exactly_that(env) -> None:
    client = await env.client(scopes=("a", "b", "c"))
    body = await env.token(client, scope="c a a")
    assert body["scope"] == "a c"
    assert verify_with_jwks(body["access_token"], await env.jwks())["scope"] == "a c"


async def test_scope_beyond_allowed_is_invalid_scope(env) -> None:
    client = await env.client(scopes=("a", "b"))
    answer = await env.post(
        {"grant_type": "client_credentials", "scope": "a admin"}, authorization=client.basic()
    )
    assert_oauth_error(answer, 400, "invalid_scope")


# -- errors (RFC 6749 section 5.2) ----------------------------------------------------


async def test_missing_grant_type_is_invalid_request(env) -> None:
    client = await env.client()
    answer = await env.post({"scope": "orders:read"}, authorization=client.basic())
    assert_oauth_error(answer, 400, "invalid_request")


async def test_wrong_grant_type_is_unsupported_grant_type(env) -> None:
    client = await env.client()
    for grant in ("password", "authorization_code", "refresh_token", "Client_Credentials"):
        answer = await env.post({"grant_type": grant}, authorization=client.basic())
        assert_oauth_error(answer, 400, "unsupported_grant_type")


async def test_empty_grant_type_is_treated_as_missing(env) -> None:
    # RFC 6749 section 3.2: "Parameters sent without a value MUST be treated as if they
    # were omitted from the request."
    client = await env.client()
    answer = await env.post("grant_type=", authorization=client.basic())
    assert_oauth_error(answer, 400, "invalid_request")


async def test_empty_scope_is_treated_as_omitted(env) -> None:
    # RFC 6749 section 3.2, as above: ``scope=`` is no scope parameter at all.
    client = await env.client(scopes=("a", "b"))
    answer = await env.post("grant_type=client_credentials&scope=", authorization=client.basic())
    assert answer.status == 200, answer.body
    assert answer.json()["scope"] == "a b"


async def test_basic_and_body_credentials_together_are_invalid_request(env) -> None:
    client = await env.client()
    answer = await env.post(
        {
            "grant_type": "client_credentials",
            "client_id": client.client_id,
            "client_secret": client.secret,
        },
        authorization=client.basic(),
    )
    assert_oauth_error(answer, 400, "invalid_request")


async def test_bad_secret_with_basic_is_401_with_a_basic_challenge(env) -> None:
    client = await env.client()
    answer = await env.post(
        {"grant_type": "client_credentials"}, authorization=client.basic("gwcs_wrong")
    )
    assert_oauth_error(answer, 401, "invalid_client")
    assert answer.headers["WWW-Authenticate"].startswith("Basic ")


async def test_bad_secret_in_the_body_is_401_invalid_client(env) -> None:
    client = await env.client()
    answer = await env.post(
        {
            "grant_type": "client_credentials",
            "client_id": client.client_id,
            "client_secret": client.secret + "x",
        }
    )
    assert_oauth_error(answer, 401, "invalid_client")


async def test_unknown_client_is_invalid_client(env) -> None:
    ghost = Client("gwc_nosuchclient", "gwcs_" + "a" * 43)
    answer = await env.post({"grant_type": "client_credentials"}, authorization=ghost.basic())
    assert_oauth_error(answer, 401, "invalid_client")
    assert answer.headers["WWW-Authenticate"].startswith("Basic ")
    answer = await env.post(
        {
            "grant_type": "client_credentials",
            "client_id": ghost.client_id,
            "client_secret": ghost.secret,
        }
    )
    assert_oauth_error(answer, 401, "invalid_client")


async def test_revoked_client_is_invalid_client(env) -> None:
    client = await env.client()
    await env.token(client)  # works before
    assert await env.auth.store.revoke_client(client.client_id, env.running.clock.wall())
    answer = await env.post({"grant_type": "client_credentials"}, authorization=client.basic())
    assert_oauth_error(answer, 401, "invalid_client")
    answer = await env.post(
        {
            "grant_type": "client_credentials",
            "client_id": client.client_id,
            "client_secret": client.secret,
        }
    )
    assert_oauth_error(answer, 401, "invalid_client")


async def test_client_whose_consumer_is_missing_is_unauthorized_client(env) -> None:
    secret = "gwcs_" + uuid.uuid4().hex
    secret_hash, version = env.auth.peppers.hash(secret)
    orphan = ClientRecord(
        client_id="gwc_orphanclient",
        consumer_id="nobody",
        secret_hash=secret_hash,
        pepper_version=version,
        scopes=("orders:read",),
        created_at=env.running.clock.wall(),
    )
    await env.auth.store.add_client(orphan)
    answer = await env.post(
        {"grant_type": "client_credentials"},
        authorization=Client(orphan.client_id, secret).basic(),
    )
    assert_oauth_error(answer, 400, "unauthorized_client")
    # Only for the real secret: a wrong one still says invalid_client.
    answer = await env.post(
        {"grant_type": "client_credentials"},
        authorization=Client(orphan.client_id, secret + "x").basic(),
    )
    assert_oauth_error(answer, 401, "invalid_client")


@pytest.mark.parametrize(
    "body",
    [
        "grant_type=client_credentials&grant_type=client_credentials",
        "grant_type=client_credentials&scope=orders:read&scope=orders:write",
    ],
    ids=["grant_type", "scope"],
)
async def test_repeated_parameter_is_invalid_request(env, body) -> None:
    client = await env.client()
    answer = await env.post(body, authorization=client.basic())
    assert_oauth_error(answer, 400, "invalid_request")


async def test_repeated_client_id_in_the_body_is_invalid_request(env) -> None:
    client = await env.client()
    body = urlencode(
        [
            ("grant_type", "client_credentials"),
            ("client_id", client.client_id),
            ("client_id", client.client_id),
            ("client_secret", client.secret),
        ]
    )
    assert_oauth_error(await env.post(body), 400, "invalid_request")


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", '{"grant_type": "client_credentials"}'),
        ("text/plain", "grant_type=client_credentials"),
        ("multipart/form-data; boundary=x", "grant_type=client_credentials"),
    ],
    ids=["json", "text", "multipart"],
)
async def test_wrong_content_type_is_invalid_request(env, content_type, body) -> None:
    client = await env.client()
    answer = await env.post(body, authorization=client.basic(), content_type=content_type)
    assert_oauth_error(answer, 400, "invalid_request")


async def test_form_content_type_with_charset_is_accepted(env) -> None:
    client = await env.client()
    answer = await env.post(
        "grant_type=client_credentials",
        authorization=client.basic(),
        content_type=FORM + "; charset=UTF-8",
    )
    assert answer.status == 200, answer.body


async def test_no_client_authentication_is_invalid_client(env) -> None:
    answer = await env.post({"grant_type": "client_credentials"})
    assert_oauth_error(answer, 401, "invalid_client")


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer something",
        "Basic %%%not-base64%%%",
        "Basic " + base64.b64encode(b"nocolon").decode(),
    ],
    ids=["bearer", "bad-base64", "no-colon"],
)
async def test_unusable_authorization_header_is_invalid_client(env, authorization) -> None:
    answer = await env.post({"grant_type": "client_credentials"}, authorization=authorization)
    assert_oauth_error(answer, 401, "invalid_client")
    assert answer.headers["WWW-Authenticate"].startswith("Basic ")


async def test_form_body_arriving_in_several_packets_is_read_whole(env) -> None:
    client = await env.client()
    body = urlencode(
        {
            "grant_type": "client_credentials",
            "client_id": client.client_id,
            "client_secret": client.secret,
        }
    ).encode()
    head = (
        f"POST /oauth/token HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n"
        f"Content-Type: {FORM}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", env.running.gateway.port)
    try:
        writer.write(head + body[:20])
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(body[20:])
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line.split(b" ")[1] == b"200", raw
    assert b'"access_token"' in rest


async def test_token_endpoint_answers_post_only(env) -> None:
    response = await raw_request(
        env.running.gateway.port,
        b"GET /oauth/token HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n",
    )
    assert response.status == 405


# -- using the tokens ------------------------------------------------------------------


async def test_issued_token_calls_a_jwt_route_with_its_identity(env) -> None:
    client = await env.client(consumer="acme", plan="gold")
    token = (await env.token(client, scope="orders:read"))["access_token"]
    answer = await get(env.http, env.url + "/api/orders", token, **{"X-Consumer-Id": "forged"})
    assert answer.status == 200, answer.body
    seen = answer.json()
    assert header_values(seen, "X-Consumer-Id") == ["acme"]
    assert header_values(seen, "X-Consumer-Plan") == ["gold"]
    assert header_values(seen, "X-Consumer-Scopes") == ["orders:read"]
    assert header_values(seen, "X-Credential-Kind") == ["jwt"]
    # ...and is limited to its scope.
    answer = await get(env.http, env.url + "/api/admin", token)
    assert answer.status == 403
    assert 'error="insufficient_scope"' in answer.headers["WWW-Authenticate"]
    assert env.hits == ["/api/orders"]


async def test_own_issuer_checks_audience_and_issuer(env) -> None:
    # Signed with the gateway's own active key, but not what the token endpoint issues.
    [record] = await env.auth.store.list_signing_keys()
    private = serialization.load_pem_private_key(record.private_pem, password=None)
    now = int(env.running.clock.wall())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "acme", "iat": now, "exp": now + 60}
    headers = {"kid": record.kid}
    good = jwt.encode(base, private, algorithm="ES256", headers=headers)  # type: ignore[arg-type]
    assert (await get(env.http, env.url + "/api/orders", good)).status == 200
    for change, reason in (
        ({"aud": "another-service"}, "audience"),
        ({"iss": "https://another.issuer"}, "not trusted"),
    ):
        token = jwt.encode(
            {**base, **change},
            private,  # type: ignore[arg-type]
            algorithm="ES256",
            headers=headers,
        )
        answer = await get(env.http, env.url + "/api/orders", token)
        assert answer.status == 401
        assert reason in answer.headers["WWW-Authenticate"]
    assert env.hits == ["/api/orders"]


async def test_full_flow_with_signing_key_rotation(env) -> None:
    clock = env.running.clock
    spec = env.running.gateway.runtime.config.auth.oauth
    client = await env.client()

    # t0: two tokens with the first key; one is used now, one only after the rotation.
    old = (await env.token(client))["access_token"]
    unused_old = (await env.token(client))["access_token"]
    old_kid = jwt.get_unverified_header(old)["kid"]
    assert await env.kids() == {old_kid}
    answer = await get(env.http, env.url + "/api/orders", old)
    assert answer.status == 200
    assert header_values(answer.json(), "X-Consumer-Id") == ["acme"]

    # t0+100: rotate, as the CLI would, and let the periodic refresh run.
    env.advance(100)
    new_record = await rotate_signing_key(env.auth.store, spec, clock)
    await env.auth.signing.load()
    new = (await env.token(client))["access_token"]
    new_kid = jwt.get_unverified_header(new)["kid"]
    assert new_kid == new_record.kid
    assert new_kid != old_kid
    assert await env.kids() == {old_kid, new_kid}
    jwks = await env.jwks()
    assert verify_with_jwks(old, jwks)["sub"] == "acme"
    assert verify_with_jwks(new, jwks)["sub"] == "acme"
    for token in (new, old, unused_old):  # unused_old is verified with the old key now
        assert (await get(env.http, env.url + "/api/orders", token)).status == 200

    # Past the old tokens' exp (+ leeway): refused; the new one still works.
    env.advance(TTL + LEEWAY - 100)
    for token in (old, unused_old):
        answer = await get(env.http, env.url + "/api/orders", token)
        assert answer.status == 401
        assert "expired" in answer.headers["WWW-Authenticate"]
    assert (await get(env.http, env.url + "/api/orders", new)).status == 200

    # Past the old key's publish_until: the next refresh drops it.
    publish_until = T0 + 100 + TTL + KEY_REFRESH + 60
    await env.auth.signing.load()
    assert await env.kids() == {old_kid, new_kid}  # not yet
    env.advance(publish_until - clock.wall() + 1)
    await env.auth.signing.load()
    assert await env.kids() == {new_kid}
    assert {r.kid for r in await env.auth.store.list_signing_keys()} == {new_kid}
    latest = (await env.token(client))["access_token"]
    assert jwt.get_unverified_header(latest)["kid"] == new_kid
    assert (await get(env.http, env.url + "/api/orders", latest)).status == 200


async def test_client_created_with_the_cli_gets_tokens(env) -> None:
    config = env.running.folder / "gateway.yaml"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "clients",
        "create",
        "-c",
        str(config),
        "--consumer",
        "cli-consumer",
        "--plan",
        "pro",
        "--scopes",
        "orders:read,orders:write",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()
    printed = dict(line.split("=", 1) for line in stdout.decode().splitlines() if "=" in line)
    client = Client(printed["client_id"], printed["client_secret"])
    body = await env.token(client, scope="orders:read")
    assert body["scope"] == "orders:read"
    answer = await get(env.http, env.url + "/api/orders", body["access_token"])
    assert answer.status == 200
    assert header_values(answer.json(), "X-Consumer-Id") == ["cli-consumer"]
    assert header_values(answer.json(), "X-Consumer-Plan") == ["pro"]
