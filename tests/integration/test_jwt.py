"""JWT validation over real HTTP: trusted issuers (static keys and a remote JWKS),
pinned algorithms, time checks on an injected clock, scopes, and identity headers."""

from __future__ import annotations

import asyncio
import functools
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes

from tests.integration.auth_helpers import (
    Answer,
    GatewayStarter,
    KeyPair,
    RunningGateway,
    ec_key,
    ec_token_with_hash,
    echo_app,
    flip_signature_byte,
    get,
    header_values,
    hmac_token,
    now_claims,
    proxy_route,
    rsa_key,
    segment,
    unsigned_token,
)

pytestmark = pytest.mark.timeout(30)

ISS_PEM = "https://pem.idp.example"
ISS_JWK = "https://jwk.idp.example"
ISS_PINNED = "https://pinned.idp.example"
ISS_MULTI = "https://multi.idp.example"
ISS_REMOTE = "https://remote.idp.example"
LEEWAY = 30

_CHALLENGE = re.compile(
    r'Bearer realm="gateway", error="invalid_token", error_description="([^"\\]*)"'
)


@dataclass(frozen=True)
class Keys:
    rsa: KeyPair  # issuer "pem", as a PEM
    ec: KeyPair  # issuer "jwk", as a JWK
    pinned_ec: KeyPair  # issuer "pinned" (ES256 only)...
    pinned_rsa: KeyPair  # ...which also lists an RSA key
    multi_ec: KeyPair  # issuer "multi" (ES256, ES384, RS256)
    multi_rsa: KeyPair
    attacker: KeyPair


@functools.cache
def keys() -> Keys:
    return Keys(
        rsa=rsa_key("rsa-1"),
        ec=ec_key("ec-1"),
        pinned_ec=ec_key("ec-2"),
        pinned_rsa=rsa_key("rsa-2"),
        multi_ec=ec_key("ec-3"),
        multi_rsa=rsa_key("rsa-3"),
        attacker=rsa_key("rsa-1"),  # same kid as the trusted key, different key
    )


def static_issuers() -> dict[str, Any]:
    k = keys()
    return {
        "pem": {
            "issuer": ISS_PEM,
            "static_keys": [{"kid": "rsa-1", "pem": k.rsa.public_pem}],
            "audience": ["api", "other-api"],
            "algorithms": ["RS256"],
            "leeway": f"{LEEWAY}s",
        },
        "jwk": {
            "issuer": ISS_JWK,
            "static_keys": [{"jwk": k.ec.public_jwk()}],
            "audience": "api",
            "algorithms": ["ES256"],
        },
        "pinned": {
            "issuer": ISS_PINNED,
            "static_keys": [
                {"jwk": k.pinned_ec.public_jwk()},
                {"kid": "rsa-2", "pem": k.pinned_rsa.public_pem},
            ],
            "audience": "api",
            "algorithms": ["ES256"],
        },
        "multi": {
            "issuer": ISS_MULTI,
            "static_keys": [
                {"jwk": k.multi_ec.public_jwk()},
                {"kid": "rsa-3", "pem": k.multi_rsa.public_pem},
            ],
            "audience": "api",
            "algorithms": ["ES256", "ES384", "RS256"],
        },
    }


def jwt_routes(upstream: str, *, static: bool = True) -> list[dict[str, Any]]:
    routes = [
        proxy_route(
            "/api/open",
            upstream,
            auth=["jwt"],
            identity_headers={"claims": {"email": "X-User-Email"}},
        ),
        proxy_route("/api/all", upstream, auth=["jwt"], scopes={"all_of": ["read", "write"]}),
        proxy_route("/api/any", upstream, auth=["jwt"], scopes={"any_of": ["read", "write"]}),
    ]
    if static:
        routes.append(proxy_route("/api/pem-only", upstream, auth=["jwt"], issuers=["pem"]))
    return routes


@dataclass
class Env:
    running: RunningGateway
    hits: list[str]

    @property
    def url(self) -> str:
        return self.running.url

    def claims(self, **claims: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "iss": ISS_PEM,
            "aud": "api",
            "sub": "alice",
            "jti": uuid.uuid4().hex,
        }
        return now_claims(self.running.clock, **{**base, **claims})

    def advance(self, seconds: float) -> None:
        self.running.clock.advance(seconds)


@pytest.fixture
async def starter(tmp_path) -> AsyncIterator[GatewayStarter]:
    starter = GatewayStarter(tmp_path)
    yield starter
    await starter.close()


@pytest.fixture
async def env(starter, aiohttp_server) -> Env:
    hits: list[str] = []
    upstream = await aiohttp_server(echo_app(hits))
    running = await starter.start(
        auth={"issuers": static_issuers()},
        routes=jwt_routes(str(upstream.make_url("")).rstrip("/")),
    )
    return Env(running, hits)


def assert_invalid_token(answer: Answer, *fragments: str) -> str:
    """401, a well-formed invalid_token challenge whose description names the reason,
    and a problem+json body that says the same."""
    assert answer.status == 401, answer.body
    challenge = answer.headers["WWW-Authenticate"]
    match = _CHALLENGE.fullmatch(challenge)
    assert match is not None, challenge
    description = match.group(1)
    for fragment in fragments:
        assert fragment in description, description
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["status"] == 401
    assert problem["type"] == "urn:gateway:problem:unauthorized"
    assert problem["detail"] == description
    return description


async def refused(env: Env, http, token: str, *fragments: str, path: str = "/api/open") -> str:
    before = len(env.hits)
    answer = await get(http, env.url + path, token)
    description = assert_invalid_token(answer, *fragments)
    assert len(env.hits) == before, "a refused request reached the upstream"
    return description


# -- accepted tokens -------------------------------------------------------------------


async def test_pem_issuer_accepted_and_identity_forwarded_not_forged(env, http) -> None:
    token = keys().rsa.sign(
        env.claims(sub="alice", plan="gold", scope="write read", email="alice@example.com")
    )
    answer = await get(
        http,
        env.url + "/api/open",
        token,
        **{
            "X-Consumer-Id": "mallory",
            "X-Consumer-Plan": "enterprise",
            "X-Consumer-Scopes": "admin",
            "X-Credential-Kind": "api_key",
            "X-User-Email": "forged@evil.example",
        },
    )
    assert answer.status == 200, answer.body
    seen = answer.json()
    assert header_values(seen, "X-Consumer-Id") == ["alice"]
    assert header_values(seen, "X-Consumer-Plan") == ["gold"]
    assert header_values(seen, "X-Consumer-Scopes") == ["read write"]
    assert header_values(seen, "X-Credential-Kind") == ["jwt"]
    assert header_values(seen, "X-User-Email") == ["alice@example.com"]
    assert env.hits == ["/api/open"]


async def test_jwk_issuer_accepted_with_default_plan_and_scope_list(env, http) -> None:
    token = keys().ec.sign(env.claims(iss=ISS_JWK, sub="bob", scope=["write", "read"]))
    answer = await get(http, env.url + "/api/open", token)
    assert answer.status == 200, answer.body
    seen = answer.json()
    assert header_values(seen, "X-Consumer-Id") == ["bob"]
    assert header_values(seen, "X-Consumer-Plan") == ["free"]
    assert header_values(seen, "X-Consumer-Scopes") == ["read write"]
    assert header_values(seen, "X-Credential-Kind") == ["jwt"]


async def test_forged_claim_header_is_dropped_when_token_lacks_the_claim(env, http) -> None:
    token = keys().rsa.sign(env.claims())
    answer = await get(
        http,
        env.url + "/api/open",
        token,
        **{"X-User-Email": "forged@evil.example", "x-consumer-id": "mallory"},
    )
    assert answer.status == 200
    seen = answer.json()
    assert header_values(seen, "X-User-Email") == []
    assert header_values(seen, "X-Consumer-Id") == ["alice"]


async def test_any_listed_audience_is_accepted(env, http) -> None:
    token = keys().rsa.sign(env.claims(aud=["someone-else", "other-api"]))
    assert (await get(http, env.url + "/api/open", token)).status == 200


async def test_token_without_kid_may_use_the_issuers_only_key(env, http) -> None:
    token = keys().rsa.sign(env.claims(), kid=None)
    assert (await get(http, env.url + "/api/open", token)).status == 200


# -- refused: algorithms and keys ------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_refused(env, http, alg) -> None:
    token = unsigned_token({"alg": alg, "typ": "JWT", "kid": "rsa-1"}, env.claims())
    await refused(env, http, token, "unsigned")


async def test_algorithm_not_pinned_for_issuer_is_refused_even_with_its_own_rsa_key(
    env, http
) -> None:
    # rsa-2 is one of the pinned issuer's keys, but the issuer is pinned to ES256.
    token = keys().pinned_rsa.sign(env.claims(iss=ISS_PINNED))
    await refused(env, http, token, "token's algorithm is not accepted")
    # The same issuer's EC key works: the refusal above is about the algorithm.
    good = keys().pinned_ec.sign(env.claims(iss=ISS_PINNED))
    assert (await get(http, env.url + "/api/open", good)).status == 200


async def test_hs256_with_the_rsa_public_key_as_secret_is_refused(env, http) -> None:
    secret = keys().rsa.public_pem.encode()  # exactly what the config holds
    token = hmac_token({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, env.claims(), secret)
    await refused(env, http, token, "token's algorithm is not accepted")


async def test_hs256_with_the_ec_public_key_as_secret_is_refused(env, http) -> None:
    k = keys().ec
    for secret in (k.public_pem.encode(), segment(k.public_jwk()).encode()):
        token = hmac_token(
            {"alg": "HS256", "typ": "JWT", "kid": "ec-1"}, env.claims(iss=ISS_JWK), secret
        )
        await refused(env, http, token, "token's algorithm is not accepted")


async def test_rsa_algorithm_naming_an_ec_key_is_refused(env, http) -> None:
    # The issuer allows RS256, but the kid names its EC key.
    token = keys().multi_rsa.sign(env.claims(iss=ISS_MULTI), kid="ec-3")
    await refused(env, http, token, "signing key does not fit")


async def test_es384_on_a_p256_key_is_refused(env, http) -> None:
    k = keys().multi_ec
    token = ec_token_with_hash(
        k, {"alg": "ES384", "typ": "JWT", "kid": "ec-3"}, env.claims(iss=ISS_MULTI), hashes.SHA384()
    )
    await refused(env, http, token, "signing key does not fit")


async def test_bad_signature_is_refused(env, http) -> None:
    good = keys().rsa.sign(env.claims())
    await refused(env, http, flip_signature_byte(good), "signature is not valid")


async def test_signature_by_another_key_with_a_trusted_kid_is_refused(env, http) -> None:
    token = keys().attacker.sign(env.claims())  # kid rsa-1, attacker's private key
    await refused(env, http, token, "signature is not valid")


async def test_unknown_kid_is_refused(env, http) -> None:
    token = keys().rsa.sign(env.claims(), kid="rsa-999")
    await refused(env, http, token, "signing key is unknown")


@pytest.mark.parametrize(
    "header",
    [
        {"jku": "https://attacker.example/jwks.json"},
        {"x5u": "https://attacker.example/cert.pem"},
        {"jwk": "ATTACKER_JWK"},
        {"x5c": ["MIIBfake"]},
    ],
    ids=["jku", "x5u", "jwk", "x5c"],
)
async def test_token_naming_its_own_key_is_refused(env, http, header) -> None:
    attacker = keys().attacker
    if header.get("jwk") == "ATTACKER_JWK":
        header = {"jwk": attacker.public_jwk()}
    token = attacker.sign(env.claims(), kid="attacker-1", **header)
    await refused(env, http, token, "may not name its own key")


# -- refused: claims and times ---------------------------------------------------------


async def test_untrusted_issuer_is_refused(env, http) -> None:
    token = keys().rsa.sign(env.claims(iss="https://evil.example"))
    await refused(env, http, token, "issuer is not trusted")


async def test_wrong_audience_is_refused(env, http) -> None:
    token = keys().rsa.sign(env.claims(aud="someone-else"))
    await refused(env, http, token, "audience")


async def test_missing_exp_is_refused(env, http) -> None:
    token = keys().rsa.sign(env.claims(exp=None))
    await refused(env, http, token, "'exp'")


async def test_missing_sub_is_refused(env, http) -> None:
    token = keys().rsa.sign(env.claims(sub=None))
    await refused(env, http, token, "'sub'")


async def test_expired_token_is_refused_once_past_exp_plus_leeway(env, http) -> None:
    token = keys().rsa.sign(env.claims(exp=int(env.running.clock.wall()) + 60))
    env.advance(60 + LEEWAY)
    await refused(env, http, token, "expired")


async def test_expired_but_within_leeway_is_accepted(env, http) -> None:
    token = keys().rsa.sign(env.claims(exp=int(env.running.clock.wall()) + 60))
    env.advance(60 + LEEWAY - 1)
    assert (await get(http, env.url + "/api/open", token)).status == 200


async def test_not_yet_valid_is_refused_beyond_leeway(env, http) -> None:
    now = int(env.running.clock.wall())
    token = keys().rsa.sign(env.claims(nbf=now + LEEWAY + 1))
    await refused(env, http, token, "not valid yet")


async def test_nbf_and_iat_in_the_future_within_leeway_are_accepted(env, http) -> None:
    now = int(env.running.clock.wall())
    token = keys().rsa.sign(env.claims(nbf=now + LEEWAY - 1, iat=now + LEEWAY - 1))
    assert (await get(http, env.url + "/api/open", token)).status == 200


async def test_not_yet_valid_token_becomes_valid_when_the_clock_reaches_nbf(env, http) -> None:
    now = int(env.running.clock.wall())
    token = keys().rsa.sign(env.claims(nbf=now + 100))
    await refused(env, http, token, "not valid yet")
    env.advance(100 - LEEWAY)
    assert (await get(http, env.url + "/api/open", token)).status == 200


async def test_iat_in_the_future_is_refused(env, http) -> None:
    now = int(env.running.clock.wall())
    token = keys().rsa.sign(env.claims(iat=now + LEEWAY + 1))
    await refused(env, http, token, "issued in the future")


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "only.two",
        "a.b.c.d",
        "@@@.###.$$$",
        f"{segment({'alg': 'RS256'})}.%%%notbase64%%%.c2ln",
        "bm90IGpzb24.e30.c2ln",  # header is not JSON
        f"{segment({'alg': 'RS256', 'kid': 'rsa-1'})}.WzEsMiwzXQ.c2ln",  # payload is a list
    ],
    ids=["garbage", "two-parts", "four-parts", "bad-base64", "bad-payload", "header", "list"],
)
async def test_malformed_token_is_refused(env, http, token) -> None:
    await refused(env, http, token, "malformed")


# -- no credential, scopes, route issuers ---------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Basic YWxpY2U6c2VjcmV0", "Token abc"])
async def test_no_bearer_token_gets_a_bare_challenge(env, http, authorization) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = await get(http, env.url + "/api/open", **headers)
    assert answer.status == 401
    assert answer.headers.getall("WWW-Authenticate") == ['Bearer realm="gateway"']
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert answer.json()["status"] == 401
    assert env.hits == []


async def test_insufficient_scope_is_403_with_the_needed_scope(env, http) -> None:
    token = keys().rsa.sign(env.claims(scope="read"))
    answer = await get(http, env.url + "/api/all", token)
    assert answer.status == 403
    assert answer.headers["WWW-Authenticate"] == (
        'Bearer realm="gateway", error="insufficient_scope", scope="read write"'
    )
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["status"] == 403
    assert "read write" in problem["detail"]
    assert env.hits == []


@pytest.mark.parametrize(
    ("scope", "all_of", "any_of"),
    [
        ("read write", 200, 200),
        ("write read admin", 200, 200),
        ("read", 403, 200),
        ("write admin", 403, 200),
        ("admin", 403, 403),
        ("", 403, 403),
        ("readwrite", 403, 403),
    ],
)
async def test_all_of_and_any_of(env, http, scope, all_of, any_of) -> None:
    token = keys().rsa.sign(env.claims(scope=scope))
    assert (await get(http, env.url + "/api/all", token)).status == all_of
    assert (await get(http, env.url + "/api/any", token)).status == any_of


async def test_route_issuers_restrict_which_issuer_is_accepted(env, http) -> None:
    pem_token = keys().rsa.sign(env.claims())
    jwk_token = keys().ec.sign(env.claims(iss=ISS_JWK))
    assert (await get(http, env.url + "/api/pem-only", pem_token)).status == 200
    await refused(env, http, jwk_token, "not accepted here", path="/api/pem-only")
    # Verified (and cached) on a route that trusts every issuer: still refused here.
    assert (await get(http, env.url + "/api/open", jwk_token)).status == 200
    await refused(env, http, jwk_token, "not accepted here", path="/api/pem-only")


# -- bugs: attacker-controlled text, claim types ---------------------------------------


@pytest.mark.parametrize(
    "alg",
    ['RS256", error="insufficient_scope', "RS256\r\nX-Injected: yes", "RS256\x7f"],
    ids=["quote", "crlf", "del"],
)
async def test_challenge_stays_well_formed_whatever_the_alg_header_says(env, http, alg) -> None:
    # The header's alg is attacker-chosen (no valid signature needed). Echoing it into
    # the challenge's quoted-string forges auth-params; a control character makes
    # aiohttp refuse the header and drop the connection instead of answering 401.
    token = hmac_token({"alg": alg, "kid": "rsa-1"}, env.claims(), b"whatever")
    try:
        answer = await get(http, env.url + "/api/open", token)
    except aiohttp.ServerDisconnectedError:
        pytest.fail("the gateway dropped the connection instead of answering 401")
    assert_invalid_token(answer)  # _CHALLENGE admits exactly three auth-params
    assert "X-Injected" not in answer.headers


async def test_iss_that_is_not_a_string_is_refused_not_a_server_error(env, http) -> None:
    # No valid signature is needed: the attacker's key will do. (pyjwt will not
    # encode a list ``iss``; the payload bytes are signed directly.)
    token = keys().attacker.sign_payload(env.claims(iss=[ISS_PEM]))
    await refused(env, http, token)


@pytest.mark.parametrize("claim", ["email", "plan", "sub"])
async def test_claim_with_a_line_break_is_not_a_server_error(env, http, claim) -> None:
    # A verified claim is forwarded as an identity header (X-User-Email, X-Consumer-Plan,
    # X-Consumer-Id); a value with CR/LF cannot be a header value. The gateway should
    # leave such a header out (as it does for list/dict claims) or refuse the token,
    # never answer 500 - nor let the line break reach the upstream.
    token = keys().rsa.sign_payload({**env.claims(), claim: "x\r\nX-Evil: 1"})
    answer = await get(http, env.url + "/api/open", token)
    assert answer.status in (200, 401), answer.body
    if answer.status == 200:
        assert header_values(answer.json(), "X-Evil") == []


# -- remote JWKS -----------------------------------------------------------------------


@dataclass
class JwksServer:
    keys: list[dict[str, Any]]
    cache_control: str = "max-age=300"
    status: int = 200
    fetches: int = 0
    hang: asyncio.Event | None = None
    fetch_started: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    server: Any = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        self.fetch_started.set()
        if self.hang is not None:
            await self.hang.wait()
        if self.status != 200:
            return web.Response(status=self.status, text="down")
        return web.json_response({"keys": self.keys}, headers={"Cache-Control": self.cache_control})

    async def wait_for_fetches(self, count: int, seconds: float = 3.0) -> None:
        deadline = time.monotonic() + seconds
        while self.fetches < count and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@dataclass
class RemoteEnv(Env):
    jwks: JwksServer = field(default_factory=lambda: JwksServer([]))

    def claims(self, **claims: Any) -> dict[str, Any]:
        return super().claims(**{"iss": ISS_REMOTE, **claims})


@pytest.fixture
def start_remote(starter, aiohttp_server):
    async def start(
        jwks_options: dict[str, str] | None = None,
        cache_control: str = "max-age=300",
        served: list[KeyPair] | None = None,
        hang: asyncio.Event | None = None,
        status: int = 200,
    ) -> RemoteEnv:
        served = served if served is not None else [keys().rsa]
        jwks = JwksServer([k.public_jwk(use="sig", alg=k.algorithm) for k in served])
        jwks.cache_control = cache_control
        jwks.hang = hang
        jwks.status = status
        app = web.Application()
        app.router.add_get("/jwks", jwks.handle)
        jwks.server = await aiohttp_server(app)
        jwks.url = str(jwks.server.make_url("/jwks"))
        hits: list[str] = []
        upstream = await aiohttp_server(echo_app(hits))
        options = {"cooldown": "30s", "timeout": "5s", "min_ttl": "60s", "max_ttl": "1h"}
        running = await starter.start(
            auth={
                "issuers": {
                    "remote": {
                        "issuer": ISS_REMOTE,
                        "jwks_url": jwks.url,
                        "jwks": {**options, **(jwks_options or {})},
                        "audience": "api",
                        "algorithms": ["RS256", "ES256"],
                        "leeway": f"{LEEWAY}s",
                    }
                }
            },
            routes=jwt_routes(str(upstream.make_url("")).rstrip("/"), static=False),
        )
        # The background refresher fetches at start; count from there.
        await jwks.wait_for_fetches(1)
        assert jwks.fetches == 1
        return RemoteEnv(running, hits, jwks)

    return start


async def test_jwks_keys_are_fetched_once_and_cached(start_remote, http) -> None:
    env = await start_remote()
    signer = keys().rsa
    for _ in range(10):
        assert (await get(http, env.url + "/api/open", signer.sign(env.claims()))).status == 200
    answers = await asyncio.gather(
        *(get(http, env.url + "/api/open", signer.sign(env.claims())) for _ in range(10))
    )
    assert [a.status for a in answers] == [200] * 10
    assert env.jwks.fetches == 1


async def test_requests_before_the_first_key_set_share_one_fetch(start_remote, http) -> None:
    release = asyncio.Event()
    env = await start_remote(hang=release)  # the start-up fetch is hanging
    signer = keys().rsa
    waiting = [
        asyncio.create_task(get(http, env.url + "/api/open", signer.sign(env.claims())))
        for _ in range(5)
    ]
    try:
        await asyncio.sleep(0.2)
        assert not any(task.done() for task in waiting)
    finally:
        release.set()
    answers = await asyncio.gather(*waiting)
    assert [a.status for a in answers] == [200] * 5
    assert env.jwks.fetches == 1


async def test_jwks_down_from_the_start_is_not_fetched_per_request(start_remote, http) -> None:
    # With no key set yet and the endpoint down, requests get 503 (the client did
    # nothing wrong) and do not each set off a fetch: refetches wait for the cooldown.
    env = await start_remote(status=503)
    signer = keys().rsa
    for _ in range(5):
        assert (await get(http, env.url + "/api/open", signer.sign(env.claims()))).status == 503
    assert env.jwks.fetches <= 2
    # Once the endpoint is back, the next attempt after the cooldown gets the keys.
    env.jwks.status = 200
    env.advance(31)
    assert (await get(http, env.url + "/api/open", signer.sign(env.claims()))).status == 200


async def test_unknown_kid_refetches_at_most_once_per_cooldown(start_remote, http) -> None:
    env = await start_remote()
    signer = keys().rsa

    def stranger() -> str:
        return signer.sign(env.claims(), kid=f"unknown-{uuid.uuid4().hex[:8]}")

    # Within the cooldown of the start-up fetch: no refetch at all.
    for _ in range(3):
        await refused(env, http, stranger(), "signing key is unknown")
    assert env.jwks.fetches == 1

    env.advance(31)
    answers = await asyncio.gather(
        *(get(http, env.url + "/api/open", stranger()) for _ in range(8))
    )
    for answer in answers:
        assert_invalid_token(answer, "signing key is unknown")
    for _ in range(3):
        await refused(env, http, stranger(), "signing key is unknown")
    assert env.jwks.fetches == 2

    env.advance(31)
    for _ in range(3):
        await refused(env, http, stranger(), "signing key is unknown")
    assert env.jwks.fetches == 3


async def test_rotated_issuer_key_is_accepted_after_one_refetch(start_remote, http) -> None:
    env = await start_remote()
    old, new = keys().rsa, ec_key("ec-rotated")
    assert (await get(http, env.url + "/api/open", old.sign(env.claims()))).status == 200

    env.jwks.keys = [new.public_jwk(use="sig")]
    env.advance(31)
    answer = await get(http, env.url + "/api/open", new.sign(env.claims()))
    assert answer.status == 200, answer.body
    assert env.jwks.fetches == 2
    # The old key left the set with the refetch.
    await refused(env, http, old.sign(env.claims()), "signing key is unknown")
    assert env.jwks.fetches == 2


async def test_jwks_hanging_does_not_stall_requests_with_known_kid(start_remote, http) -> None:
    env = await start_remote()
    signer = keys().rsa
    env.jwks.hang = asyncio.Event()
    env.jwks.fetch_started.clear()
    env.advance(31)
    # An unknown kid starts a refetch that hangs (the fetch timeout is 5 s).
    stuck = asyncio.create_task(
        get(http, env.url + "/api/open", signer.sign(env.claims(), kid="brand-new"))
    )
    try:
        await asyncio.wait_for(env.jwks.fetch_started.wait(), 3)
        for _ in range(3):
            started = time.monotonic()
            answer = await get(http, env.url + "/api/open", signer.sign(env.claims()))
            assert answer.status == 200
            assert time.monotonic() - started < 1.0
        assert not stuck.done()
    finally:
        stuck.cancel()
        env.jwks.hang.set()
    assert env.jwks.fetches == 2


async def test_a_request_waits_for_a_hanging_jwks_no_longer_than_the_timeout(
    start_remote, http
) -> None:
    env = await start_remote({"timeout": "300ms"})
    signer = keys().rsa
    env.jwks.hang = asyncio.Event()
    env.advance(31)
    try:
        started = time.monotonic()
        await refused(env, http, signer.sign(env.claims(), kid="brand-new"), "unknown")
        assert 0.25 < time.monotonic() - started < 1.5
    finally:
        env.jwks.hang.set()


async def test_jwks_keys_not_for_signatures_are_ignored(start_remote, http) -> None:
    encryption = rsa_key("enc-1")
    env = await start_remote()
    env.jwks.keys = [
        keys().rsa.public_jwk(use="sig"),
        encryption.public_jwk(use="enc"),
    ]
    env.advance(31)
    await refused(env, http, encryption.sign(env.claims()), "signing key is unknown")
    assert env.jwks.fetches == 2  # the set was fetched again, the enc key left out
    assert (await get(http, env.url + "/api/open", keys().rsa.sign(env.claims()))).status == 200


async def test_jwks_down_keeps_cached_keys(start_remote, http) -> None:
    env = await start_remote()
    signer = keys().rsa
    env.jwks.status = 500
    env.advance(31)
    # A refetch happens and fails quickly; the cached keys survive it.
    await refused(env, http, signer.sign(env.claims(), kid="brand-new"), "unknown")
    assert env.jwks.fetches == 2
    started = time.monotonic()
    assert (await get(http, env.url + "/api/open", signer.sign(env.claims()))).status == 200
    assert time.monotonic() - started < 1.0

    # Stopped altogether (connection refused): still fine.
    await env.jwks.server.close()
    env.advance(31)
    await refused(env, http, signer.sign(env.claims(), kid="newer"), "unknown")
    started = time.monotonic()
    assert (await get(http, env.url + "/api/open", signer.sign(env.claims()))).status == 200
    assert time.monotonic() - started < 1.0


# The refresher sleeps with asyncio.sleep for the remaining lifetime, so these use
# short real durations; the ManualClock cannot drive it.


async def test_jwks_max_age_below_min_ttl_is_raised_to_the_floor(start_remote) -> None:
    env = await start_remote(
        {"min_ttl": "400ms", "cooldown": "50ms"}, cache_control="public, max-age=0"
    )
    await asyncio.sleep(0.2)
    assert env.jwks.fetches == 1  # max-age=0 alone would refetch every cooldown
    await env.jwks.wait_for_fetches(2, seconds=2.0)
    assert env.jwks.fetches == 2


async def test_jwks_max_age_is_honoured_above_min_ttl(start_remote) -> None:
    env = await start_remote(
        {"min_ttl": "50ms", "cooldown": "50ms"}, cache_control="public, max-age=3600"
    )
    await asyncio.sleep(0.4)
    assert env.jwks.fetches == 1


async def test_jwks_max_age_is_capped_by_max_ttl(start_remote) -> None:
    env = await start_remote(
        {"min_ttl": "50ms", "cooldown": "50ms", "max_ttl": "300ms"},
        cache_control="max-age=3600",
    )
    await asyncio.sleep(0.15)
    assert env.jwks.fetches == 1
    await env.jwks.wait_for_fetches(2, seconds=2.0)
    assert env.jwks.fetches == 2


async def test_verified_token_is_cached_until_it_expires(start_remote, http) -> None:
    env = await start_remote()
    old, new = keys().rsa, ec_key("ec-next")
    expires = int(env.running.clock.wall()) + 600
    token = old.sign(env.claims(exp=expires))
    assert (await get(http, env.url + "/api/open", token)).status == 200

    # The issuer drops the key and the gateway learns it (refetch for the new kid).
    env.jwks.keys = [new.public_jwk(use="sig")]
    env.advance(31)
    assert (await get(http, env.url + "/api/open", new.sign(env.claims()))).status == 200
    await refused(env, http, old.sign(env.claims()), "signing key is unknown")

    # The token verified before is not verified again...
    answer = await get(http, env.url + "/api/open", token)
    assert answer.status == 200
    assert header_values(answer.json(), "X-Consumer-Id") == ["alice"]
    # ...until it expires.
    env.advance(expires + LEEWAY - env.running.clock.wall())
    await refused(env, http, token, "expired")


# -- rate limits per credential --------------------------------------------------------


async def test_by_api_key_counts_a_tokens_client_not_the_token(starter, aiohttp_server, http):
    upstream = await aiohttp_server(echo_app())
    url = str(upstream.make_url("")).rstrip("/")
    limit = {"by": "api_key", "plan": False, "limit": {"rate": "1/minute", "burst": 2}}
    running = await starter.start(
        auth={"issuers": static_issuers()},
        routes=[proxy_route("/api/limited", url, auth=["jwt"], rate_limit=limit)],
    )
    env = Env(running, [])
    route = f"{env.url}/api/limited"

    def token(**claims: Any) -> str:
        return keys().rsa.sign(env.claims(**claims))

    async def statuses(*tokens: str) -> list[int]:
        return [(await get(http, route, t)).status for t in tokens]

    # A new token (a new jti) of the same client draws on the same budget...
    app = {"sub": "alice", "client_id": "app-1"}
    assert await statuses(token(**app), token(**app), token(**app)) == [200, 200, 429]
    # ...while another client of the same consumer has its own, and so do one named
    # by ``azp`` only and a client of the same name at another issuer.
    assert await statuses(token(sub="alice", client_id="app-2")) == [200]
    assert await statuses(token(sub="alice", azp="app-3")) == [200]
    elsewhere = keys().ec.sign(env.claims(iss=ISS_JWK, **app))
    assert await statuses(elsewhere) == [200]
    # Without a client claim or a jti, each subject still has a budget of its own.
    bare = {"client_id": None, "jti": None}
    assert await statuses(token(sub="bob", **bare), token(sub="bob", **bare)) == [200, 200]
    assert await statuses(token(sub="carol", **bare)) == [200]
    assert await statuses(token(sub="bob", **bare)) == [429]
