"""The response cache over real HTTP (RFC 9111): hits, freshness, revalidation, stale
responses, scopes, Vary, coalescing, invalidation, per-request headers, admin purge.

Every upstream is a real aiohttp server that records the requests it gets, so "served
from the cache" is checked by the upstream's call count, not by the gateway's word.
Freshness runs on a ManualClock: the cache reads ``clock.wall()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.context import ManualClock
from gateway.policies.auth import manage

pytestmark = pytest.mark.timeout(30)

Reply = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- helpers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    method: str
    path_qs: str
    headers: CIMultiDictProxy[str]


class Upstream:
    """An upstream that records every request; ``reply`` decides the answer (default: a
    200 whose body names the call, with ``headers``)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.headers: dict[str, str] = {}
        self.reply: Reply | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.path_qs, request.headers))
        if self.reply is not None:
            return await self.reply(request)
        return web.Response(text=f"call {len(self.seen)}", headers=self.headers)

    def calls(self, method: str = "GET", path: str | None = None) -> int:
        return sum(
            1
            for seen in self.seen
            if seen.method == method and (path is None or seen.path_qs == path)
        )


@pytest.fixture
async def upstream(aiohttp_server: Any) -> Upstream:
    up = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", up.handle)
    server = await aiohttp_server(app)
    up.url = str(server.make_url("")).rstrip("/")
    return up


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@dataclass(frozen=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def cache_status(self) -> str:
        return self.headers.get("Cache-Status", "")

    @property
    def hit(self) -> bool:
        return self.cache_status.startswith("gateway; hit")

    @property
    def text(self) -> str:
        return self.body.decode()


async def fetch(
    http: aiohttp.ClientSession,
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> Answer:
    async with http.request(method, url, headers=headers or {}) as response:
        return Answer(response.status, response.headers, await response.read())


def item_routes(url: str, cache: str = "{ttl: 60s}", more: str = "") -> str:
    """One cached route, ``/v1/items/{id}`` -> upstream ``/items/{id}``."""
    return f"""
    routes:
      - path: /v1/items/{{id}}
        methods: [GET, PUT, POST, DELETE]
        cache: {cache}
        proxy: {{url: '{url}', path: '/items/{{id}}'}}
{more}
    """


async def items_gateway(
    start_gateway: Any,
    upstream: Upstream,
    clock: ManualClock,
    cache: str = "{ttl: 60s}",
    more: str = "",
    top: str = "",
) -> Any:
    return await start_gateway(item_routes(upstream.url, cache, more), top=top, clock=clock)


def auth_top(tmp_path: Path, extra: str = "") -> str:
    return f"""
    auth:
      sqlite_path: {tmp_path / "credentials.db"}
      pepper_file: {tmp_path / "pepper.json"}
    {extra}
    """


async def api_key(gw: Any, consumer_id: str) -> str:
    auth = gw.gateway.auth
    created = await manage.create_api_key(
        auth.store, auth.peppers, gw.gateway.clock, consumer_id=consumer_id
    )
    return str(created.key)


def etag_reply(state: dict[str, Any], cache_control: str = "max-age=10") -> Reply:
    """200 with ``ETag: "v<version>"``, or 304 when ``If-None-Match`` names it;
    ``state["status"]`` other than 200 answers that status instead."""

    async def reply(request: web.Request) -> web.StreamResponse:
        if state.get("gate") is not None:
            await state["gate"].wait()
        status = state.get("status", 200)
        if status != 200:
            return web.Response(status=status, text="upstream trouble")
        tag = f'"v{state["version"]}"'
        headers = {"ETag": tag, "Cache-Control": state.get("cc", cache_control)}
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers=headers)
        return web.Response(text=f"version {state['version']}", headers=headers)

    return reply


# -- hits and freshness ------------------------------------------------------------------


async def test_a_miss_then_hits_whose_age_grows(start_gateway, upstream, clock, http) -> None:
    gw = await items_gateway(start_gateway, upstream, clock)
    url = f"{gw.url}/v1/items/1"
    first = await fetch(http, url)
    assert first.status == 200
    assert first.text == "call 1"
    assert first.cache_status == "gateway; fwd=miss; stored"
    assert "Age" not in first.headers

    second = await fetch(http, url)
    assert second.text == "call 1"
    assert second.cache_status == "gateway; hit; ttl=60"
    assert second.headers["Age"] == "0"
    assert second.headers["Content-Length"] == str(len(b"call 1"))

    clock.advance(15)
    third = await fetch(http, url)
    assert third.text == "call 1"
    assert third.cache_status == "gateway; hit; ttl=45"
    assert third.headers["Age"] == "15"
    clock.advance(44)
    assert (await fetch(http, url)).headers["Age"] == "59"
    assert upstream.calls() == 1

    clock.advance(1)  # 60 s old: stale, fetched again
    fourth = await fetch(http, url)
    assert fourth.text == "call 2"
    assert not fourth.hit
    assert upstream.calls() == 2
    # Another URL (or query) is another entry.
    assert (await fetch(http, f"{url}?a=1")).text == "call 3"
    assert (await fetch(http, f"{gw.url}/v1/items/2")).text == "call 4"
    assert (await fetch(http, f"{url}?a=1")).text == "call 3"


async def test_upstream_freshness_and_age_win_over_the_route_ttl(
    start_gateway, upstream, clock, http
) -> None:
    gw = await items_gateway(start_gateway, upstream, clock)
    upstream.headers = {"Cache-Control": "max-age=30", "Age": "10"}
    url = f"{gw.url}/v1/items/1"
    await fetch(http, url)
    hit = await fetch(http, url)
    assert hit.cache_status == "gateway; hit; ttl=20"
    assert hit.headers["Age"] == "10"
    clock.advance(19)
    assert (await fetch(http, url)).hit
    clock.advance(1)
    assert not (await fetch(http, url)).hit
    assert upstream.calls() == 2


async def test_without_a_ttl_only_what_the_upstream_makes_cacheable_is_stored(
    start_gateway, upstream, clock, http
) -> None:
    gw = await items_gateway(start_gateway, upstream, clock, cache="{}")
    url = f"{gw.url}/v1/items/1"
    assert (await fetch(http, url)).cache_status == "gateway; fwd=miss"
    assert (await fetch(http, url)).text == "call 2"
    upstream.headers = {"Cache-Control": "max-age=5"}
    assert (await fetch(http, f"{url}?x")).cache_status == "gateway; fwd=miss; stored"
    assert (await fetch(http, f"{url}?x")).cache_status == "gateway; hit; ttl=5"


async def test_an_invalid_expires_is_already_expired(start_gateway, upstream, clock, http) -> None:
    # RFC 9111 section 5.3: Expires: 0 (an invalid date) means "already expired",
    # not "no freshness information" (which would fall back to the route's ttl).
    gw = await items_gateway(start_gateway, upstream, clock)
    upstream.headers = {"Expires": "0"}
    url = f"{gw.url}/v1/items/1"
    await fetch(http, url)
    second = await fetch(http, url)
    assert not second.hit, second.cache_status
    assert upstream.calls() == 2


async def test_a_malformed_max_age_from_the_upstream_is_ignored(
    start_gateway, upstream, clock, http
) -> None:
    # "²".isdigit() is True, float("²") raises: the answer must not become a 500.
    gw = await items_gateway(start_gateway, upstream, clock)
    upstream.headers = {"Cache-Control": "max-age=\u00b2"}
    answer = await fetch(http, f"{gw.url}/v1/items/1")
    assert answer.status == 200, answer.body
    assert answer.text == "call 1"


async def test_responses_over_max_entry_size_are_not_stored(
    start_gateway, upstream, clock, http
) -> None:
    gw = await items_gateway(start_gateway, upstream, clock, top="cache: {max_entry_size: 1KiB}")
    big = "b" * 2000

    async def reply(request: web.Request) -> web.Response:
        text = big if request.path == "/items/big" else "small"
        return web.Response(text=text)

    upstream.reply = reply
    for _ in range(2):
        assert (await fetch(http, f"{gw.url}/v1/items/big")).text == big
        await fetch(http, f"{gw.url}/v1/items/small")
    assert upstream.calls(path="/items/big") == 2
    assert upstream.calls(path="/items/small") == 1


# -- revalidation --------------------------------------------------------------------------


async def test_expiry_revalidates_with_the_stored_etag_and_a_304_freshens(
    start_gateway, upstream, clock, http
) -> None:
    gw = await items_gateway(start_gateway, upstream, clock)
    state: dict[str, Any] = {"version": 1}
    upstream.reply = etag_reply(state)
    url = f"{gw.url}/v1/items/1"
    await fetch(http, url)
    assert "If-None-Match" not in upstream.seen[0].headers
    clock.advance(11)

    state["cc"] = "max-age=20"
    revalidated = await fetch(http, url)
    assert upstream.calls() == 2
    assert upstream.seen[1].headers["If-None-Match"] == '"v1"'
    assert revalidated.status == 200
    assert revalidated.text == "version 1"  # the body from the cache
    assert revalidated.cache_status == "gateway; fwd=stale; fwd-status=304"
    assert revalidated.headers["Age"] == "0"
    assert revalidated.headers["ETag"] == '"v1"'
    assert revalidated.headers["Cache-Control"] == "max-age=20"

    # The 304's max-age now rules the entry.
    clock.advance(15)
    hit = await fetch(http, url)
    assert hit.cache_status == "gateway; hit; ttl=5"
    assert hit.headers["Age"] == "15"
    assert upstream.calls() == 2


async def test_a_changed_representation_replaces_the_entry(
    start_gateway, upstream, clock, http
) -> None:
    gw = await items_gateway(start_gateway, upstream, clock)
    state: dict[str, Any] = {"version": 1}
    upstream.reply = etag_reply(state)
    url = f"{gw.url}/v1/items/1"
    await fetch(http, url)
    clock.advance(11)
    state["version"] = 2
    answer = await fetch(http, url)
    assert answer.text == "version 2"
    assert answer.cache_status == "gateway; fwd=stale; stored"
    hit = await fetch(http, url)
    assert hit.text == "version 2"
    assert hit.headers["ETag"] == '"v2"'
    assert hit.hit
    assert upstream.calls() == 2


async def test_a_304_that_changes_header_sizes_keeps_the_byte_count_exact(
    start_gateway, upstream, clock, http
) -> None:
    gw = await items_gateway(start_gateway, upstream, clock)
    store = gw.gateway.cache.store
    state: dict[str, Any] = {"version": 1, "cc": "max-age=1"}
    upstream.reply = etag_reply(state)
    url = f"{gw.url}/v1/items/1"
    await fetch(http, url)
    stored_bytes = store.bytes
    assert stored_bytes > 0
    clock.advance(2)
    state["cc"] = "max-age=1000"  # three characters longer
    assert (await fetch(http, url)).cache_status == "gateway; fwd=stale; fwd-status=304"
    assert len(store) == 1
    assert (await fetch(http, url, "PUT")).status == 200
    assert len(store) == 0
    assert store.bytes == 0


async def test_revalidation_keeps_repeated_headers(start_gateway, upstream, clock, http) -> None:
    gw = await items_gateway(start_gateway, upstream, clock)
    links = ['</a>; rel="preload"', '</b>; rel="preload"']

    async def reply(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers={"ETag": '"v1"', "Cache-Control": "max-age=10"})
        headers = CIMultiDict([("ETag", '"v1"'), ("Cache-Control", "max-age=10")])
        for link in links:
            headers.add("Link", link)
        return web.Response(text="body", headers=headers)

    upstream.reply = reply
    url = f"{gw.url}/v1/items/1"
    assert (await fetch(http, url)).headers.getall("Link") == links
    assert (await fetch(http, url)).headers.getall("Link") == links
    clock.advance(11)
    revalidated = await fetch(http, url)
    assert revalidated.cache_status == "gateway; fwd=stale; fwd-status=304"
    assert revalidated.headers.getall("Link") == links


@pytest.mark.parametrize(
    ("etag", "cache_control"),
    [
        ("ETag", "Cache-Control"),  # aiohttp's client reads this ETag back as "Etag"
        ("etag", "cache-control"),  # lower case: Node apps, HTTP/2 origins behind a proxy
    ],
)
async def test_a_304_duplicates_no_header(
    start_gateway, upstream, clock, http, etag, cache_control
) -> None:
    gw = await items_gateway(start_gateway, upstream, clock)

    async def reply(request: web.Request) -> web.Response:
        cc = "max-age=10" if "If-None-Match" not in request.headers else "max-age=20"
        headers = {etag: '"v1"', cache_control: cc}
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers=headers)
        return web.Response(text="body", headers=headers)

    upstream.reply = reply
    url = f"{gw.url}/v1/items/1"
    assert (await fetch(http, url)).headers.getall("ETag") == ['"v1"']
    clock.advance(11)
    revalidated = await fetch(http, url)
    assert revalidated.cache_status == "gateway; fwd=stale; fwd-status=304"
    assert revalidated.headers.getall("ETag") == ['"v1"']
    assert revalidated.headers.getall("Cache-Control") == ["max-age=20"]
    hit = await fetch(http, url)
    assert hit.hit
    assert hit.headers.getall("ETag") == ['"v1"']
    assert hit.headers.getall("Cache-Control") == ["max-age=20"]


async def test_no_cache_is_stored_but_revalidated_before_every_use(
    start_gateway, upstream, clock, http
) -> None:
    gw = await items_gateway(start_gateway, upstream, clock)  # the route's ttl is 60 s
    state: dict[str, Any] = {"version": 1}
    upstream.reply = etag_reply(state, cache_control="no-cache")
    url = f"{gw.url}/v1/items/1"
    first = await fetch(http, url)
    assert first.cache_status == "gateway; fwd=miss; stored"

    second = await fetch(http, url)
    assert upstream.calls() == 2
    assert upstream.seen[1].headers.get("If-None-Match") == '"v1"'
    assert second.text == "version 1"
    assert second.cache_status == "gateway; fwd=stale; fwd-status=304"

    state["version"] = 2
    third = await fetch(http, url)
    assert third.text == "version 2"  # never the stored one without asking
    assert upstream.calls() == 3


async def test_a_request_with_no_cache_goes_to_the_upstream(
    start_gateway, upstream, clock, http
) -> None:
    gw = await items_gateway(start_gateway, upstream, clock)
    url = f"{gw.url}/v1/items/1"
    await fetch(http, url)
    assert (await fetch(http, url)).hit
    fresh = await fetch(http, url, headers={"Cache-Control": "no-cache"})
    assert fresh.text == "call 2"
    assert not fresh.hit
    again = await fetch(http, url)
    assert again.text == "call 2"  # what the no-cache request fetched is stored
    assert again.hit


# -- what is not stored --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "request_headers"),
    [
        (200, {"Cache-Control": "no-store"}, {}),
        (200, {"Cache-Control": "no-store, max-age=60"}, {}),
        (200, {"Cache-Control": "private"}, {}),
        (200, {"Cache-Control": "private, max-age=60"}, {}),
        (200, {"Set-Cookie": "session=abc", "Cache-Control": "max-age=60"}, {}),
        (200, {}, {"Cache-Control": "no-store"}),
        (200, {"Vary": "*", "Cache-Control": "max-age=60"}, {}),
        (500, {}, {}),
        (502, {}, {}),
        (503, {}, {}),
        (201, {}, {}),
    ],
)
async def test_responses_that_must_not_be_stored(
    start_gateway, upstream, clock, http, status, headers, request_headers
) -> None:
    gw = await items_gateway(start_gateway, upstream, clock)

    async def reply(request: web.Request) -> web.Response:
        return web.Response(status=status, text=f"call {len(upstream.seen)}", headers=headers)

    upstream.reply = reply
    url = f"{gw.url}/v1/items/1"
    for n in (1, 2):
        answer = await fetch(http, url, headers=request_headers)
        assert answer.status == status
        assert answer.text == f"call {n}"
        assert answer.cache_status == "gateway; fwd=miss"
    assert len(gw.gateway.cache.store) == 0


async def test_a_partial_content_answer_is_never_served_as_the_whole(
    start_gateway, upstream, clock, http
) -> None:
    gw = await items_gateway(start_gateway, upstream, clock)

    async def reply(request: web.Request) -> web.Response:
        headers = {"Cache-Control": "max-age=60", "Accept-Ranges": "bytes"}
        if request.headers.get("Range") == "bytes=0-1":
            headers["Content-Range"] = "bytes 0-1/6"
            return web.Response(status=206, text="ab", headers=headers)
        return web.Response(text="abcdef", headers=headers)

    upstream.reply = reply
    url = f"{gw.url}/v1/items/1"
    part = await fetch(http, url, headers={"Range": "bytes=0-1"})
    assert part.status == 206
    assert part.text == "ab"
    whole = await fetch(http, url)
    assert whole.status == 200
    assert whole.text == "abcdef"


async def test_partial_fanout_answers_are_never_cached(
    start_gateway, upstream, clock, http
) -> None:
    extra = {"status": 500}

    async def reply(request: web.Request) -> web.Response:
        if request.path == "/user":
            return web.json_response({"id": 1})
        return web.json_response({"n": len(upstream.seen)}, status=extra["status"])

    upstream.reply = reply
    gw = await start_gateway(
        f"""
        routes:
          - path: /v1/dash/{{id}}
            cache: {{ttl: 60s}}
            fanout:
              budget: 2s
              backends:
                user: {{url: '{upstream.url}/user', required: true}}
                extra: {{url: '{upstream.url}/extra'}}
        """,
        clock=clock,
    )
    url = f"{gw.url}/v1/dash/1"
    for _ in range(2):
        partial = await fetch(http, url)
        assert partial.status == 200
        assert "Gateway-Partial" in partial.headers
        assert not partial.hit
    assert upstream.calls(path="/extra") == 2
    extra["status"] = 200
    full = await fetch(http, url)
    assert "Gateway-Partial" not in full.headers
    assert full.cache_status == "gateway; fwd=miss; stored"
    hit = await fetch(http, url)
    assert hit.hit
    assert hit.body == full.body
    assert "Gateway-Partial" not in hit.headers
    assert upstream.calls(path="/extra") == 3


# -- Vary ----------------------------------------------------------------------------------


async def test_vary_on_two_headers_keeps_one_entry_per_combination(
    start_gateway, upstream, clock, http
) -> None:
    gw = await items_gateway(start_gateway, upstream, clock)

    async def reply(request: web.Request) -> web.Response:
        lang = request.headers.get("Accept-Language", "-")
        tenant = request.headers.get("X-Tenant", "-")
        return web.Response(
            text=f"{lang}/{tenant}/{len(upstream.seen)}",
            headers={"Vary": "Accept-Language, X-Tenant", "Cache-Control": "max-age=60"},
        )

    upstream.reply = reply
    url = f"{gw.url}/v1/items/1"
    combos = [("en", "a"), ("fr", "a"), ("en", "b"), ("fr", "b"), (None, "a"), ("en", None)]
    first: dict[tuple[str | None, str | None], str] = {}
    for lang, tenant in combos * 2:
        headers = {}
        if lang:
            headers["Accept-Language"] = lang
        if tenant:
            headers["X-Tenant"] = tenant
        answer = await fetch(http, url, headers=headers)
        assert answer.text.startswith(f"{lang or '-'}/{tenant or '-'}/")
        if (lang, tenant) in first:
            assert answer.hit
            assert answer.text == first[(lang, tenant)]
        else:
            assert not answer.hit
            first[(lang, tenant)] = answer.text
    assert upstream.calls() == len(combos)


# -- scopes and credentials ----------------------------------------------------------------


def consumer_echo(upstream: Upstream, cache_control: dict[str, str]) -> Reply:
    async def reply(request: web.Request) -> web.Response:
        name = request.path.rsplit("/", 1)[1]
        headers = {"Cache-Control": cache_control[name]} if cache_control.get(name) else {}
        consumer = request.headers.get("X-Consumer-Id", "nobody")
        return web.Response(text=f"for {consumer} #{len(upstream.seen)}", headers=headers)

    return reply


async def test_consumer_b_never_sees_consumer_a_s_entry(
    start_gateway, upstream, clock, http, tmp_path
) -> None:
    upstream.reply = consumer_echo(upstream, {"1": "max-age=60", "2": "public, max-age=60"})
    gw = await start_gateway(
        f"""
        routes:
          - path: /v1/items/{{id}}
            auth: [api_key]
            cache: {{ttl: 60s}}
            proxy: {{url: '{upstream.url}', path: '/items/{{id}}'}}
        """,
        top=auth_top(tmp_path),
        clock=clock,
    )
    alice = {"X-API-Key": await api_key(gw, "alice")}
    bob = {"Authorization": f"Bearer {await api_key(gw, 'bob')}"}
    # Even a response the upstream calls public stays in its consumer's scope here.
    for item in ("1", "2"):
        url = f"{gw.url}/v1/items/{item}"
        a1 = await fetch(http, url, headers=alice)
        b1 = await fetch(http, url, headers=bob)
        a2 = await fetch(http, url, headers=alice)
        b2 = await fetch(http, url, headers=bob)
        assert a1.text.startswith("for alice #")
        assert b1.text.startswith("for bob #")
        assert not b1.hit
        assert a2.hit
        assert a2.text == a1.text
        assert b2.hit
        assert b2.text == b1.text
    assert upstream.calls() == 4
    # An anonymous caller is refused, never served from someone's entry.
    assert (await fetch(http, f"{gw.url}/v1/items/1")).status == 401


async def test_public_scope_needs_the_upstream_s_permission(
    start_gateway, upstream, clock, http, tmp_path
) -> None:
    upstream.reply = consumer_echo(
        upstream,
        {
            "plain": "max-age=60",
            "none": "",
            "revalidate": "must-revalidate, max-age=60",
            "public": "public, max-age=60",
            "shared": "s-maxage=60",
        },
    )
    gw = await start_gateway(
        f"""
        routes:
          - path: /v1/items/{{id}}
            auth: [api_key]
            cache: {{ttl: 60s, scope: public}}
            proxy: {{url: '{upstream.url}', path: '/items/{{id}}'}}
        """,
        top=auth_top(tmp_path),
        clock=clock,
    )
    alice = {"X-API-Key": await api_key(gw, "alice")}
    bob = {"X-API-Key": await api_key(gw, "bob")}
    # must-revalidate lets a request with credentials be stored (RFC 9111 section 3.5),
    # but only public or s-maxage lets this route share it between consumers.
    for item in ("plain", "none", "revalidate"):
        url = f"{gw.url}/v1/items/{item}"
        answers = [await fetch(http, url, headers=who) for who in (alice, alice, bob)]
        assert [a.text.split(" #")[0] for a in answers] == ["for alice", "for alice", "for bob"]
        assert not any(a.hit for a in answers)
        assert upstream.calls(path=f"/items/{item}") == 3
    for item in ("public", "shared"):
        url = f"{gw.url}/v1/items/{item}"
        from_alice = await fetch(http, url, headers=alice)
        from_bob = await fetch(http, url, headers=bob)
        assert from_alice.cache_status == "gateway; fwd=miss; stored"
        assert from_bob.hit
        assert from_bob.text == from_alice.text
        assert upstream.calls(path=f"/items/{item}") == 1


def authorization_echo(upstream: Upstream, cache_control: str) -> Reply:
    async def reply(request: web.Request) -> web.Response:
        who = request.headers.get("Authorization", "anonymous")
        headers = {"Cache-Control": cache_control} if cache_control else {}
        return web.Response(text=f"for {who}", headers=headers)

    return reply


async def test_a_request_with_authorization_is_not_stored_for_others(
    start_gateway, upstream, clock, http
) -> None:
    # RFC 9111 section 3.5: a shared cache stores a response to a request with
    # Authorization only when the response says public, s-maxage or must-revalidate.
    # The route has no auth of its own: the upstream checks the header itself.
    upstream.reply = authorization_echo(upstream, "")
    gw = await items_gateway(start_gateway, upstream, clock)
    url = f"{gw.url}/v1/items/1"
    mine = await fetch(http, url, headers={"Authorization": "Bearer alice-secret"})
    assert mine.text == "for Bearer alice-secret"
    theirs = await fetch(http, url)
    assert theirs.text == "for anonymous"
    assert upstream.calls() == 2


@pytest.mark.parametrize("cache_control", ["public", "s-maxage=60", "must-revalidate"])
async def test_a_request_with_authorization_is_stored_when_the_response_allows(
    start_gateway, upstream, clock, http, cache_control
) -> None:
    upstream.reply = authorization_echo(upstream, cache_control)
    gw = await items_gateway(start_gateway, upstream, clock)
    url = f"{gw.url}/v1/items/1"
    credentials = {"Authorization": "Bearer alice-secret"}
    assert (await fetch(http, url, headers=credentials)).cache_status.endswith("; stored")
    again = await fetch(http, url, headers=credentials)
    assert again.hit
    assert again.text == "for Bearer alice-secret"
    assert upstream.calls() == 1


# -- stale responses -----------------------------------------------------------------------


async def test_stale_while_revalidate_serves_stale_and_refreshes_once(
    start_gateway, upstream, clock, http
) -> None:
    gw = await items_gateway(start_gateway, upstream, clock)
    state: dict[str, Any] = {"version": 1}
    upstream.reply = etag_reply(state, "max-age=10, stale-while-revalidate=30")
    url = f"{gw.url}/v1/items/1"
    await fetch(http, url)
    clock.advance(15)
    state["version"] = 2
    state["gate"] = gate = asyncio.Event()
    try:
        for _ in range(5):
            stale = await asyncio.wait_for(fetch(http, url), 2)
            assert stale.status == 200
            assert stale.text == "version 1"
            assert stale.cache_status == "gateway; fwd=stale; stale-while-revalidate"
            assert stale.headers["Age"] == "15"
        for _ in range(200):
            if upstream.calls() >= 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # room for any further (wrong) refresh to show up
        assert upstream.calls() == 2  # exactly one background refresh, still running
        assert upstream.seen[1].headers["If-None-Match"] == '"v1"'
    finally:
        gate.set()
    for _ in range(200):
        if not gw.gateway.cache.refreshing:
            break
        await asyncio.sleep(0.01)
    assert not gw.gateway.cache.refreshing
    fresh = await fetch(http, url)
    assert fresh.text == "version 2"
    assert fresh.cache_status == "gateway; hit; ttl=10"
    assert upstream.calls() == 2

    # Past the window, the stale entry is revalidated before it is served.
    clock.advance(10 + 30 + 1)
    state["version"] = 3
    late = await fetch(http, url)
    assert late.text == "version 3"
    assert late.cache_status == "gateway; fwd=stale; stored"
    assert upstream.calls() == 3


@pytest.mark.parametrize("status", [502, 504, 500])
async def test_stale_if_error_serves_stale_within_the_window(
    start_gateway, upstream, clock, http, status
) -> None:
    gw = await items_gateway(start_gateway, upstream, clock)
    state: dict[str, Any] = {"version": 1}
    upstream.reply = etag_reply(state, "max-age=10, stale-if-error=30")
    url = f"{gw.url}/v1/items/1"
    await fetch(http, url)
    state["status"] = status
    clock.advance(11)
    stale = await fetch(http, url)
    assert stale.status == 200
    assert stale.text == "version 1"
    assert stale.cache_status == "gateway; fwd=stale; stale-if-error"
    assert stale.headers["Age"] == "11"
    clock.advance(28)  # 39 s old: 29 s stale
    assert (await fetch(http, url)).text == "version 1"
    clock.advance(1)  # 30 s stale: the window is over
    error = await fetch(http, url)
    assert error.status == status
    assert error.text == "upstream trouble"
    assert upstream.calls() == 4
    # The upstream recovers: the entry is replaced.
    state["status"] = 200
    state["version"] = 2
    assert (await fetch(http, url)).text == "version 2"


async def test_stale_if_error_covers_an_upstream_that_times_out(
    start_gateway, upstream, clock, http
) -> None:
    gw = await start_gateway(
        f"""
        routes:
          - path: /v1/items/{{id}}
            cache: {{ttl: 60s}}
            proxy: {{url: '{upstream.url}', path: '/items/{{id}}', timeout: 100ms}}
        """,
        clock=clock,
    )
    state: dict[str, Any] = {"version": 1}
    upstream.reply = etag_reply(state, "max-age=10, stale-if-error=30")
    url = f"{gw.url}/v1/items/1"
    await fetch(http, url)
    state["gate"] = gate = asyncio.Event()  # the upstream hangs
    try:
        clock.advance(11)
        stale = await fetch(http, url)
        assert stale.status == 200
        assert stale.text == "version 1"
        assert stale.cache_status == "gateway; fwd=stale; stale-if-error"
        clock.advance(30)
        late = await fetch(http, url)
        assert late.status == 504
        assert late.headers["Content-Type"] == "application/problem+json"
    finally:
        gate.set()


async def test_must_revalidate_disables_both_stale_windows(
    start_gateway, upstream, clock, http
) -> None:
    gw = await items_gateway(start_gateway, upstream, clock)
    state: dict[str, Any] = {"version": 1}
    upstream.reply = etag_reply(
        state,
        "max-age=10, must-revalidate, stale-while-revalidate=60, stale-if-error=60",
    )
    url = f"{gw.url}/v1/items/1"
    await fetch(http, url)
    clock.advance(11)
    state["status"] = 502
    error = await fetch(http, url)
    assert error.status == 502
    assert error.text == "upstream trouble"
    state["status"] = 200
    state["version"] = 2
    revalidated = await fetch(http, url)
    assert revalidated.text == "version 2"  # synchronously, not stale-while-revalidate
    assert revalidated.cache_status == "gateway; fwd=stale; stored"
    assert upstream.calls() == 3


# -- coalescing ----------------------------------------------------------------------------


async def test_a_hundred_concurrent_misses_make_one_upstream_call(
    start_gateway, upstream, clock, http
) -> None:
    gw = await items_gateway(start_gateway, upstream, clock)
    gate = asyncio.Event()

    async def reply(request: web.Request) -> web.Response:
        await gate.wait()
        return web.Response(text="the one answer", headers={"Cache-Control": "max-age=60"})

    upstream.reply = reply
    url = f"{gw.url}/v1/items/1"
    runtime = gw.gateway.runtime
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as many:
        tasks = [asyncio.ensure_future(fetch(many, url)) for _ in range(100)]
        try:
            # Everyone is in the gateway and the first one at the upstream: all misses.
            for _ in range(500):
                if (runtime.in_flight == 100 and upstream.calls() >= 1) or upstream.calls() > 1:
                    break
                await asyncio.sleep(0.01)
            assert runtime.in_flight == 100
            assert upstream.calls() == 1
        finally:
            gate.set()
        answers = await asyncio.gather(*tasks)
    assert upstream.calls() == 1
    assert [a.status for a in answers] == [200] * 100
    assert {a.text for a in answers} == {"the one answer"}
    statuses = sorted(a.cache_status for a in answers)
    assert statuses == ["gateway; fwd=miss; stored"] + ["gateway; hit; collapsed"] * 99


async def test_a_leader_that_hangs_up_does_not_set_off_a_stampede(
    start_gateway, upstream, clock, http
) -> None:
    # The first miss asks the upstream; its client then disconnects (the gateway
    # cancels its handler). The twenty requests waiting for it must not each go to the
    # upstream now: one of them may ask again, not all of them.
    gw = await items_gateway(start_gateway, upstream, clock)
    gate = asyncio.Event()

    async def reply(request: web.Request) -> web.Response:
        await gate.wait()
        return web.Response(text="the one answer", headers={"Cache-Control": "max-age=60"})

    upstream.reply = reply
    url = f"{gw.url}/v1/items/1"
    runtime = gw.gateway.runtime

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(300):
            if condition():
                return
            await asyncio.sleep(0.01)

    _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as many:
        try:
            writer.write(b"GET /v1/items/1 HTTP/1.1\r\nHost: gateway\r\n\r\n")
            await writer.drain()
            await until(lambda: upstream.calls() == 1)
            followers = [asyncio.ensure_future(fetch(many, url)) for _ in range(20)]
            await until(lambda: runtime.in_flight == 21)
            assert runtime.in_flight == 21
            writer.close()  # the leader's client hangs up
            await until(lambda: runtime.in_flight == 20)
            await until(lambda: upstream.calls() > 2)
            calls = upstream.calls()
        finally:
            gate.set()
        answers = await asyncio.gather(*followers)
    assert [a.text for a in answers] == ["the one answer"] * 20
    assert calls <= 2, f"{calls - 1} upstream calls after the leader left"


# -- invalidation --------------------------------------------------------------------------


def users_routes(url: str) -> str:
    return f"""
    routes:
      - path: /v1/users
        methods: [GET, POST]
        cache: {{ttl: 60s}}
        proxy: {{url: '{url}', path: /users}}
      - path: /v1/users/{{id}}
        methods: [GET, PUT, PATCH, DELETE]
        cache: {{ttl: 60s}}
        invalidates: ['/v1/dashboard/{{id}}']
        proxy: {{url: '{url}', path: '/users/{{id}}'}}
      - path: /v1/dashboard/{{id}}
        cache: {{ttl: 60s}}
        proxy: {{url: '{url}', path: '/dashboard/{{id}}'}}
    """


def write_reply(upstream: Upstream, write_status: dict[str, int]) -> Reply:
    async def reply(request: web.Request) -> web.Response:
        if request.method in ("GET", "HEAD"):
            return web.Response(text=f"{request.path_qs} #{len(upstream.seen)}")
        return web.Response(status=write_status["status"], text="written")

    return reply


USER_URLS = (
    "/v1/users",
    "/v1/users/1",
    "/v1/users/1?view=full",
    "/v1/users/2",
    "/v1/dashboard/1",
    "/v1/dashboard/2",
)


async def cached_now(http: aiohttp.ClientSession, base: str) -> dict[str, bool]:
    return {path: (await fetch(http, base + path)).hit for path in USER_URLS}


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_a_successful_write_invalidates_the_url_and_related_routes(
    start_gateway, upstream, clock, http, method
) -> None:
    upstream.reply = write_reply(upstream, {"status": 200})
    gw = await start_gateway(users_routes(upstream.url), clock=clock)
    for path in USER_URLS:
        await fetch(http, gw.url + path)
    assert all((await cached_now(http, gw.url)).values())
    written = await fetch(http, f"{gw.url}/v1/users/1", method)
    assert written.status == 200
    assert await cached_now(http, gw.url) == {
        "/v1/users": True,
        "/v1/users/1": False,
        "/v1/users/1?view=full": False,
        "/v1/users/2": True,
        "/v1/dashboard/1": False,
        "/v1/dashboard/2": True,
    }


async def test_a_post_invalidates_its_collection(start_gateway, upstream, clock, http) -> None:
    status = {"status": 201}
    upstream.reply = write_reply(upstream, status)
    gw = await start_gateway(users_routes(upstream.url), clock=clock)
    for path in USER_URLS:
        await fetch(http, gw.url + path)
    assert (await fetch(http, f"{gw.url}/v1/users", "POST")).status == 201
    now = await cached_now(http, gw.url)
    assert not now.pop("/v1/users")
    assert all(now.values())
    # A redirect answers a write successfully too (2xx/3xx).
    status["status"] = 303
    async with http.post(f"{gw.url}/v1/users", allow_redirects=False) as response:
        assert response.status == 303
    assert not (await fetch(http, f"{gw.url}/v1/users")).hit


@pytest.mark.parametrize("status", [400, 404, 409, 412, 500, 503])
async def test_a_failed_write_invalidates_nothing(
    start_gateway, upstream, clock, http, status
) -> None:
    upstream.reply = write_reply(upstream, {"status": status})
    gw = await start_gateway(users_routes(upstream.url), clock=clock)
    for path in USER_URLS:
        await fetch(http, gw.url + path)
    assert (await fetch(http, f"{gw.url}/v1/users/1", "PUT")).status == status
    assert (await fetch(http, f"{gw.url}/v1/users", "POST")).status == status
    assert all((await cached_now(http, gw.url)).values())


@pytest.mark.parametrize("invalidation", ["write", "prefix purge"])
async def test_a_read_that_began_before_a_write_is_not_stored_after_it(
    start_gateway, upstream, clock, http, invalidation
) -> None:
    # A GET reaches the upstream, then a PUT succeeds (and invalidates) or the admin
    # purges the prefix, then the GET's answer arrives: storing it now would serve the
    # pre-write version for the ttl.
    gw = await items_gateway(start_gateway, upstream, clock)
    state = {"version": 1}
    gate = asyncio.Event()

    async def reply(request: web.Request) -> web.Response:
        if request.method == "PUT":
            state["version"] += 1
            return web.Response(text="written")
        version = state["version"]
        await gate.wait()
        return web.Response(text=f"version {version}")

    upstream.reply = reply
    url = f"{gw.url}/v1/items/1"
    reading = asyncio.ensure_future(fetch(http, url))
    try:
        for _ in range(300):
            if upstream.calls() == 1:
                break
            await asyncio.sleep(0.01)
        assert upstream.calls() == 1
        if invalidation == "write":
            assert (await fetch(http, url, "PUT")).status == 200
        else:
            state["version"] += 1  # a write the gateway did not see, then a purge
            assert gw.gateway.cache is not None
            gw.gateway.cache.purge_prefix("/v1/items/")
    finally:
        gate.set()
    assert (await reading).text == "version 1"
    after = await fetch(http, url)
    assert after.text == "version 2", after.cache_status


# -- per-request headers -------------------------------------------------------------------


async def test_request_ids_and_rate_limits_are_never_replayed(
    start_gateway, upstream, clock, http
) -> None:
    async def reply(request: web.Request) -> web.Response:
        # An upstream that echoes the request id and times itself.
        return web.Response(
            text="body",
            headers={
                "X-Request-Id": request.headers["X-Request-Id"],
                "Server-Timing": "app;dur=5",
            },
        )

    upstream.reply = reply
    gw = await items_gateway(
        start_gateway,
        upstream,
        clock,
        more="        rate_limit: {by: ip}",
        top="rate_limits: {plans: {free: {rate: 1/s, burst: 10}}}",
    )
    url = f"{gw.url}/v1/items/1"
    answers = [await fetch(http, url) for _ in range(3)]
    assert [a.hit for a in answers] == [False, True, True]
    assert upstream.calls() == 1
    ids = [a.headers["X-Request-Id"] for a in answers]
    assert len(set(ids)) == 3
    assert upstream.seen[0].headers["X-Request-Id"] == ids[0]
    assert [a.headers["RateLimit"] for a in answers] == [
        '"burst";r=9;t=1',
        '"burst";r=8;t=2',
        '"burst";r=7;t=3',
    ]
    for hit in answers[1:]:
        assert hit.headers.getall("X-Request-Id") == [hit.headers["X-Request-Id"]]
        assert hit.headers.getall("RateLimit") == [hit.headers["RateLimit"]]
        assert "app;" not in hit.headers.get("Server-Timing", "")
    # A client-chosen id is used as given, also on a hit.
    mine = await fetch(http, url, headers={"X-Request-Id": "my-own-id-123"})
    assert mine.hit
    assert mine.headers["X-Request-Id"] == "my-own-id-123"


async def test_an_upstream_s_rate_limit_headers_are_not_replayed(
    start_gateway, upstream, clock, http
) -> None:
    # The upstream limits too; its RateLimit describes the request that reached it.
    async def reply(request: web.Request) -> web.Response:
        left = 100 - len(upstream.seen)
        return web.Response(
            text="body",
            headers={"RateLimit-Policy": '"u";q=100;w=60', "RateLimit": f'"u";r={left};t=60'},
        )

    upstream.reply = reply
    gw = await items_gateway(start_gateway, upstream, clock)
    url = f"{gw.url}/v1/items/1"
    first = await fetch(http, url)
    assert first.headers["RateLimit"] == '"u";r=99;t=60'
    hit = await fetch(http, url)
    assert hit.hit
    assert "RateLimit" not in hit.headers


# -- HEAD and conditional requests ---------------------------------------------------------


async def test_head_is_answered_from_a_get_entry(start_gateway, upstream, clock, http) -> None:
    gw = await items_gateway(start_gateway, upstream, clock)
    upstream.headers = {"Content-Type": "text/plain", "X-Upstream": "yes"}
    url = f"{gw.url}/v1/items/1"
    got = await fetch(http, url)
    head = await fetch(http, url, "HEAD")
    assert head.status == 200
    assert head.body == b""
    assert head.headers["Content-Length"] == str(len(got.body))
    assert head.headers["X-Upstream"] == "yes"
    assert head.hit
    assert upstream.calls("GET") == 1
    assert upstream.calls("HEAD") == 0

    # A HEAD that misses is not stored as an empty GET.
    other = f"{gw.url}/v1/items/2"
    head = await fetch(http, other, "HEAD")
    assert head.status == 200
    assert head.body == b""
    got = await fetch(http, other)
    assert got.text == f"call {len(upstream.seen)}"
    assert got.headers["Content-Length"] == str(len(got.body))
    again = await fetch(http, other)
    assert again.hit
    assert again.body == got.body


async def test_a_conditional_get_on_a_hit_is_a_304_from_the_cache(
    start_gateway, upstream, clock, http
) -> None:
    gw = await items_gateway(start_gateway, upstream, clock, more="        conditional: {}")
    upstream.headers = {"Content-Type": "text/plain"}

    async def reply(request: web.Request) -> web.Response:
        return web.Response(text="the same body")

    upstream.reply = reply
    url = f"{gw.url}/v1/items/1"
    got = await fetch(http, url)
    tag = got.headers["ETag"]
    not_modified = await fetch(http, url, headers={"If-None-Match": tag})
    assert not_modified.status == 304
    assert not_modified.body == b""
    assert not_modified.headers["ETag"] == tag
    assert not_modified.cache_status.startswith("gateway; hit")
    changed = await fetch(http, url, headers={"If-None-Match": '"something-else"'})
    assert changed.status == 200
    assert changed.body == got.body
    assert changed.hit
    assert upstream.calls() == 1
    # The client's validators never reached the upstream: it answered in full.
    assert all("If-None-Match" not in seen.headers for seen in upstream.seen)
    # On a miss too, the client's tag is answered from the full upstream answer.
    clock.advance(61)
    again = await fetch(http, url, headers={"If-None-Match": tag})
    assert again.status == 304
    assert again.headers["ETag"] == tag
    assert upstream.calls() == 2
    assert all("If-None-Match" not in seen.headers for seen in upstream.seen)


# -- admin purge ---------------------------------------------------------------------------


async def test_admin_purges_by_path_and_by_prefix(
    start_gateway, upstream, clock, http, tmp_path
) -> None:
    upstream.reply = write_reply(upstream, {"status": 200})
    token_file = tmp_path / "admin-token"
    gw = await start_gateway(
        users_routes(upstream.url),
        top=auth_top(
            tmp_path,
            f"""
    admin:
      enabled: true
      listen: {{host: 127.0.0.1, port: 0}}
      token_env: GATEWAY_TEST_CACHE_ADMIN_TOKEN_NEVER_SET
      token_file: {token_file}
    """,
        ),
        clock=clock,
    )
    admin = f"http://127.0.0.1:{gw.gateway.admin_port}/admin/cache"
    auth = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
    for path in USER_URLS:
        await fetch(http, gw.url + path)

    async with http.delete(admin, params={"path": "/v1/users/1"}) as response:
        assert response.status == 401
    for params in ({}, {"path": "/v1/users/1", "prefix": "/v1/"}):
        async with http.delete(admin, params=params, headers=auth) as response:
            assert response.status == 422
    assert all((await cached_now(http, gw.url)).values())

    async with http.delete(admin, params={"path": "/v1/users/1"}, headers=auth) as response:
        assert response.status == 200
        assert orjson.loads(await response.read()) == {"purged": 2}
    now = await cached_now(http, gw.url)
    assert not now.pop("/v1/users/1")
    assert not now.pop("/v1/users/1?view=full")
    assert all(now.values())

    async with http.delete(admin, params={"prefix": "/v1/users/"}, headers=auth) as response:
        assert response.status == 200
        assert orjson.loads(await response.read()) == {"purged": 3}
    assert await cached_now(http, gw.url) == {
        "/v1/users": True,
        "/v1/users/1": False,
        "/v1/users/1?view=full": False,
        "/v1/users/2": False,
        "/v1/dashboard/1": True,
        "/v1/dashboard/2": True,
    }
