"""API keys over real HTTP: where they are read, how they are stored, revoked, rotated."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from gateway.context import ManualClock
from gateway.policies.auth import manage
from gateway.stores.redis import RedisCredentialStore

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[2]


def echo_headers_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"_path_qs": request.raw_path, **request.headers})

    app = web.Application()
    app.router.add_get("/{tail:.*}", echo)
    return app


def auth_top(tmp_path: Path, extra: str = "") -> str:
    return f"""
    auth:
      sqlite_path: {tmp_path / "credentials.db"}
      pepper_file: {tmp_path / "pepper.json"}
      cache_ttl: 10s
      {extra}
    """


def routes(url: str, scopes: str = "") -> str:
    return f"""
    routes:
      - path: /k/{{id}}
        auth: [api_key]
        proxy: {{url: '{url}'}}
      - path: /scoped
        auth: [api_key]
        scopes: {{all_of: [orders:read, orders:write]}}
        proxy: {{url: '{url}'}}
    """


@pytest.fixture
async def upstream_url(aiohttp_server):
    server = await aiohttp_server(echo_headers_app())
    return str(server.make_url("")).rstrip("/")


async def new_key(gw, clock=None, **kwargs) -> manage.CreatedKey:
    auth = gw.gateway.auth
    return await manage.create_api_key(
        auth.store, auth.peppers, clock or gw.gateway.clock, consumer_id="acme", **kwargs
    )


def challenge(response) -> str:
    return str(response.headers.get("WWW-Authenticate", ""))


async def test_key_is_read_from_header_and_bearer(
    start_gateway, upstream_url, http, tmp_path
) -> None:
    gw = await start_gateway(routes(upstream_url), top=auth_top(tmp_path))
    created = await new_key(gw, plan="pro", scopes=("orders:read",))
    for headers in ({"X-API-Key": created.key}, {"Authorization": f"Bearer {created.key}"}):
        async with http.get(f"{gw.url}/k/1", headers={**headers, "X-Consumer-Id": "forged"}) as r:
            assert r.status == 200
            seen = await r.json()
        assert seen["X-Consumer-Id"] == "acme"
        assert seen["X-Consumer-Plan"] == "pro"
        assert seen["X-Consumer-Scopes"] == "orders:read"
        assert seen["X-Credential-Kind"] == "api_key"
        # The key itself never travels upstream: the identity headers replace it.
        assert created.key not in json.dumps(seen)


async def test_query_parameter_only_when_configured(
    start_gateway, upstream_url, http, tmp_path
) -> None:
    off = await start_gateway(routes(upstream_url), top=auth_top(tmp_path / "a"))
    created = await new_key(off)
    async with http.get(f"{off.url}/k/1?api_key={created.key}") as response:
        assert response.status == 401
        assert challenge(response) == 'Bearer realm="gateway"'
    on = await start_gateway(
        routes(upstream_url),
        top=auth_top(tmp_path / "b", "api_keys: {query_param: api_key}"),
    )
    created = await new_key(on)
    async with http.get(f"{on.url}/k/1?a=1&api_key={created.key}&b=2") as response:
        assert response.status == 200
        seen = await response.json()
    assert created.key not in json.dumps(seen)
    assert seen["_path_qs"] == "/k/1?a=1&b=2"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda key: key[:-1] + ("A" if key[-1] != "A" else "B"),  # wrong secret
        lambda key: "gwk_zzzzzzzzzzzz_" + key.split("_", 2)[2],  # unknown id
        lambda key: "not-a-key",
        lambda key: key.replace("gwk_", "gwx_"),
    ],
)
async def test_bad_keys_are_401_invalid_token(
    start_gateway, upstream_url, http, tmp_path, mangle
) -> None:
    gw = await start_gateway(routes(upstream_url), top=auth_top(tmp_path))
    created = await new_key(gw)
    async with http.get(f"{gw.url}/k/1", headers={"X-API-Key": mangle(created.key)}) as response:
        assert response.status == 401
        assert response.content_type == "application/problem+json"
        assert 'error="invalid_token"' in challenge(response)
        assert "the API key is not valid" in challenge(response)


async def test_no_credentials_get_a_bare_challenge(
    start_gateway, upstream_url, http, tmp_path
) -> None:
    gw = await start_gateway(routes(upstream_url), top=auth_top(tmp_path))
    async with http.get(f"{gw.url}/k/1") as response:
        assert response.status == 401
        assert challenge(response) == 'Bearer realm="gateway"'


async def test_scopes_all_of(start_gateway, upstream_url, http, tmp_path) -> None:
    gw = await start_gateway(routes(upstream_url), top=auth_top(tmp_path))
    partial = await new_key(gw, scopes=("orders:read",))
    full = await new_key(gw, scopes=("orders:read", "orders:write"))
    async with http.get(f"{gw.url}/scoped", headers={"X-API-Key": partial.key}) as response:
        assert response.status == 403
        assert 'error="insufficient_scope"' in challenge(response)
        assert 'scope="orders:read orders:write"' in challenge(response)
    async with http.get(f"{gw.url}/scoped", headers={"X-API-Key": full.key}) as response:
        assert response.status == 200


async def test_only_a_keyed_hash_is_stored(start_gateway, upstream_url, tmp_path) -> None:
    gw = await start_gateway(routes(upstream_url), top=auth_top(tmp_path))
    created = await new_key(gw)
    secret = created.key.split("_", 2)[2]
    await gw.gateway.stop()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    pepper = json.loads((tmp_path / "pepper.json").read_text())
    key = bytes.fromhex(pepper["peppers"][str(created.record.pepper_version)])
    assert created.record.secret_hash == hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()
    assert (tmp_path / "pepper.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "credentials.db").stat().st_mode & 0o777 == 0o600


async def test_expiry_and_rotation_follow_the_clock(
    start_gateway, upstream_url, http, tmp_path
) -> None:
    clock = ManualClock(wall=1_800_000_000.0)
    gw = await start_gateway(routes(upstream_url), top=auth_top(tmp_path), clock=clock)
    old = await new_key(gw, clock=clock, expires_in=3600)
    auth = gw.gateway.auth
    rotated = await manage.rotate_api_key(
        auth.store, auth.peppers, clock, old.record.key_id, overlap=600
    )
    assert rotated is not None
    auth.api_keys.invalidate(old.record.key_id)
    for key in (old.key, rotated.key):
        async with http.get(f"{gw.url}/k/1", headers={"X-API-Key": key}) as response:
            assert response.status == 200
    clock.advance(601)  # past the overlap: the old key is done, the new one lives on
    auth.api_keys.invalidate(old.record.key_id)
    async with http.get(f"{gw.url}/k/1", headers={"X-API-Key": old.key}) as response:
        assert response.status == 401
        assert "expired" in challenge(response)
    async with http.get(f"{gw.url}/k/1", headers={"X-API-Key": rotated.key}) as response:
        assert response.status == 200
    clock.advance(3600)  # the new key inherited the old one's remaining lifetime
    auth.api_keys.invalidate(rotated.record.key_id)
    async with http.get(f"{gw.url}/k/1", headers={"X-API-Key": rotated.key}) as response:
        assert response.status == 401


async def test_unknown_ids_are_negatively_cached(
    start_gateway, upstream_url, http, tmp_path
) -> None:
    gw = await start_gateway(routes(upstream_url), top=auth_top(tmp_path))
    store = gw.gateway.auth.store
    calls: list[str] = []
    real = store.get_api_key

    async def counting(key_id: str):
        calls.append(key_id)
        return await real(key_id)

    store.get_api_key = counting  # a spy that calls through, not a fake
    bogus = "gwk_zzzzzzzzzzzz_" + "A" * 43

    async def hit() -> int:
        async with http.get(f"{gw.url}/k/1", headers={"X-API-Key": bogus}) as response:
            return int(response.status)

    assert await asyncio.gather(*(hit() for _ in range(50))) == [401] * 50
    assert calls == ["zzzzzzzzzzzz"]


async def test_admin_api_manages_keys_and_revokes_at_once(
    start_gateway, upstream_url, http, tmp_path
) -> None:
    gw = await start_gateway(
        routes(upstream_url),
        top=auth_top(tmp_path)
        + f"""
    admin:
      enabled: true
      listen: {{host: 127.0.0.1, port: 0}}
      token_file: {tmp_path / "admin-token"}
      token_env: GATEWAY_TEST_UNSET_TOKEN
    """,
    )
    admin = f"http://127.0.0.1:{gw.gateway.admin_port}"
    token = (tmp_path / "admin-token").read_text().strip()
    assert (tmp_path / "admin-token").stat().st_mode & 0o777 == 0o600
    auth = {"Authorization": f"Bearer {token}"}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        async with http.get(f"{admin}/admin/keys", headers=headers) as response:
            assert response.status == 401
    async with http.post(f"{admin}/admin/keys", json={"scopes": "x"}, headers=auth) as response:
        assert response.status == 422
    async with http.post(
        f"{admin}/admin/keys",
        json={"consumer": "acme", "plan": "pro", "expires_in": "90d"},
        headers=auth,
    ) as response:
        assert response.status == 201
        created = await response.json()
    key, key_id = created["key"], created["key_id"]
    async with http.get(f"{gw.url}/k/1", headers={"X-API-Key": key}) as response:
        assert response.status == 200
    async with http.get(f"{admin}/admin/keys", headers=auth) as response:
        listing = await response.text()
    assert key_id in listing
    assert key.split("_", 2)[2] not in listing
    assert "secret_hash" not in listing
    async with http.delete(f"{admin}/admin/keys/{key_id}", headers=auth) as response:
        assert response.status == 204
    async with http.get(f"{gw.url}/k/1", headers={"X-API-Key": key}) as response:
        assert response.status == 401  # at once: the cache entry was dropped
        assert "revoked" in challenge(response)
    async with http.delete(f"{admin}/admin/keys/{key_id}", headers=auth) as response:
        assert response.status == 404
    async with http.post(
        f"{admin}/admin/clients", json={"consumer": "acme", "scopes": ["a"]}, headers=auth
    ) as r:
        assert r.status == 201
        client = await r.json()
    assert client["client_id"].startswith("gwc_")
    assert client["client_secret"].startswith("gwcs_")
    async with http.get(f"{admin}/admin/clients", headers=auth) as response:
        text = await response.text()
    assert client["client_id"] in text
    assert client["client_secret"] not in text
    async with http.delete(
        f"{admin}/admin/clients/{client['client_id']}", headers=auth
    ) as response:
        assert response.status == 204


async def test_store_outage_fails_closed_but_cached_keys_keep_working(
    start_gateway, upstream_url, http, private_redis_server, tmp_path
) -> None:
    gw = await start_gateway(
        routes(upstream_url), top=redis_auth_top(private_redis_server.url, tmp_path)
    )
    cached = await new_key(gw)
    uncached = await new_key(gw)
    async with http.get(f"{gw.url}/k/1", headers={"X-API-Key": cached.key}) as response:
        assert response.status == 200
    await private_redis_server.astop()
    async with http.get(f"{gw.url}/k/1", headers={"X-API-Key": cached.key}) as response:
        assert response.status == 200
    async with http.get(f"{gw.url}/k/1", headers={"X-API-Key": uncached.key}) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert orjson.loads(await response.read())["status"] == 503


def test_cli_creates_lists_and_revokes(tmp_path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"auth: {{sqlite_path: {tmp_path / 'c.db'}, pepper_file: {tmp_path / 'p.json'}}}\n"
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args, "-c", str(config)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
        )

    created = cli("keys", "create", "--consumer", "acme", "--plan", "pro", "--scopes", "a,b")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("gwk_")
    key_id = key.split("_")[1]
    listed = cli("keys", "list")
    assert key_id in listed.stdout
    assert "active" in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout
    assert cli("keys", "revoke", key_id).returncode == 0
    assert "revoked" in cli("keys", "list").stdout
    assert cli("keys", "revoke", key_id).returncode == 1


async def test_pepper_rotation_keeps_old_keys_and_signs_new_ones(
    start_gateway, upstream_url, http, tmp_path
) -> None:
    from gateway.policies.auth.secrets import Peppers

    gw = await start_gateway(routes(upstream_url), top=auth_top(tmp_path))
    old = await new_key(gw)
    assert Peppers.rotate(tmp_path / "pepper.json") == 2
    assert await gw.gateway.reload()  # what SIGHUP does
    new = await new_key(gw)
    assert (old.record.pepper_version, new.record.pepper_version) == (1, 2)
    for key in (old.key, new.key):
        async with http.get(f"{gw.url}/k/1", headers={"X-API-Key": key}) as response:
            assert response.status == 200


@pytest.mark.parametrize("algorithm", ["ES256", "RS256", "EdDSA"])
async def test_token_endpoint_signs_with_each_algorithm(
    start_gateway, upstream_url, http, tmp_path, algorithm
) -> None:
    import jwt as pyjwt

    gw = await start_gateway(
        f"""
        routes:
          - path: /j
            auth: [jwt]
            proxy: {{url: '{upstream_url}'}}
        """,
        top=auth_top(tmp_path, f"oauth: {{enabled: true, algorithm: {algorithm}}}"),
    )
    auth = gw.gateway.auth
    client = await manage.create_client(
        auth.store, auth.peppers, gw.gateway.clock, consumer_id="acme", scopes=("a",)
    )
    async with http.post(
        f"{gw.url}/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client.record.client_id,
            "client_secret": client.secret,
        },
    ) as response:
        assert response.status == 200
        token = (await response.json())["access_token"]
    assert pyjwt.get_unverified_header(token)["alg"] == algorithm
    async with http.get(f"{gw.url}/.well-known/jwks.json") as response:
        jwks = await response.json()
    assert [key["alg"] for key in jwks["keys"]] == [algorithm]
    async with http.get(f"{gw.url}/j", headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200
        assert (await response.json())["X-Consumer-Id"] == "acme"


async def test_a_cached_key_still_expires_on_time(
    start_gateway, upstream_url, http, tmp_path
) -> None:
    clock = ManualClock(wall=1_800_000_000.0)
    gw = await start_gateway(routes(upstream_url), top=auth_top(tmp_path), clock=clock)
    created = await new_key(gw, clock=clock, expires_in=5)
    async with http.get(f"{gw.url}/k/1", headers={"X-API-Key": created.key}) as response:
        assert response.status == 200  # verified and cached for cache_ttl (10 s)
    clock.advance(6)  # inside the cache's 10 s, past the key's 5 s
    async with http.get(f"{gw.url}/k/1", headers={"X-API-Key": created.key}) as response:
        assert response.status == 401
        assert "expired" in challenge(response)


def redis_auth_top(redis_url: str, tmp_path: Path) -> str:
    """The credential store in Redis, keys trusted from a node's cache for 10 s."""
    return f"""
    auth:
      store: redis
      redis_url: {redis_url}
      pepper_file: {tmp_path / "pepper.json"}
      cache_ttl: 10s
    """


async def _statuses_until(http, urls: list[str], key: str, wanted: int) -> list[int]:
    """Each node's status for ``key``, asked again (up to 2 s) until all are ``wanted``:
    an announcement travels through Redis pub/sub, so it takes a moment."""
    statuses: list[int] = []
    for _ in range(200):
        statuses = []
        for url in urls:
            async with http.get(f"{url}/k/1", headers={"X-API-Key": key}) as response:
                statuses.append(response.status)
        if all(status == wanted for status in statuses):
            break
        await asyncio.sleep(0.01)
    return statuses


async def test_a_revocation_reaches_every_node_at_once(
    start_gateway, upstream_url, http, private_redis_server, tmp_path
) -> None:
    # Two nodes on one Redis store, their clocks stopped: a key each has verified stays
    # trusted from its cache until cache_ttl, unless the revocation is announced.
    top = redis_auth_top(private_redis_server.url, tmp_path)
    one = await start_gateway(routes(upstream_url), top=top, clock=ManualClock())
    two = await start_gateway(routes(upstream_url), top=top, clock=ManualClock())
    urls = [one.url, two.url]
    by_cli, by_node = await new_key(one), await new_key(one)
    for key in (by_cli, by_node):
        assert await _statuses_until(http, urls, key.key, 200) == [200, 200]

    # The CLI's way: the store itself, from outside any gateway.
    store = RedisCredentialStore(private_redis_server.url)
    async with store:
        assert await store.revoke_api_key(by_cli.record.key_id, 1.0)
    assert await _statuses_until(http, urls, by_cli.key, 401) == [401, 401]

    # Through one node's own store: the other hears of it too.
    auth = one.gateway.auth
    assert await auth.store.revoke_api_key(by_node.record.key_id, 1.0)
    assert await _statuses_until(http, urls, by_node.key, 401) == [401, 401]


async def test_a_node_that_lost_the_announcements_reads_its_keys_again(
    start_gateway, upstream_url, http, private_redis_server, tmp_path
) -> None:
    top = redis_auth_top(private_redis_server.url, tmp_path)
    gw = await start_gateway(routes(upstream_url), top=top, clock=ManualClock())
    key = await new_key(gw)
    assert await _statuses_until(http, [gw.url], key.key, 200) == [200]
    listener = gw.gateway.auth.key_changes
    assert listener is not None
    # Redis restarts, empty (it keeps nothing on disk here): whatever was announced
    # meanwhile is lost, so once the channel is back the node forgets its cached keys
    # and asks the store again, which no longer knows this one.
    await private_redis_server.astop()
    await private_redis_server.astart()
    assert await _statuses_until(http, [gw.url], key.key, 401) == [401]


async def test_a_revocation_during_a_store_read_is_not_undone_by_it(
    start_gateway, upstream_url, http, tmp_path
) -> None:
    gw = await start_gateway(routes(upstream_url), top=auth_top(tmp_path), clock=ManualClock())
    created = await new_key(gw)
    auth = gw.gateway.auth
    store, verifier = auth.store, auth.api_keys
    # The real store's read, held until the revocation has happened.
    release = asyncio.Event()
    read = store.get_api_key

    async def held_read(key_id: str):
        record = await read(key_id)
        await release.wait()
        return record

    store.get_api_key = held_read
    request = asyncio.ensure_future(http.get(f"{gw.url}/k/1", headers={"X-API-Key": created.key}))
    await asyncio.sleep(0.1)  # the request is waiting in the store read
    assert await store.revoke_api_key(created.record.key_id, 1.0)
    verifier.invalidate(created.record.key_id)  # as the admin API does
    release.set()
    async with await request as response:
        assert response.status == 200  # read before the revocation: answered once...
    store.get_api_key = read
    # ...but not kept: the next request reads the store again and is refused.
    async with http.get(f"{gw.url}/k/1", headers={"X-API-Key": created.key}) as response:
        assert response.status == 401
