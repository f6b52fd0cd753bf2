"""An open-loop HTTP load generator: requests leave on a fixed schedule, whatever happens.

Why open loop: a closed-loop tool (wrk, ab) sends the next request only when a previous
one has answered, so a server that stalls also stalls the tool, which then stops
sampling exactly while latency is bad ("coordinated omission"). Here request ``i`` is
due at ``start + i / rate`` regardless of how many are still in flight, and its latency
is measured from that *scheduled* time, not from when it actually left: time spent
queued behind a slow server, waiting for a free connection, or behind a late timer
counts against the server, as it would for a real client arriving at that moment.

Pure parts (``percentile``, ``parse_server_timing`` and the ``LoadResult`` helpers) do
no I/O and are tested on their own; ``run_open_loop`` is the only part that touches
the network and the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import aiohttp

__all__ = [
    "LoadResult",
    "Progress",
    "Sample",
    "parse_server_timing",
    "percentile",
    "run_open_loop",
]

#: The monotonic, high-resolution clock every timestamp here comes from. Not
#: ``loop.time()``: uvloop's is cached per loop iteration at millisecond resolution,
#: which is too coarse for millisecond latencies.
_now = time.perf_counter

PARTIAL_HEADER = "Gateway-Partial"
SERVER_TIMING_HEADER = "Server-Timing"


@dataclass(frozen=True, slots=True)
class Sample:
    """One request. ``scheduled`` is seconds after the run's start (perf_counter based)."""

    scheduled: float
    #: From the scheduled send time to the end of the response body (or the failure).
    latency_s: float
    #: The HTTP status; None when no response arrived (see ``error``).
    status: int | None
    server_timing: str | None
    partial: str | None
    #: Why no response arrived: ``"timeout"`` or the client exception's class name.
    error: str | None


@dataclass(frozen=True, slots=True)
class Progress:
    """What ``on_progress`` is told: every ``progress_interval``, when ``stop`` ends the
    sending, and once at the end."""

    elapsed_s: float
    total: int
    sent: int
    completed: int
    errors: int


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of ``values`` (any order), ``0 <= p <= 100``.

    Nearest rank: the smallest value such that at least ``p`` % of the values are less
    than or equal to it, i.e. ``sorted(values)[ceil(p / 100 * n) - 1]``; ``p = 0`` gives
    the minimum and ``p = 100`` the maximum. It never interpolates, so every answer is
    a latency that was actually observed, and p99 of fewer than 100 samples is the
    maximum rather than a made-up value between the two largest.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:  # also rejects nan
        raise ValueError(f"percentile must be from 0 to 100, got {p}")
    ordered = sorted(values)
    # The max() covers p = 0, where ceil(0) would index one before the start.
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def parse_server_timing(value: str) -> list[tuple[str, float | None, str | None]]:
    """Entries of a ``Server-Timing`` header: ``(name, dur in ms or None, desc or None)``.

    ``users;dur=3.2;desc="ok", gateway;dur=0.4`` gives
    ``[("users", 3.2, "ok"), ("gateway", 0.4, None)]``. Lenient, as a measuring tool
    must be: unknown parameters are ignored, a malformed ``dur`` reads as None, and an
    entry without a name is skipped, so one odd entry never loses the others. Commas
    and semicolons inside a quoted ``desc`` are kept.
    """
    entries: list[tuple[str, float | None, str | None]] = []
    for entry in _split_outside_quotes(value, ","):
        params = _split_outside_quotes(entry, ";")
        name = params[0].strip()
        if not name:
            continue
        dur: float | None = None
        desc: str | None = None
        for param in params[1:]:
            key, _, raw = param.partition("=")
            key = key.strip().lower()
            raw = raw.strip()
            if key == "dur":
                try:
                    dur = float(raw)
                except ValueError:
                    dur = None
                if dur is not None and not math.isfinite(dur):
                    dur = None
            elif key == "desc":
                desc = _unquote(raw)
        entries.append((name, dur, desc))
    return entries


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        out: list[str] = []
        escaped = False
        for char in raw[1:-1]:
            if escaped or char != "\\":
                out.append(char)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return raw


@dataclass
class LoadResult:
    """The samples of one run, in schedule order, and summaries of them."""

    url: str
    rate: float
    duration: float
    samples: list[Sample]
    #: Seconds from the first scheduled send to the last completion.
    elapsed_s: float
    #: How late each request was issued after its scheduled time, in schedule order.
    #: Large values mean the generator itself could not keep up (its core was busy);
    #: the lag is part of the latencies, which are then partly about the generator.
    send_lags: list[float] = field(default_factory=list)
    #: True when ``stop`` ended the run before every scheduled request was sent.
    stopped: bool = False

    @cached_property
    def latencies(self) -> list[float]:
        """Every sample's latency in seconds, sorted.

        Failed requests are included (with the time until they failed): leaving out the
        timeouts would flatter exactly the tail that matters.
        """
        return sorted(sample.latency_s for sample in self.samples)

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile of the latencies, in seconds; see ``percentile``."""
        return percentile(self.latencies, p)

    def send_lag(self, p: float) -> float:
        """Nearest-rank percentile of the send lags, in seconds (0 for no requests)."""
        return percentile(self.send_lags, p) if self.send_lags else 0.0

    @property
    def responses(self) -> int:
        """Requests that got an HTTP response, whatever its status."""
        return sum(1 for sample in self.samples if sample.status is not None)

    @property
    def errors(self) -> int:
        """Requests without a response (timeouts, connection failures) or answered 5xx.

        5xx counts because for a gateway it is the failure it reports (502/504); a
        4xx is a bad request from the client, which a benchmark URL should not be.
        """
        return sum(
            1
            for sample in self.samples
            if sample.error is not None or (sample.status is not None and sample.status >= 500)
        )

    @property
    def partial_share(self) -> float:
        """The share (0 to 1) of responses that carried ``Gateway-Partial``."""
        responses = self.responses
        if responses == 0:
            return 0.0
        partial = sum(1 for sample in self.samples if sample.partial is not None)
        return partial / responses

    @property
    def achieved_rate(self) -> float:
        """Responses per second over the run (first send to last completion).

        Below ``rate`` when the server answered fewer requests than were sent, or
        answered them late: the run then took longer than ``duration``.
        """
        if self.elapsed_s <= 0:
            return 0.0
        return self.responses / self.elapsed_s

    def status_counts(self) -> dict[str, int]:
        """How many samples got each status, or each error (``"error:timeout"``)."""
        counts: dict[str, int] = {}
        for sample in self.samples:
            key = str(sample.status) if sample.status is not None else f"error:{sample.error}"
            counts[key] = counts.get(key, 0) + 1
        return counts


async def run_open_loop(
    url: str,
    *,
    rate: float,
    duration: float,
    headers: dict[str, str] | None = None,
    connections: int = 64,
    # Per request, not for the whole call, so asyncio.timeout around it cannot replace it.
    timeout: float = 5.0,  # noqa: ASYNC109
    on_progress: Callable[[Progress], None] | None = None,
    warmup: float = 0.0,
    method: str = "GET",
    body: bytes | None = None,
    on_sample: Callable[[Sample], None] | None = None,
    stop: asyncio.Event | None = None,
    progress_interval: float = 1.0,
) -> LoadResult:
    """Send ``method`` (GET; or POST with ``body``) to ``url`` at ``rate`` requests per
    second for ``duration`` seconds.

    Requests are due at ``start + i / rate``; each one's latency runs from that moment
    to the end of its response body. At most ``connections`` requests are on the wire
    at once (keep-alive connections, reused); a request due while all are busy waits
    for one, and that wait is part of its latency. ``timeout`` bounds each request from
    when it is issued. ``warmup`` seconds of the same load are sent first on the same
    connections and not recorded, so connection set-up and first-request costs (on both
    sides) stay out of the figures.

    ``on_progress`` is called every ``progress_interval`` seconds and once at the end;
    ``on_sample`` as each measured request completes. Setting ``stop`` ends the run
    early: no further request is sent, the ones in flight are waited for (each bounded
    by ``timeout``, so the slow tail is not dropped from the figures), and the result
    covers the requests that were sent, with ``stopped`` set.
    """
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number, got {rate}")
    if not (duration > 0 and math.isfinite(duration)):
        raise ValueError(f"duration must be a positive number, got {duration}")
    if connections < 1:
        raise ValueError(f"connections must be at least 1, got {connections}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if not (progress_interval > 0 and math.isfinite(progress_interval)):
        raise ValueError(f"progress_interval must be a positive number, got {progress_interval}")

    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, ttl_dns_cache=300)
    async with aiohttp.ClientSession(
        connector=connector,
        # Measure the server, not the client: no cookies carried from one request to the
        # next, no decompression work, and no implicit headers beyond what HTTP needs.
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as session:
        if warmup > 0:
            await _schedule(session, url, rate, warmup, None, method, body, stop=stop)
        return await _schedule(
            session,
            url,
            rate,
            duration,
            on_progress,
            method,
            body,
            on_sample=on_sample,
            stop=stop,
            progress_interval=progress_interval,
        )


async def _schedule(
    session: aiohttp.ClientSession,
    url: str,
    rate: float,
    duration: float,
    on_progress: Callable[[Progress], None] | None,
    method: str = "GET",
    body: bytes | None = None,
    *,
    on_sample: Callable[[Sample], None] | None = None,
    stop: asyncio.Event | None = None,
    progress_interval: float = 1.0,
) -> LoadResult:
    total = max(1, round(rate * duration))
    interval = 1.0 / rate
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Sample]] = []
    counters = _Counters()
    start = _now()
    ticker = None
    if on_progress is not None:
        ticker = loop.create_task(
            _report_progress(on_progress, counters, start, total, progress_interval)
        )
    lags: list[float] = []
    stopped = False
    try:
        for i in range(total):
            # Multiplied, not accumulated: adding ``interval`` n times drifts.
            due = start + i * interval
            if not await _sleep_until(due, stop):
                stopped = True
                # Sending is over: the caller learns how many requests are in flight.
                if on_progress is not None:
                    on_progress(counters.snapshot(_now() - start, total))
                break
            lags.append(_now() - due)
            tasks.append(
                loop.create_task(_one(session, url, due, start, counters, method, body, on_sample))
            )
            counters.sent += 1
        samples = list(await asyncio.gather(*tasks))
    finally:
        # Reached with tasks pending only on cancellation or an unexpected error:
        # never leave requests running behind the caller's back.
        for task in tasks:
            task.cancel()
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    end = max((start + s.scheduled + s.latency_s for s in samples), default=start)
    if on_progress is not None:
        on_progress(counters.snapshot(end - start, total))
    return LoadResult(
        url=url,
        rate=rate,
        duration=duration,
        samples=samples,
        elapsed_s=end - start,
        send_lags=lags,
        stopped=stopped,
    )


#: The longest sleep between two looks at ``stop``: at a low rate the next send can be
#: seconds away, and a stop must not wait for it.
_STOP_POLL_S = 0.1


async def _sleep_until(due: float, stop: asyncio.Event | None) -> bool:
    """Sleep until ``due`` (a ``_now()`` time); False if ``stop`` was set first."""
    # Timers are coarse (uvloop rounds to whole milliseconds), so one sleep can wake a
    # little early; sleep again for the rest rather than send early.
    while (wait := due - _now()) > 0:
        if stop is None:
            await asyncio.sleep(wait)
        elif stop.is_set():
            return False
        else:
            await asyncio.sleep(min(wait, _STOP_POLL_S))
    return stop is None or not stop.is_set()


@dataclass(slots=True)
class _Counters:
    sent: int = 0
    completed: int = 0
    errors: int = 0

    def snapshot(self, elapsed: float, total: int) -> Progress:
        return Progress(elapsed, total, self.sent, self.completed, self.errors)


async def _report_progress(
    on_progress: Callable[[Progress], None],
    counters: _Counters,
    start: float,
    total: int,
    interval: float,
) -> None:
    while True:
        await asyncio.sleep(interval)
        on_progress(counters.snapshot(_now() - start, total))


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    due: float,
    start: float,
    counters: _Counters,
    method: str = "GET",
    body: bytes | None = None,
    on_sample: Callable[[Sample], None] | None = None,
) -> Sample:
    status: int | None = None
    server_timing: str | None = None
    partial: str | None = None
    error: str | None = None
    try:
        async with session.request(method, url, data=body, allow_redirects=False) as response:
            # The whole body is read: a response is not complete until its last byte,
            # and a server that sends headers early must not look faster for it.
            await response.read()
            status = response.status
            response_headers: Mapping[str, str] = response.headers
            server_timing = response_headers.get(SERVER_TIMING_HEADER)
            partial = response_headers.get(PARTIAL_HEADER)
    except TimeoutError:
        error = "timeout"
    except (aiohttp.ClientError, OSError) as exc:
        error = type(exc).__name__
    latency = _now() - due
    counters.completed += 1
    if error is not None or (status is not None and status >= 500):
        counters.errors += 1
    sample = Sample(
        scheduled=due - start,
        latency_s=latency,
        status=status,
        server_timing=server_timing,
        partial=partial,
        error=error,
    )
    if on_sample is not None:
        on_sample(sample)
    return sample
