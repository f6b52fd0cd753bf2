"""The ``gateway`` command as a user runs it: signals, reload, drain, the shipped config."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from examples.services import DEFAULT_PORTS, start_services
from gateway.config import load_config
from gateway.demo import demo_credentials
from gateway.server import Gateway
from tests.conftest import run_cli, spawn_gateway, status_within, stop, write_gateway_config

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


def slow_app(delay: float) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(text="finished")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


async def test_sighup_reloads(aiohttp_server, tmp_path, http) -> None:
    upstream = await aiohttp_server(slow_app(0))
    url = str(upstream.make_url("")).rstrip("/")
    config = write_gateway_config(
        tmp_path, f"routes:\n  - path: /a\n    proxy: {{url: '{url}'}}\n", server="watch: false"
    )
    process, port = await spawn_gateway(config)
    try:
        (tmp_path / "routes.yaml").write_text(
            f"routes:\n  - path: /a\n    proxy: {{url: '{url}'}}\n"
            f"  - path: /b\n    proxy: {{url: '{url}'}}\n"
        )
        async with http.get(f"http://127.0.0.1:{port}/b") as response:
            assert response.status == 404  # no watcher: nothing changes until SIGHUP
        process.send_signal(signal.SIGHUP)
        assert await status_within(http, f"http://127.0.0.1:{port}/b", 200) == 200
    finally:
        assert await stop(process) == 0


async def test_sigterm_drains_in_flight_requests(aiohttp_server, tmp_path, http) -> None:
    upstream = await aiohttp_server(slow_app(0.5))
    url = str(upstream.make_url("")).rstrip("/")
    config = write_gateway_config(
        tmp_path, f"routes:\n  - path: /slow\n    proxy: {{url: '{url}'}}\n"
    )
    process, port = await spawn_gateway(config)

    async def fetch() -> tuple[int, str]:
        async with http.get(f"http://127.0.0.1:{port}/slow") as response:
            return response.status, await response.text()

    in_flight = asyncio.create_task(fetch())
    await asyncio.sleep(0.15)
    process.send_signal(signal.SIGTERM)
    assert await in_flight == (200, "finished")
    assert await asyncio.wait_for(process.wait(), 20) == 0
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_bad_config_exits_1_naming_the_line(tmp_path) -> None:
    config = write_gateway_config(
        tmp_path, "routes:\n  - path: /a\n    proxy: {url: 'http://x', timeout: 5}\n"
    )
    process = await run_cli("run", "-c", str(config))
    _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 1
    assert "routes.yaml:3: routes[0].proxy.timeout: not a duration: 5" in err.decode()


async def test_shipped_demo_config_serves_the_sample_services(tmp_path, http) -> None:
    group = await start_services("127.0.0.1", {kind: 0 for kind in DEFAULT_PORTS})
    try:
        routes = (ROOT / "config" / "routes.yaml").read_text()
        for kind, port in DEFAULT_PORTS.items():
            routes = routes.replace(f":{port}", f":{group.ports[kind]}")
        main = (ROOT / "config" / "gateway.yaml").read_text()
        main = (
            main.replace("port: 8080", "port: 0")
            .replace("port: 8081", "port: 0")
            .replace("access_log: stdout", "access_log: 'off'")
            .replace("../var/", "var/")
        )
        (tmp_path / "gateway.yaml").write_text(main)
        (tmp_path / "routes.yaml").write_text(routes)
        gateway = Gateway(load_config(tmp_path / "gateway.yaml"))
        await gateway.start()
        base = f"http://127.0.0.1:{gateway.port}"
        try:
            async with http.get(f"{base}/v1/users/42") as response:
                assert response.status == 200
                assert (await response.json())["id"] == "42"
            async with http.get(f"{base}/v1/dashboard/42") as response:
                assert response.status == 200
                body = await response.json()
                assert set(body) == {
                    "user",
                    "orders",
                    "recommendations",
                    "inventory",
                    "notifications",
                }
            async with http.get(f"{base}/v1/dashboard-slow/42") as response:
                assert response.status == 200
                assert response.headers["Gateway-Partial"] == "recommendations;reason=timeout"
            # The demo's credentials work on its authenticated routes.
            credentials = await demo_credentials(gateway)
            assert credentials is not None
            key, client_id, secret = credentials
            async with http.get(f"{base}/v1/orders/ord_1", headers={"X-API-Key": key}) as response:
                assert response.status == 200
            async with http.get(f"{base}/v1/orders/ord_1") as response:
                assert response.status == 401
            # The cached user route, and the write that invalidates it.
            async with http.get(f"{base}/v1/users/7") as response:
                assert response.headers["Cache-Status"] == "gateway; fwd=miss; stored"
            async with http.get(f"{base}/v1/users/7") as response:
                assert response.headers["Cache-Status"].startswith("gateway; hit")
            async with http.put(
                f"{base}/v1/users/7", json={"tier": "gold"}, headers={"X-API-Key": key}
            ) as response:
                assert response.status == 200
                assert (await response.json())["tier"] == "gold"
            async with http.get(f"{base}/v1/users/7") as response:
                assert response.headers["Cache-Status"] == "gateway; fwd=miss; stored"
            # The idempotent POST with a schema, and the versioned catalog.
            order = {"sku": "HOME-1", "quantity": 2}
            idempotent = {"X-API-Key": key, "Idempotency-Key": '"demo-1"'}
            async with http.post(f"{base}/v1/orders", json=order, headers=idempotent) as response:
                assert response.status == 201
            async with http.post(f"{base}/v1/orders", json=order, headers=idempotent) as response:
                assert response.headers["Idempotent-Replayed"] == "true"
            async with http.post(
                f"{base}/v1/orders",
                json={"sku": ""},
                headers={**idempotent, "Idempotency-Key": '"d2"'},
            ) as response:
                assert response.status == 422
            async with http.get(f"{base}/catalog/SKU-1", headers={"API-Version": "1"}) as response:
                assert response.status == 200
                assert response.headers["Deprecation"].startswith("@")
            async with http.get(f"{base}/catalog/SKU-1") as response:
                assert response.status == 200
                assert "Deprecation" not in response.headers
            async with http.post(
                f"{base}/oauth/token",
                data={"grant_type": "client_credentials"},
                headers={"Authorization": aiohttp.encode_basic_auth(client_id, secret)},
            ) as response:
                token = (await response.json())["access_token"]
            async with http.get(
                f"{base}/v1/account/42", headers={"Authorization": f"Bearer {token}"}
            ) as response:
                assert response.status == 200
        finally:
            await gateway.stop()
    finally:
        await group.close()


async def test_an_empty_admin_token_file_stops_the_start_plainly(tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text("\n")
    config = write_gateway_config(
        tmp_path,
        "routes: []\n",
        top=f"""
        auth:
          sqlite_path: {tmp_path / "credentials.db"}
          pepper_file: {tmp_path / "pepper.json"}
        admin:
          enabled: true
          listen: {{host: 127.0.0.1, port: 0}}
          token_env: GATEWAY_TEST_TOKEN_NEVER_SET
          token_file: {tmp_path / "admin-token"}
        """,
    )
    process = await run_cli("run", "-c", str(config))
    assert process.stderr is not None
    stderr = (await asyncio.wait_for(process.stderr.read(), 20)).decode()
    assert await process.wait() == 1
    assert "cannot start" in stderr, stderr
    assert "is empty" in stderr, stderr
    assert "Traceback" not in stderr
    assert "listening on" not in stderr
