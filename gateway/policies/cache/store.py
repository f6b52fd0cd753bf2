"""The response cache's storage: an LRU bounded in bytes, indexed for invalidation.

Entries are keyed by (primary key, the values of the request headers the response
varies on). The primary key holds the scope (a consumer, or public), so an entry is
never served to a consumer it was not stored for. A path index finds every entry of a
URL (all scopes, queries and variants) for invalidation.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from multidict import CIMultiDictProxy


@dataclass(slots=True)
class Entry:
    primary: str
    path: str
    vary: tuple[str, ...]
    vary_values: tuple[str | None, ...]
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    etag: str | None
    directives: dict[str, str | None]
    #: Wall-clock time the response was stored (or last freshened by a 304).
    stored_at: float
    #: Its age when stored (the upstream's Age header).
    initial_age: float
    lifetime: float
    #: The headers a 304 for this entry carries, picked out once (see policy).
    validators: tuple[tuple[str, str], ...] | None = None
    #: The upstream's own ETag, the only one worth revalidating with (``etag`` may be
    #: one the gateway computed from the body).
    upstream_etag: str | None = None

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(n) + len(v) for n, v in self.headers) + 200

    def age(self, now: float) -> float:
        return self.initial_age + max(0.0, now - self.stored_at)


class ResponseStore:
    def __init__(self, max_bytes: int, max_entry: int) -> None:
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self.bytes = 0
        self._entries: OrderedDict[tuple[str, tuple[str | None, ...]], Entry] = OrderedDict()
        self._variants: dict[str, tuple[str, ...]] = {}
        self._by_path: dict[str, set[tuple[str, tuple[str | None, ...]]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, primary: str, request_headers: CIMultiDictProxy[str]) -> Entry | None:
        vary = self._variants.get(primary)
        if vary is None:
            return None
        values = tuple(request_headers.get(name) for name in vary)
        key = (primary, values)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, entry: Entry) -> bool:
        size = entry.size
        if size > self.max_entry or size > self.max_bytes:
            return False
        if self._variants.get(entry.primary, entry.vary) != entry.vary:
            # The upstream changed what it varies on: the old variants are unreachable.
            self._drop_primary(entry.primary)
        self._variants[entry.primary] = entry.vary
        key = (entry.primary, entry.vary_values)
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        self._entries[key] = entry
        self._by_path.setdefault(entry.path, set()).add(key)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._forget(evicted)
        return True

    def resized(self, entry: Entry, old_size: int) -> None:
        """An entry's headers changed in place (a 304 freshened it): fix the count."""
        if self._entries.get((entry.primary, entry.vary_values)) is entry:
            self.bytes += entry.size - old_size

    def _forget(self, entry: Entry) -> None:
        self.bytes -= entry.size
        keys = self._by_path.get(entry.path)
        if keys is not None:
            keys.discard((entry.primary, entry.vary_values))
            if not keys:
                del self._by_path[entry.path]
        if not any(k[0] == entry.primary for k in self._by_path.get(entry.path, ())):
            self._variants.pop(entry.primary, None)

    def _drop_primary(self, primary: str) -> None:
        for key in [key for key in self._entries if key[0] == primary]:
            self._forget(self._entries.pop(key))

    def invalidate_path(self, path: str) -> int:
        keys = self._by_path.pop(path, set())
        for key in keys:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self.bytes -= entry.size
                self._variants.pop(entry.primary, None)
        return len(keys)

    def purge_prefix(self, prefix: str) -> int:
        paths = [path for path in self._by_path if path.startswith(prefix)]
        return sum(self.invalidate_path(path) for path in paths)
