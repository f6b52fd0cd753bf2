"""``bench.pycost``: Python instructions per request, the same on every run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from bench.pycost import VARIANTS, count_variant


async def _user(request: web.Request) -> web.Response:
    return web.json_response({"id": request.match_info["id"]})


async def test_counts_repeat_exactly_and_show_what_a_rate_limit_adds(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    app = web.Application()
    app.router.add_get("/users/{id}", _user)
    server = await aiohttp_server(app)
    upstream = str(server.make_url("")).rstrip("/")

    async def count(key: str, run: int) -> float:
        folder = tmp_path / f"{key}{run}"
        folder.mkdir()
        return await count_variant(folder, upstream, VARIANTS[key][1], requests=30)

    first, second = await count("d", 1), await count("d", 2)
    assert first > 1000  # a proxied request is thousands of instructions
    assert first == second
    limited = await count("i", 1)
    # The limiter's policy, its store's step and its two headers: a few hundred.
    assert 100 < limited - first < 1000
