"""The servers the closed-loop variants measure, and the sample services behind them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.processes import Proc
from bench.redis_store import RedisStore
from bench.variants import HOST


@dataclass
class Target:
    """A closed-loop variant whose server is up and answering, and its runs so far."""

    key: str
    url: str
    port: int
    #: The server under test, started here; None for a (the users service, direct).
    proc: Proc | None = None
    access_log: Path | None = None
    #: Its processes (nginx: master and worker), known once it is ready.
    server_pids: list[int] = field(default_factory=list)
    #: Sent with every request, probes and wrk alike: g's API key, h's bearer token.
    headers: dict[str, str] = field(default_factory=dict)
    #: h: the OAuth client whose token goes in ``headers``, fetched once the gateway is up.
    client: tuple[str, str] | None = None
    #: i, j: the gateway's ``rate_limits:`` section (its limiter's store).
    rate_limits: dict[str, Any] | None = None
    #: j: its private redis-server, stopped with it.
    redis: RedisStore | None = None
    #: The sample service behind it: ``users`` (a to j) or ``orders`` (k to n).
    upstream: str = "users"
    #: k to n: the JSON body POSTed (by wrk's Lua ``script`` and by the probes).
    body: bytes | None = None
    script: Path | None = None
    #: k, l: a new ``Idempotency-Key`` on every request (the script numbers them).
    unique_keys: bool = False
    #: wrk runs so far (the warm-up included): the prefix of each run's keys.
    wrk_runs: int = 0
    #: l: records in its memory store, counted from wrk's responses since the server
    #: last started (its warm-up's included).
    stored_keys: int = 0
    #: The status every answer must have: 200, or p's 304 (its If-None-Match matches).
    status: int = 200
    #: o, p: the Cache-Status of the probe's second GET (a hit).
    cache_status: str | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    #: How ``proc`` was started (its command line, not yet pinned): each round starts
    #: it again, the same way.
    command: list[str] | None = None

    def next_script(self) -> tuple[Path | None, list[str]]:
        """The Lua script and its arguments for the next wrk run: with unique keys, a
        prefix of its own (``k1``, ``k2``...), so no key repeats across runs."""
        self.wrk_runs += 1
        if not self.unique_keys:
            return self.script, []
        return self.script, [f"{self.key}{self.wrk_runs}"]


@dataclass
class Upstream:
    """A sample service the closed-loop variants proxy to, on the load core."""

    kind: str
    proc: Proc
    port: int

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"
