"""j's limiter store: a private redis-server, its readiness, and its count of decisions."""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError
from bench.processes import Proc, exited, wait_ready
from bench.variants import BENCH_LIMIT_POLICY, HOST, READY_TIMEOUT_S


def redis_executable() -> str:
    """The redis-server to start for j: ``$REDIS_SERVER`` or ``redis-server`` on PATH."""
    wanted = os.environ.get("REDIS_SERVER", "redis-server")
    found = shutil.which(wanted)
    if found is None:
        raise BenchError(
            f"{wanted!r} is not on PATH: j needs a redis-server (install it, set "
            "$REDIS_SERVER to one, or leave j out with --only)"
        )
    return found


def redis_command(folder: Path, port: int) -> list[str]:
    """A private redis-server on ``HOST:port``: no persistence, working in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        redis_executable(),
        "--port",
        str(port),
        "--bind",
        HOST,
        "--save",
        "",  # no snapshots, no append-only file: nothing is written during the runs
        "--appendonly",
        "no",
        "--dir",
        str(folder),
        "--daemonize",
        "no",
    ]


def redis_call(port: int, *args: str) -> bytes:
    """One command to the redis-server on ``HOST:port``: its reply (status, integer, bulk).

    A few lines of RESP rather than a client library: the harness only needs PING and
    INFO, on its own connection, never the gateway's.
    """
    payload = b"*%d\r\n" % len(args)
    for arg in args:
        data = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    try:
        with socket.create_connection((HOST, port), timeout=2.0) as sock:
            sock.sendall(payload)
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    raise BenchError(f"redis-server on {port} closed the connection")
                data += chunk
                head, found, rest = data.partition(b"\r\n")
                if not found:
                    continue
                kind, value = head[:1], head[1:]
                if kind == b"-":
                    raise BenchError(f"redis-server answered {head.decode(errors='replace')}")
                if kind != b"$":
                    return value
                size = int(value)
                if size < 0:
                    return b""
                if len(rest) >= size + 2:
                    return rest[:size]
    except OSError as exc:
        raise BenchError(f"redis-server on {port}: {exc}") from exc


@dataclass
class RedisStore:
    """j's private redis-server, pinned to the load core like the upstream services."""

    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def decisions(self) -> int:
        """EVALSHA calls the server has carried out so far: the limiter's decisions.

        The gateway decides with one EVALSHA per request; one that fails or times out
        admits the request anyway (``on_store_down: fail_open``) and marks it. Counting
        the server's own EVALSHAs over a run and comparing them with the responses is
        what tells a fast run from one whose requests skipped Redis.
        """
        info = redis_call(self.port, "INFO", "commandstats").decode(errors="replace")
        for line in info.splitlines():
            name, _, values = line.partition(":")
            if name.strip() != "cmdstat_evalsha":
                continue
            stats = dict(item.partition("=")[::2] for item in values.strip().split(","))
            ok = int(stats.get("calls", 0))
            return ok - int(stats.get("failed_calls", 0)) - int(stats.get("rejected_calls", 0))
        return 0


def wait_redis(proc: Proc, port: int, timeout: float = READY_TIMEOUT_S) -> None:
    """Return once the redis-server answers PING (it accepts connections before that)."""
    wait_ready(proc, port, timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if redis_call(port, "PING") == b"PONG":
                return
        except BenchError:
            pass
        if proc.popen.poll() is not None:
            raise BenchError(exited(proc, "before answering PING"))
        if time.monotonic() > deadline:
            raise BenchError(f"redis-server on {port} did not answer PING within {timeout:g}s")
        time.sleep(0.05)


def check_rate_limited(headers: dict[str, str], what: str, redis: bool) -> None:
    """i's or j's probe answer carries the limit's headers (and j's the Redis timing).

    A route whose limit was not applied, or whose decision was skipped (``Gateway-
    RateLimit: store-unavailable``: Redis unreachable, the route admits anyway), would
    otherwise be measured doing less work than it claims.
    """
    lower = {name.lower(): value for name, value in headers.items()}
    policy = lower.get("ratelimit-policy")
    if policy is None or BENCH_LIMIT_POLICY not in policy:
        raise BenchError(f"{what}: no RateLimit-Policy with {BENCH_LIMIT_POLICY} ({policy!r})")
    if "ratelimit" not in lower:
        raise BenchError(f"{what}: the answer has no RateLimit header")
    if "gateway-ratelimit" in lower:
        raise BenchError(f"{what}: Gateway-RateLimit: {lower['gateway-ratelimit']}")
    timing = lower.get("server-timing", "")
    if redis and "ratelimit;dur=" not in timing:
        raise BenchError(f"{what}: no ratelimit;dur= in Server-Timing ({timing!r})")
