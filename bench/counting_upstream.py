"""A users service that counts the requests it answers: the TTL check's upstream.

``GET /users/{id}`` answers a small JSON user (no Cache-Control, no ETag: the gateway's
route ``ttl`` decides freshness) and counts; ``GET /count`` answers ``{"requests": N}``
and is not counted. The harness reads the count before and after its open loop.

    python -m bench.counting_upstream --port 9101
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import uvloop
from aiohttp import web

_COUNT = web.AppKey("count", list[int])


async def _user(request: web.Request) -> web.Response:
    request.app[_COUNT][0] += 1
    user_id = request.match_info["id"]
    return web.json_response({"id": user_id, "name": f"user {user_id}", "tier": "free"})


async def _count(request: web.Request) -> web.Response:
    return web.json_response({"requests": request.app[_COUNT][0]})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.counting_upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = web.Application()
    app[_COUNT] = [0]
    app.add_routes([web.get("/users/{id}", _user), web.get("/count", _count)])
    uvloop.install()
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
