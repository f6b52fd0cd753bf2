"""API versions over real HTTP: by URI, header and media type, and their lifecycle."""

from __future__ import annotations

import orjson
import pytest
from aiohttp import web

from gateway.config import ConfigError, load_config
from gateway.context import ManualClock
from tests.conftest import write_gateway_config

pytestmark = pytest.mark.timeout(30)

# 2026-01-01 and 2027-01-01, 00:00 UTC.
DEPRECATED, SUNSET = 1767225600, 1798761600


@pytest.fixture
async def upstream_url(aiohttp_server):
    async def which(request: web.Request) -> web.Response:
        return web.json_response({"served_by": request.path})

    app = web.Application()
    app.router.add_get("/{tail:.*}", which)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


def config(url: str, strategy: str) -> tuple[str, str]:
    top = f"""
    apis:
      orders:
        strategy: {strategy}
        media_type: application/vnd.acme
        default: "2"
        versions:
          "1": {{deprecated: 2026-01-01, sunset: 2027-01-01, link: "https://docs.example/v1",
                gone_after_sunset: true}}
          "2": {{}}
    """
    if strategy == "uri":
        routes = f"""
    routes:
      - {{path: /v1/orders, api: orders, version: "1", proxy: {{url: '{url}', path: /one}}}}
      - {{path: /v2/orders, api: orders, version: "2", proxy: {{url: '{url}', path: /two}}}}
    """
    else:
        routes = f"""
    routes:
      - {{path: /orders, api: orders, version: "1", proxy: {{url: '{url}', path: /one}}}}
      - {{path: /orders, api: orders, version: "2", proxy: {{url: '{url}', path: /two}}}}
    """
    return routes, top


async def served(http, url: str, headers: dict[str, str] | None = None):
    async with http.get(url, headers=headers or {}) as response:
        body = orjson.loads(await response.read())
        return response.status, body, response.headers


async def test_uri_versions(start_gateway, upstream_url, http) -> None:
    routes, top = config(upstream_url, "uri")
    gw = await start_gateway(routes, top=top, clock=ManualClock(wall=DEPRECATED + 10))
    status, body, headers = await served(http, f"{gw.url}/v1/orders")
    assert (status, body["served_by"]) == (200, "/one")
    assert headers["Deprecation"] == f"@{DEPRECATED}"
    assert headers["Sunset"] == "Fri, 01 Jan 2027 00:00:00 GMT"
    assert headers["Link"] == '<https://docs.example/v1>; rel="deprecation"'
    status, body, headers = await served(http, f"{gw.url}/v2/orders")
    assert (status, body["served_by"]) == (200, "/two")
    assert "Deprecation" not in headers
    status, _, _ = await served(http, f"{gw.url}/v3/orders")
    assert status == 404


async def test_header_versions(start_gateway, upstream_url, http) -> None:
    routes, top = config(upstream_url, "header")
    gw = await start_gateway(routes, top=top)
    assert (await served(http, f"{gw.url}/orders", {"API-Version": "1"}))[1]["served_by"] == "/one"
    assert (await served(http, f"{gw.url}/orders", {"API-Version": "2"}))[1]["served_by"] == "/two"
    assert (await served(http, f"{gw.url}/orders"))[1]["served_by"] == "/two"  # the default
    status, body, _ = await served(http, f"{gw.url}/orders", {"API-Version": "9"})
    assert status == 404
    status, body, _ = await served(http, f"{gw.url}/orders", {"API-Version": "two please"})
    assert status == 400
    assert "API-Version" in body["detail"]


async def test_media_type_versions(start_gateway, upstream_url, http) -> None:
    routes, top = config(upstream_url, "media_type")
    gw = await start_gateway(routes, top=top)
    v1 = {"Accept": "application/vnd.acme.v1+json"}
    assert (await served(http, f"{gw.url}/orders", v1))[1]["served_by"] == "/one"
    both = {"Accept": "application/vnd.acme.v3+json, application/vnd.acme.v2+json;q=0.5"}
    assert (await served(http, f"{gw.url}/orders", both))[1]["served_by"] == "/two"
    assert (await served(http, f"{gw.url}/orders", {"Accept": "*/*"}))[1]["served_by"] == "/two"
    status, body, _ = await served(
        http, f"{gw.url}/orders", {"Accept": "application/vnd.acme.v7+json"}
    )
    assert status == 406
    assert "application/vnd.acme.v2+json" in body["detail"]  # what is served


async def test_after_the_sunset_a_version_is_gone(start_gateway, upstream_url, http) -> None:
    routes, top = config(upstream_url, "header")
    clock = ManualClock(wall=SUNSET - 60)
    gw = await start_gateway(routes, top=top, clock=clock)
    assert (await served(http, f"{gw.url}/orders", {"API-Version": "1"}))[0] == 200
    clock.advance(61)
    status, body, headers = await served(http, f"{gw.url}/orders", {"API-Version": "1"})
    assert status == 410
    assert body["status"] == 410
    assert headers["Sunset"] == "Fri, 01 Jan 2027 00:00:00 GMT"
    assert (await served(http, f"{gw.url}/orders", {"API-Version": "2"}))[0] == 200


def test_unknown_api_or_version_is_a_config_error(tmp_path) -> None:
    routes, top = config("http://127.0.0.1:9", "header")
    main = write_gateway_config(tmp_path, routes.replace('version: "2"', 'version: "3"'), top=top)
    with pytest.raises(ConfigError) as caught:
        load_config(main)
    assert [issue.key_path for issue in caught.value.issues] == ["routes[1].version"]
    assert "no version '3'" in caught.value.issues[0].message


async def test_the_deprecation_link_is_added_beside_the_upstreams_links(
    start_gateway, aiohttp_server, http
) -> None:
    async def paged(request: web.Request) -> web.Response:
        return web.json_response([], headers={"Link": '</one?page=2>; rel="next"'})

    app = web.Application()
    app.router.add_get("/one", paged)
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    routes, top = config(url, "uri")
    gw = await start_gateway(routes, top=top, clock=ManualClock(wall=DEPRECATED + 10))
    async with http.get(f"{gw.url}/v1/orders") as response:
        assert response.status == 200
        assert response.headers.getall("Link") == [
            '</one?page=2>; rel="next"',
            '<https://docs.example/v1>; rel="deprecation"',
        ]
        assert response.headers["Deprecation"] == f"@{DEPRECATED}"


async def test_unnamed_versions_on_one_path_are_recorded_and_logged_apart(
    start_gateway, upstream_url, http
) -> None:
    routes, top = config(upstream_url, "header")
    gw = await start_gateway(routes, top=top)
    for version in ("1", "2", "2"):
        async with http.get(f"{gw.url}/orders", headers={"API-Version": version}) as response:
            assert response.status == 200
    counts = {
        recorder.name: sum(h.count for h in recorder.requests.values())
        for recorder in gw.gateway.recorders
    }
    assert counts["GET /orders v1"] == 1
    assert counts["GET /orders v2"] == 2
    # The dispatcher only for the requests no version took.
    assert counts.get("orders:GET /orders v1|GET /orders v2", 0) == 0
