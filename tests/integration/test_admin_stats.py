"""GET /admin/stats and the dashboard page over real HTTP: known traffic in, counts out."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
from aiohttp import web

from gateway.admin.figures import quantile, window_figures
from gateway.demo import admin_lines
from gateway.metrics.histogram import SECONDS_BUCKETS
from tests.integration.test_metrics import get_status, json_reply, serve

pytestmark = pytest.mark.timeout(30)

TOKEN = "test-stats-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def admin_top(tmp_path: Path, extra: str = "") -> str:
    (tmp_path / "admin-token").write_text(TOKEN + "\n")
    return textwrap.dedent(f"""
    auth:
      sqlite_path: {tmp_path / "credentials.db"}
      pepper_file: {tmp_path / "pepper.json"}
    admin:
      enabled: true
      listen: {{host: 127.0.0.1, port: 0}}
      token_env: GATEWAY_TEST_STATS_TOKEN_NEVER_SET
      token_file: {tmp_path / "admin-token"}
    """) + textwrap.dedent(extra)


async def get_stats(http: aiohttp.ClientSession, admin_port: int) -> dict[str, Any]:
    async with http.get(f"http://127.0.0.1:{admin_port}/admin/stats", headers=AUTH) as response:
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        body: dict[str, Any] = await response.json()
        return body


def by_name(items: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {item["name"]: item for item in items}


async def test_stats_need_the_token_and_the_page_does_not(
    start_gateway: Any, http: aiohttp.ClientSession, aiohttp_server: Any, tmp_path: Path
) -> None:
    url = await serve(aiohttp_server, json_reply({}))
    gw = await start_gateway(
        f"routes:\n  - {{name: one, path: /one, proxy: {{url: '{url}', timeout: 2s}}}}\n",
        top=admin_top(tmp_path),
    )
    base = f"http://127.0.0.1:{gw.gateway.admin_port}"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        async with http.get(base + "/admin/stats", headers=headers) as response:
            assert response.status == 401
            assert response.content_type == "application/problem+json"

    async with http.get(base + "/") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
        answer_headers = response.headers
    policy = answer_headers["Content-Security-Policy"]
    # One script and one style sheet, each allowed by its hash; fetches to this origin.
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+'", policy)
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert answer_headers["Cache-Control"] == "no-store"
    assert answer_headers["Referrer-Policy"] == "no-referrer"
    # Self-contained: nothing loaded from anywhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page
    assert page.count("<script>") == 1
    assert 'fetch("admin/stats"' in page
    # The page holds no data: not the token, not a route name.
    assert TOKEN not in page
    assert '"one"' not in page


async def test_figures_after_known_traffic(
    start_gateway: Any, http: aiohttp.ClientSession, aiohttp_server: Any, tmp_path: Path
) -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="no")

    fast = await serve(aiohttp_server, json_reply({"id": 1}))
    slow = await serve(aiohttp_server, json_reply({"late": True}, delay=2.0))
    bad = await serve(aiohttp_server, broken)
    gw = await start_gateway(
        f"""
        routes:
          - name: dash
            path: /dash/{{id}}
            fanout:
              budget: 100ms
              backends:
                user: {{url: '{fast}/u/{{id}}', required: true}}
                slow: {{url: '{slow}/s'}}
                broken: {{url: '{bad}/b'}}
          - name: cached
            path: /c/{{id}}
            cache: {{ttl: 60s}}
            proxy: {{url: '{fast}'}}
          - name: limited
            path: /l
            rate_limit: {{by: ip}}
            proxy: {{url: '{fast}', timeout: 3s}}
          - name: catalog-v1
            path: /catalog
            api: catalog
            version: "1"
            cache: {{ttl: 60s}}
            proxy: {{url: '{fast}'}}
          - name: catalog-v2
            path: /catalog
            api: catalog
            version: "2"
            cache: {{ttl: 60s}}
            proxy: {{url: '{fast}'}}
        """,
        top=admin_top(
            tmp_path,
            """
            cache: {}
            rate_limits: {plans: {free: {rate: 1/minute, burst: 3}}}
            apis:
              catalog:
                strategy: header
                header: API-Version
                default: "2"
                versions: {"1": {}, "2": {}}
            """,
        ),
    )
    port = gw.gateway.admin_port
    assert port is not None
    before = await get_stats(http, port)
    assert before["buckets"] == list(SECONDS_BUCKETS)
    assert before["metrics"] is True
    # Every routed name, in config order: the versioned API's versions, then its
    # dispatcher (for the requests no version took).
    assert [route["name"] for route in before["routes"]] == [
        "dash",
        "cached",
        "limited",
        "catalog-v1",
        "catalog-v2",
        "catalog:catalog-v1|catalog-v2",
    ]
    assert all(route["requests"] == 0 for route in before["routes"])

    for i in range(10):
        assert await get_status(http, f"{gw.url}/dash/{i}") == 200
    for path in ["/c/1", "/c/1", "/c/1", "/c/2"]:
        assert await get_status(http, gw.url + path) == 200
    assert [await get_status(http, f"{gw.url}/l") for _ in range(5)] == [200] * 3 + [429] * 2
    for version in ("1", "1", "2", "9"):
        async with http.get(f"{gw.url}/catalog", headers={"API-Version": version}) as response:
            assert response.status == (404 if version == "9" else 200)

    after = await get_stats(http, port)
    seconds = after["monotonic"] - before["monotonic"]
    assert seconds > 0
    routes = by_name(after["routes"])

    dash = routes["dash"]
    assert dash["kind"] == "fanout"
    assert dash["budget_ms"] == 100.0
    assert dash["requests"] == 10
    assert sum(dash["duration"]) == 10
    assert len(dash["duration"]) == len(SECONDS_BUCKETS) + 1
    assert dash["statuses"] == {"2xx": 10}
    # Two parts missing from each answer: ten partial answers, not twenty.
    assert dash["partial"] == 10
    backends = by_name(dash["backends"])
    assert set(backends) == {"user", "slow", "broken"}
    assert backends["slow"]["calls"] == 10
    assert backends["slow"]["outcomes"] == {"timeout": 10}
    assert backends["broken"]["outcomes"] == {"error": 10}
    assert backends["user"]["outcomes"] == {"ok": 10}
    # Every answer waited out the 100 ms budget, so its p99 is at it or a little past.
    p99 = quantile(0.99, after["buckets"], dash["duration"])
    assert p99 is not None
    assert 0.1 <= p99 <= 0.15

    cached = routes["cached"]
    assert cached["kind"] == "proxy"
    assert cached["cache"] == {"miss": 2, "hit": 2}
    assert by_name(cached["backends"])["upstream"]["calls"] == 2

    limited = routes["limited"]
    assert limited["budget_ms"] == 3000.0
    assert limited["rate_limit"] == {"admitted": 3, "refused": 2}
    assert limited["statuses"] == {"2xx": 3, "4xx": 2}

    # Each version's requests and cache counts under its own name; the version nobody
    # serves under the dispatcher's.
    assert (routes["catalog-v1"]["requests"], routes["catalog-v1"]["cache"]) == (
        2,
        {"miss": 1, "hit": 1},
    )
    assert (routes["catalog-v2"]["requests"], routes["catalog-v2"]["cache"]) == (1, {"miss": 1})
    dispatcher = routes["catalog:catalog-v1|catalog-v2"]
    assert (dispatcher["requests"], dispatcher["statuses"]) == (1, {"4xx": 1})

    # The window between the two answers, as the page computes it.
    figures = {route["name"]: route for route in window_figures(before, after)}
    assert figures["dash"]["rate"] == 10 / seconds
    assert figures["dash"]["partial_share"] == 1.0
    assert by_name(figures["dash"]["backends"])["slow"]["timeout_share"] == 1.0
    assert by_name(figures["dash"]["backends"])["user"]["timeout_share"] == 0.0
    assert figures["cached"]["cache_hit_ratio"] == 0.5
    assert figures["limited"]["refusals"] == 2 / seconds
    assert figures["limited"]["partial_share"] == 0.0


async def test_with_metrics_off_the_routes_are_there_without_request_figures(
    start_gateway: Any, http: aiohttp.ClientSession, aiohttp_server: Any, tmp_path: Path
) -> None:
    url = await serve(aiohttp_server, json_reply({}))
    gw = await start_gateway(
        f"routes:\n  - {{name: one, path: /one, proxy: {{url: '{url}'}}}}\n",
        top=admin_top(tmp_path, "metrics: {enabled: false}\n"),
    )
    assert await get_status(http, gw.url + "/one") == 200
    port = gw.gateway.admin_port
    assert port is not None
    stats = await get_stats(http, port)
    assert stats["metrics"] is False
    (one,) = stats["routes"]
    assert one["name"] == "one"
    assert one["requests"] == 0
    assert one["backends"] == []


async def test_the_demo_banner_links_the_dashboard_with_the_token(
    start_gateway: Any,
    http: aiohttp.ClientSession,
    aiohttp_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A token from the environment may hold characters a fragment must encode.
    token = "a+b&c=d e"
    monkeypatch.setenv("GATEWAY_TEST_STATS_TOKEN_NEVER_SET", token)
    url = await serve(aiohttp_server, json_reply({}))
    gw = await start_gateway(
        f"routes:\n  - {{name: one, path: /one, proxy: {{url: '{url}'}}}}\n",
        top=admin_top(tmp_path),
    )
    lines = admin_lines(gw.gateway, gw.config_dir)
    (link,) = [line.strip() for line in lines if "#token=" in line]
    page, _, fragment = link.partition("#")
    assert page == f"http://127.0.0.1:{gw.gateway.admin_port}/"
    # Read back as the page's URLSearchParams reads it.
    assert parse_qs(fragment)["token"] == [token]
    assert any(f"Bearer {token}' http://127.0.0.1:" in line for line in lines)
    async with http.get(
        f"{page}admin/stats", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 200
