"""The baseline: the pass-through reverse proxy you would write in 30 lines of aiohttp.

Deliberately plain but not deliberately slow: uvloop, one ``ClientSession`` with
keep-alive for the whole process, no access log (the gateway is measured with its own
off too), and bodies read whole. It does none of the gateway's work (routing, budgets,
request ids, Server-Timing, X-Forwarded-For, limits), so the gap between the two is the
price of those features plus whatever the gateway could do faster.

    python -m bench.baseline_proxy --port 8081 --upstream http://127.0.0.1:9101
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict

# RFC 9110 7.6.1 hop-by-hop fields, plus the framing ones aiohttp sets itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
_NOT_FORWARDED = _HOP_BY_HOP | {"host"}  # aiohttp sets Host from the upstream URL
_SESSION = web.AppKey("session", aiohttp.ClientSession)
_UPSTREAM = web.AppKey("upstream", str)


async def _proxy(request: web.Request) -> web.Response:
    headers = CIMultiDict(
        (k, v) for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED
    )
    body = await request.read()
    async with request.app[_SESSION].request(
        request.method,
        request.app[_UPSTREAM] + request.path_qs,
        headers=headers,
        data=body or None,
        allow_redirects=False,
    ) as upstream:
        data = await upstream.read()
        out = CIMultiDict(
            (k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
        )
        return web.Response(status=upstream.status, headers=out, body=data)


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[_UPSTREAM] = upstream.rstrip("/")

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[_SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        yield
        await app[_SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", _proxy)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_proxy", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="origin, e.g. http://127.0.0.1:9101")
    args = parser.parse_args(argv)
    web.run_app(
        make_app(args.upstream),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        shutdown_timeout=2.0,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
