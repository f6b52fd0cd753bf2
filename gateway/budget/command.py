"""``gateway bench URL``: the flags, the run with its live progress line, Ctrl-C, outputs.

    gateway bench http://127.0.0.1:8080/v1/dashboard/42 --rate 200 --duration 10s \\
        --budget 50ms --report report.html --json report.json

The table goes to stdout; the progress line and notices go to stderr, so the table
can be piped or saved on its own. The first Ctrl-C stops sending and waits for the
requests in flight (each bounded by ``--timeout``): dropping them would drop exactly
the slowest answers. A second Ctrl-C abandons those too. Either way the figures of
what was answered are printed and written.

Exit status: 0 after a run (finished or stopped), 1 when nothing was answered at all
or an output could not be written, 2 for bad flags, 130 when requests were abandoned.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import math
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, TypeVar

import orjson

from ..config.units import parse_duration
from ..loadgen import LoadResult, Progress, Sample, percentile, run_open_loop
from .analysis import Figures, analyse
from .report import render_report
from .table import format_ms, render_table

__all__ = ["BenchOptions", "Measured", "add_arguments", "measure", "run_from_args", "write_outputs"]

_T = TypeVar("_T")

DEFAULT_BUDGET = 0.050  # the gateway's default fan-out budget, which it does not advertise
PROGRESS_INTERVAL = 0.5
#: Exit status for a run whose in-flight requests were abandoned (128 + SIGINT).
EXIT_ABANDONED = 130


@dataclass(frozen=True, slots=True)
class BenchOptions:
    url: str
    rate: float
    duration: float
    budget: float = DEFAULT_BUDGET
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    connections: int = 64
    timeout: float = 5.0
    warmup: float = 0.0
    report: Path | None = None
    json: Path | None = None


@dataclass(frozen=True, slots=True)
class Measured:
    figures: Figures
    #: Every request, in schedule order: the raw data the JSON output carries.
    samples: list[Sample]


# --- flags -----------------------------------------------------------------------------


def _flag(parse: Callable[[str], _T]) -> Callable[[str], _T]:
    # argparse shows an ArgumentTypeError's own message, only a generic one for ValueError.
    def convert(text: str) -> _T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"must be above zero: {text!r}")
    return seconds


def _rate(text: str) -> float:
    rate = float(text)
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"a rate is a number of requests per second above zero: {text!r}")
    return rate


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    name = name.strip()
    if not colon or not name or any(char in name for char in " \t\r\n"):
        raise ValueError(f"expected 'Name: value', got {text!r}")
    return name, value.strip()


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"expected a whole number above zero, got {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the URL to load, e.g. http://127.0.0.1:8080/v1/dashboard/42")
    parser.add_argument(
        "--rate", type=_flag(_rate), default=100.0, help="requests per second (%(default)g)"
    )
    parser.add_argument(
        "--duration",
        type=_flag(_positive_duration),
        default="10s",
        metavar="DURATION",
        help="how long to send for, e.g. 10s (%(default)s)",
    )
    parser.add_argument(
        "--budget",
        type=_flag(_positive_duration),
        default="50ms",
        metavar="DURATION",
        help="the latency budget to measure against (%(default)s, the gateway's default)",
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        type=_flag(_header),
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header (repeatable)",
    )
    parser.add_argument("--method", help="the request method (GET, or POST with a body)")
    body = parser.add_mutually_exclusive_group()
    body.add_argument("--body", help="the request body, as text")
    body.add_argument(
        "--body-file", type=Path, metavar="PATH", help="the request body, from a file"
    )
    parser.add_argument(
        "--connections",
        type=_flag(_positive_int),
        default=64,
        help="at most this many requests on the wire at once; a request due while all "
        "are busy waits, and the wait counts in its latency (%(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=_flag(_positive_duration),
        default="5s",
        metavar="DURATION",
        help="give up on one request after this long (%(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=_flag(parse_duration),
        default="0s",
        metavar="DURATION",
        help="send at the same rate for this long first, unmeasured (%(default)s)",
    )
    parser.add_argument("--report", type=Path, metavar="PATH", help="write an HTML report here")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures as JSON here")


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """The options of parsed flags; ValueError for what argparse could not check alone."""
    url: str = args.url
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the URL must start with http:// or https://, got {url!r}")
    body: bytes | None = None
    if args.body is not None:
        body = args.body.encode()
    elif args.body_file is not None:
        try:
            body = Path(args.body_file).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read --body-file: {exc}") from None
    method = (args.method or ("POST" if body is not None else "GET")).upper()
    return BenchOptions(
        url=url,
        rate=args.rate,
        duration=args.duration,
        budget=args.budget,
        method=method,
        headers=dict(args.header),
        body=body,
        connections=args.connections,
        timeout=args.timeout,
        warmup=args.warmup,
        report=args.report,
        json=args.json,
    )


# --- the run ---------------------------------------------------------------------------


class _Live:
    """What the run has seen so far: for the progress line and for an abandoned run."""

    def __init__(self, options: BenchOptions, stream: TextIO | None) -> None:
        self.options = options
        self.stream = stream
        self.samples: list[Sample] = []
        #: Where the last progress line's window began in ``samples``.
        self._window_start = 0
        self.sent = 0
        # A terminal gets one line rewritten in place; a file or pipe gets one line each.
        self.in_place = stream is not None and stream.isatty()

    def on_sample(self, sample: Sample) -> None:
        self.samples.append(sample)

    def on_progress(self, progress: Progress) -> None:
        self.sent = progress.sent
        if self.stream is None:
            return
        # The live p99 is over the answers since the last line only: sorting every
        # answer so far would stall the loop that sends the requests (tens of ms at
        # 100k samples), and that stall would land in the latencies being measured.
        latencies = [sample.latency_s for sample in self.samples[self._window_start :]]
        self._window_start = len(self.samples)
        p99 = f"{format_ms(percentile(latencies, 99) * 1000)} ms" if latencies else "-"
        line = (
            f"{progress.elapsed_s:5.1f} s / {self.options.duration:g} s  sent {progress.sent}"
            f"  answered {progress.completed}  errors {progress.errors}  recent p99 {p99}"
        )
        if self.in_place:
            self.stream.write(f"\r{line}\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def end_line(self) -> None:
        if self.in_place and self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()

    def so_far(self) -> LoadResult:
        """A result of the answers seen, for a run cancelled before it could make one."""
        samples = sorted(self.samples, key=lambda sample: sample.scheduled)
        end = max((sample.scheduled + sample.latency_s for sample in samples), default=0.0)
        return LoadResult(
            url=self.options.url,
            rate=self.options.rate,
            duration=self.options.duration,
            samples=samples,
            elapsed_s=end,
            stopped=True,
        )


async def measure(
    options: BenchOptions,
    *,
    stop: asyncio.Event | None = None,
    abandon: asyncio.Event | None = None,
    progress: TextIO | None = None,
) -> Measured:
    """Run the load and analyse it.

    ``stop`` ends the sending early (in-flight requests are waited for); ``abandon``
    also gives up on those, and the figures then cover what was answered.
    """
    live = _Live(options, progress)
    run = asyncio.ensure_future(
        run_open_loop(
            options.url,
            rate=options.rate,
            duration=options.duration,
            headers=options.headers or None,
            connections=options.connections,
            timeout=options.timeout,
            warmup=options.warmup,
            method=options.method,
            body=options.body,
            on_progress=live.on_progress,
            on_sample=live.on_sample,
            stop=stop,
            progress_interval=PROGRESS_INTERVAL,
        )
    )
    abandoned = 0
    try:
        if abandon is None:
            result = await run
        else:
            given_up = asyncio.ensure_future(abandon.wait())
            await asyncio.wait({run, given_up}, return_when=asyncio.FIRST_COMPLETED)
            given_up.cancel()
            if run.done():
                result = run.result()
            else:
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
                abandoned = max(0, live.sent - len(live.samples))
                result = live.so_far()
    finally:
        run.cancel()  # a no-op once done; stops the load if this coroutine is cancelled
        live.end_line()
    figures = analyse(result, options.budget, method=options.method, abandoned=abandoned)
    return Measured(figures, result.samples)


def write_outputs(options: BenchOptions, measured: Measured, *, generated: str = "") -> list[Path]:
    """Write the HTML report and the JSON figures the options ask for; the paths written."""
    written: list[Path] = []
    if options.report is not None:
        options.report.write_text(render_report(measured.figures, generated=generated))
        written.append(options.report)
    if options.json is not None:
        document = {
            "generated": generated,
            **dataclasses.asdict(measured.figures),
            "samples": measured.samples,
        }
        options.json.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
        written.append(options.json)
    return written


async def run_from_args(args: argparse.Namespace) -> int:
    """The command: run, print the table, write the outputs; the exit status."""
    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"gateway bench: {exc}", file=sys.stderr)
        return 2
    stop, abandon = asyncio.Event(), asyncio.Event()

    def on_interrupt() -> None:
        if not stop.is_set():
            stop.set()
            print(
                "\nstopping: no more requests; waiting for those in flight "
                "(Ctrl-C again to abandon them)",
                file=sys.stderr,
            )
        else:
            abandon.set()

    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        handling = True
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
        handling = False
    try:
        measured = await measure(options, stop=stop, abandon=abandon, progress=sys.stderr)
    finally:
        if handling:
            loop.remove_signal_handler(signal.SIGINT)

    print(render_table(measured.figures), end="")
    generated = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        for path in write_outputs(options, measured, generated=generated):
            print(f"wrote {path}", file=sys.stderr)
    except OSError as exc:
        print(f"gateway bench: cannot write an output: {exc}", file=sys.stderr)
        return 1
    if measured.figures.abandoned:
        return EXIT_ABANDONED
    return 0 if measured.figures.responses else 1
