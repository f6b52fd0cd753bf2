"""The response store: an LRU bounded in bytes, variants, invalidation by path."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.policies.cache.store import Entry, ResponseStore

#: Entry.size counts this much on top of the body and the headers.
OVERHEAD = 200


def entry(
    path: str = "/p",
    *,
    scope: str = "public",
    query: str = "",
    vary: tuple[str, ...] = (),
    values: tuple[str | None, ...] = (),
    body: bytes = b"x" * 100,
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "text/plain"),),
) -> Entry:
    return Entry(
        primary=f"route|{scope}|{path}?{query}",
        path=path,
        vary=vary,
        vary_values=values,
        status=200,
        headers=headers,
        body=body,
        etag=None,
        directives={},
        stored_at=0.0,
        initial_age=0.0,
        lifetime=60.0,
    )


def request(**fields: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict((name.replace("_", "-"), v) for name, v in fields.items()))


NO_HEADERS = request()


def get(
    store: ResponseStore, stored: Entry, req: CIMultiDictProxy[str] = NO_HEADERS
) -> Entry | None:
    return store.lookup(stored.primary, req)


def test_size_counts_body_headers_and_overhead() -> None:
    stored = entry(body=b"abc", headers=(("A", "bc"), ("Def", "g")))
    assert stored.size == 3 + 3 + 4 + OVERHEAD


def test_put_and_lookup() -> None:
    store = ResponseStore(max_bytes=10_000, max_entry=10_000)
    stored = entry()
    assert store.put(stored)
    assert get(store, stored) is stored
    assert len(store) == 1
    assert store.bytes == stored.size
    assert store.lookup("route|public|/other?", NO_HEADERS) is None


def test_the_least_recently_used_entry_goes_first() -> None:
    a, b, c = entry("/a"), entry("/b"), entry("/c")
    store = ResponseStore(max_bytes=2 * a.size + a.size // 2, max_entry=10_000)
    assert store.put(a)
    assert store.put(b)
    assert get(store, a) is a  # a is now the most recently used
    assert store.put(c)
    assert get(store, b) is None
    assert get(store, a) is a
    assert get(store, c) is c
    assert len(store) == 2
    assert store.bytes == a.size + c.size <= store.max_bytes


def test_eviction_frees_as_many_entries_as_a_big_one_needs() -> None:
    small = [entry(f"/s{i}", body=b"s" * 10) for i in range(5)]
    big = entry("/big", body=b"b" * 600)
    store = ResponseStore(max_bytes=big.size + small[0].size, max_entry=10_000)
    for each in small:
        assert store.put(each)
    assert store.put(big)
    assert get(store, big) is big
    assert [get(store, each) for each in small[:-1]] == [None] * 4
    assert get(store, small[-1]) is small[-1]
    assert store.bytes == big.size + small[-1].size


def test_entries_over_the_limits_are_refused() -> None:
    store = ResponseStore(max_bytes=10_000, max_entry=500)
    too_big = entry(body=b"x" * 400)  # 400 + headers + 200 > 500
    assert too_big.size > 500
    assert not store.put(too_big)
    assert len(store) == 0
    assert store.bytes == 0
    assert get(store, too_big) is None
    at_limit = entry(body=b"x" * (500 - entry(body=b"").size))
    assert at_limit.size == 500
    assert store.put(at_limit)
    # An entry larger than the whole store never evicts everything for nothing.
    small_store = ResponseStore(max_bytes=400, max_entry=10_000)
    kept = entry("/kept", body=b"")
    assert small_store.put(kept)
    assert not small_store.put(entry(body=b"x" * 300))
    assert get(small_store, kept) is kept
    assert small_store.bytes == kept.size


def test_a_refused_replacement_keeps_the_old_entry() -> None:
    store = ResponseStore(max_bytes=10_000, max_entry=500)
    old = entry(body=b"old")
    assert store.put(old)
    assert not store.put(entry(body=b"n" * 1000))
    assert get(store, old) is old
    assert store.bytes == old.size


def test_replacing_an_entry_counts_its_bytes_once() -> None:
    store = ResponseStore(max_bytes=10_000, max_entry=10_000)
    first, second = entry(body=b"1" * 50), entry(body=b"2" * 70)
    assert store.put(first)
    assert store.put(second)
    assert len(store) == 1
    assert get(store, first) is second
    assert store.bytes == second.size


def test_variants_are_kept_apart() -> None:
    store = ResponseStore(max_bytes=10_000, max_entry=10_000)
    vary = ("accept", "accept-language")
    en_json = entry(vary=vary, values=("application/json", "en"), body=b"en json")
    fr_json = entry(vary=vary, values=("application/json", "fr"), body=b"fr json")
    en_none = entry(vary=vary, values=(None, "en"), body=b"en, no accept")
    for each in (en_json, fr_json, en_none):
        assert store.put(each)
    assert len(store) == 3
    assert get(store, en_json, request(Accept="application/json", Accept_Language="en")) is en_json
    assert get(store, en_json, request(accept="application/json", ACCEPT_LANGUAGE="fr")) is fr_json
    assert get(store, en_json, request(Accept_Language="en")) is en_none
    assert get(store, en_json, request(Accept="text/html", Accept_Language="en")) is None
    assert get(store, en_json, request(Accept="application/json")) is None
    assert get(store, en_json, NO_HEADERS) is None


def test_a_new_vary_drops_the_old_variants() -> None:
    store = ResponseStore(max_bytes=10_000, max_entry=10_000)
    a = entry(vary=("accept",), values=("a",))
    b = entry(vary=("accept",), values=("b",))
    assert store.put(a)
    assert store.put(b)
    now = entry(vary=("x-tenant",), values=("t1",))
    assert store.put(now)
    assert len(store) == 1
    assert store.bytes == now.size
    assert get(store, a, request(Accept="a")) is None
    assert get(store, a, request(X_Tenant="t1")) is now


def test_invalidate_path_drops_every_scope_query_and_variant() -> None:
    store = ResponseStore(max_bytes=100_000, max_entry=10_000)
    on_path = [
        entry("/v1/users/1", scope="c:alice"),
        entry("/v1/users/1", scope="c:bob"),
        entry("/v1/users/1", scope="public", query="fields=name"),
        entry("/v1/users/1", scope="anonymous", vary=("accept",), values=("a",)),
        entry("/v1/users/1", scope="anonymous", vary=("accept",), values=("b",)),
    ]
    others = [entry("/v1/users/10"), entry("/v1/users"), entry("/v1/users/1/orders")]
    for each in on_path + others:
        assert store.put(each)
    assert store.invalidate_path("/v1/users/1") == len(on_path)
    for each in on_path:
        assert get(store, each, request(Accept="a")) is None
        assert get(store, each, request(Accept="b")) is None
    for each in others:
        assert get(store, each) is each
    assert len(store) == len(others)
    assert store.bytes == sum(each.size for each in others)
    assert store.invalidate_path("/v1/users/1") == 0
    assert store.invalidate_path("/nothing") == 0
    # The primary can be stored again, with another Vary, after an invalidation.
    again = entry("/v1/users/1", scope="anonymous", vary=("x-tenant",), values=("t",))
    assert store.put(again)
    assert get(store, again, request(X_Tenant="t")) is again


def test_purge_prefix() -> None:
    store = ResponseStore(max_bytes=100_000, max_entry=10_000)
    users = [
        entry("/v1/users/1"),
        entry("/v1/users/1", scope="c:alice", query="a=1"),
        entry("/v1/users/2"),
        entry("/v1/users/2/orders"),
    ]
    others = [entry("/v1/users"), entry("/v1/usersx/1"), entry("/v1/orders/1")]
    for each in users + others:
        assert store.put(each)
    assert store.purge_prefix("/v1/users/") == len(users)
    assert [get(store, each) for each in users] == [None] * len(users)
    assert [get(store, each) for each in others] == others
    assert store.bytes == sum(each.size for each in others)
    assert store.purge_prefix("/v1/users/") == 0
    assert store.purge_prefix("/") == len(others)
    assert len(store) == 0
    assert store.bytes == 0


def test_byte_accounting_stays_exact_and_never_negative() -> None:
    store = ResponseStore(max_bytes=2_000, max_entry=1_000)
    live: dict[tuple[str, tuple[str | None, ...]], Entry] = {}

    def check() -> None:
        assert store.bytes >= 0
        assert store.bytes <= store.max_bytes
        present = [e for e in live.values() if store.lookup(e.primary, probe(e)) is e]
        assert store.bytes == sum(e.size for e in present)
        assert len(store) == len(present)

    def probe(stored: Entry) -> CIMultiDictProxy[str]:
        return request(
            **{
                n.replace("-", "_"): v
                for n, v in zip(stored.vary, stored.vary_values, strict=True)
                if v
            }
        )

    for round_ in range(3):
        for i in range(12):
            path = f"/p{i % 5}"
            stored = entry(
                path,
                scope=f"c:{i % 3}",
                vary=("accept",) if i % 2 else (),
                values=(f"v{round_}",) if i % 2 else (),
                body=b"z" * (37 * i % 400),
            )
            store.put(stored)
            live[(stored.primary, stored.vary_values)] = stored
            check()
        store.invalidate_path("/p1")
        check()
        store.purge_prefix("/p3")
        check()
    for i in range(5):
        store.invalidate_path(f"/p{i}")
    assert store.bytes == 0
    assert len(store) == 0
