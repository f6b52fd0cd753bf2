"""Path normalisation as a client meets it: no encoding reaches a route it should not."""

from __future__ import annotations

import orjson
import pytest
from aiohttp import web

from tests.conftest import raw_request

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def gateway_with_public_and_admin(aiohttp_server, start_gateway):
    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.raw_path)

    app = web.Application()
    app.router.add_get("/{tail:.*}", echo)
    upstream = await aiohttp_server(app)
    url = str(upstream.make_url("")).rstrip("/")
    return await start_gateway(
        f"""
        routes:
          - path: /public/{{file}}
            proxy: {{url: '{url}'}}
          - path: /v1/users/{{id}}
            proxy: {{url: '{url}'}}
        """
    )


async def get(port: int, target: bytes):
    return await raw_request(
        port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("target", "upstream_path"),
    [
        (b"/public/../v1/users/7", "/v1/users/7"),
        (b"/public/%2e%2e/v1/users/7", "/v1/users/7"),
        (b"/public/%2E%2e/%2e/v1/users/7", "/v1/users/7"),
        (b"//v1///users/7", "/v1/users/7"),
        (b"/v1/%75sers/7", "/v1/users/7"),
        (b"/../../../public/a.txt", "/public/a.txt"),
    ],
)
async def test_normalised_before_matching_and_forwarding(
    gateway_with_public_and_admin, target: bytes, upstream_path: str
) -> None:
    response = await get(gateway_with_public_and_admin.port, target)
    assert response.status == 200
    assert response.body.decode() == upstream_path


@pytest.mark.parametrize(
    "target",
    [
        b"/public/..%2fv1%2fusers%2f7",
        b"/public/a%2Fb",
        b"/public/a%5cb",
        b"/public/%00",
        b"/public/%zz",
    ],
)
async def test_encoded_separators_are_refused(gateway_with_public_and_admin, target: bytes) -> None:
    response = await get(gateway_with_public_and_admin.port, target)
    assert response.status == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert orjson.loads(response.body)["status"] == 400


async def test_unknown_path_after_normalisation_is_404(gateway_with_public_and_admin) -> None:
    response = await get(gateway_with_public_and_admin.port, b"/public/%2e%2e/admin")
    assert response.status == 404
    assert orjson.loads(response.body)["detail"] == "no route for /admin"
