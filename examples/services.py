"""Sample downstream services to run the gateway in front of.

Five kinds of service (users, orders, recommendations, inventory, notifications) answer
JSON derived only from the ids in the request, so the same request always gets the same
body. Each service also has a latency distribution and an error rate, set from the
command line and changeable at run time through ``/_control``, which is how the
gateway's timeouts, retries and fan-out budgets are exercised by hand:

    python -m examples.services --latency orders=500ms --error-rate inventory=0.1
    curl -X PUT localhost:9102/_control -d '{"latency": "50ms", "p99": "2s"}'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import web

from .app import CONTROL_PATH, DEFAULT_PORTS, KINDS, MAX_ITEMS, make_app
from .behaviour import Behaviour, FieldError, parse_duration_ms, parse_duration_s, parse_error_rate

__all__ = [
    "CONTROL_PATH",
    "DEFAULT_PORTS",
    "KINDS",
    "MAX_ITEMS",
    "Behaviour",
    "FieldError",
    "ServiceGroup",
    "add_arguments",
    "behaviours_from_args",
    "make_app",
    "parse_duration_ms",
    "parse_error_rate",
    "run_from_args",
    "start_services",
]

_T = TypeVar("_T")

# --- Running ---------------------------------------------------------------------------


@dataclass
class ServiceGroup:
    """Services running in the current event loop, with the port each one is bound to."""

    host: str
    ports: dict[str, int] = field(default_factory=dict)
    _runners: list[web.AppRunner] = field(default_factory=list, repr=False)

    def url(self, kind: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.ports[kind]}"

    async def close(self) -> None:
        while self._runners:
            await self._runners.pop().cleanup()


async def start_services(
    host: str,
    ports: dict[str, int],
    behaviours: dict[str, Behaviour] | None = None,
    seed: int | None = None,
) -> ServiceGroup:
    """Start the services named in ``ports`` (port 0 picks a free one) on ``host``.

    Kinds without a behaviour add no latency and no errors.
    """
    behaviours = behaviours or {}
    group = ServiceGroup(host)
    try:
        for kind, port in ports.items():
            # One generator per service, so traffic to one does not shift another's samples.
            rng = random.Random(None if seed is None else f"{seed}:{kind}")
            # No access log: these are load-test targets and the gateway logs requests itself.
            runner = web.AppRunner(make_app(kind, behaviours.get(kind), rng), access_log=None)
            await runner.setup()
            group._runners.append(runner)
            await web.TCPSite(runner, host, port).start()
            group.ports[kind] = runner.addresses[0][1]
    except BaseException:
        await group.close()
        raise
    return group


def _arg_type(parse: Callable[[str], _T]) -> Callable[[str], _T]:
    # argparse shows an ArgumentTypeError's message, but only a generic one for ValueError.
    def convert(text: str) -> _T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _per_kind(parse: Callable[[str], _T]) -> Callable[[str], tuple[str, _T]]:
    def split(text: str) -> tuple[str, _T]:
        kind, _, value = text.partition("=")
        if kind not in DEFAULT_PORTS:
            raise ValueError(f"expected KIND=VALUE with KIND one of {', '.join(KINDS)}: {text!r}")
        return kind, parse(value)

    return _arg_type(split)


def _kinds(text: str) -> list[str]:
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    if not kinds or not set(kinds) <= set(KINDS):
        raise ValueError(f"expected kinds among {', '.join(KINDS)}: {text!r}")
    return kinds


def _port(text: str) -> int:
    if not (text.isdigit() and int(text) <= 65_535):
        raise ValueError(f"not a port number: {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags read by run_from_args to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    parser.add_argument(
        "--only",
        type=_arg_type(_kinds),
        metavar="KIND[,KIND]",
        help=f"start only these services, among {', '.join(KINDS)} (default: all)",
    )
    per_kind = (
        ("--port", _port, "KIND=PORT", "listen port of a service, 0 for any free one"),
        ("--latency", parse_duration_s, "KIND=DURATION", "median added latency, e.g. orders=500ms"),
        ("--p99", parse_duration_s, "KIND=DURATION", "99th percentile latency, e.g. orders=2s"),
        ("--error-rate", parse_error_rate, "KIND=FRACTION", "share of 5xx answers, e.g. users=0.1"),
    )
    for flag, parse, metavar, help_text in per_kind:
        parser.add_argument(
            flag,
            action="append",
            type=_per_kind(parse),
            metavar=metavar,
            help=f"{help_text} (repeatable)",
        )
    parser.add_argument(
        "--default-latency",
        type=_arg_type(parse_duration_s),
        default="3ms",
        metavar="DURATION",
        help="median latency of services without --latency (%(default)s)",
    )
    parser.add_argument(
        "--default-p99",
        type=_arg_type(parse_duration_s),
        default="8ms",
        metavar="DURATION",
        help="p99 latency of services without --latency or --p99 (%(default)s); "
        "a --latency alone scales it in proportion",
    )
    parser.add_argument("--seed", type=int, help="seed latency and error sampling")


def behaviours_from_args(args: argparse.Namespace) -> dict[str, Behaviour]:
    """The behaviour of every kind; FieldError (a ValueError) if latency and p99 conflict."""
    # --default-p99 has a default of its own, which must not reject a raised --default-latency.
    default = Behaviour(args.default_latency, max(args.default_p99, args.default_latency))
    latency, p99, error_rate = (
        dict(flag or ()) for flag in (args.latency, args.p99, args.error_rate)
    )
    behaviours = {}
    for kind in KINDS:
        try:
            behaviours[kind] = default.with_changes(
                latency.get(kind), p99.get(kind), error_rate.get(kind)
            )
        except FieldError as exc:
            raise FieldError(exc.field, f"{kind}: {exc}") from None
    return behaviours


async def run_from_args(args: argparse.Namespace) -> None:
    """Start the services and print their URLs, then serve until cancelled."""
    overrides = dict(args.port or ())
    ports = {kind: overrides.get(kind, DEFAULT_PORTS[kind]) for kind in args.only or KINDS}
    group = await start_services(args.host, ports, behaviours_from_args(args), args.seed)
    try:
        width = max(map(len, ports))
        for kind in ports:
            print(f"{kind:<{width}}  {group.url(kind)}", flush=True)
        # The caller owns signal handling and stops the services by cancelling this task.
        await asyncio.Event().wait()
    finally:
        await group.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.services", description="Run the sample downstream services."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:  # report conflicting flags as a usage error rather than a traceback
        behaviours_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_from_args(args))


if __name__ == "__main__":
    main()
