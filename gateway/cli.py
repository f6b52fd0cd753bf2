"""The ``gateway`` command: run, check, mocks, demo, bench."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from .config import ConfigError, load_config
from .config.loader import LoadedConfig
from .config.units import format_duration
from .credentials_cli import add_commands as add_credential_commands
from .serve import serve, until_stop_signal

DEFAULT_CONFIG = "config/gateway.yaml"


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if not getattr(args, "quiet", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    code = args.func(args)
    sys.exit(code)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="serve with a config file")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="gateway YAML file")
    run.set_defaults(func=_cmd_run)

    check = commands.add_parser("check", help="validate a config file and print its routes")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="gateway YAML file")
    check.set_defaults(func=_cmd_check)

    from examples import services

    mocks = commands.add_parser("mocks", help="run the five sample services")
    services.add_arguments(mocks)
    mocks.set_defaults(func=_cmd_mocks)

    add_credential_commands(commands, DEFAULT_CONFIG)

    demo = commands.add_parser("demo", help="the sample services and the gateway together")
    demo.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="gateway YAML file")
    demo.set_defaults(func=_cmd_demo)

    from .budget import command as bench_command

    bench = commands.add_parser("bench", help="measure where a URL's latency budget goes")
    bench_command.add_arguments(bench)
    bench.set_defaults(func=_cmd_bench)
    return parser


def _load_or_report(path: str) -> LoadedConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path}: the configuration has errors:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return None


def _cmd_check(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config)
    if loaded is None:
        return 1
    config = loaded.config
    rows = []
    for route in config.routes:
        methods = ",".join(route.methods)
        if route.proxy is not None:
            where = route.proxy.upstream or route.proxy.url or ""
            timeout = format_duration(route.proxy.timeout)
            detail = f"proxy -> {where} {route.proxy.path or '(same path)'}  timeout {timeout}"
        else:
            assert route.fanout is not None
            names = []
            for name, backend in route.fanout.backends.items():
                names.append(name + ("*" if backend.required else ""))
            detail = f"fanout -> {', '.join(names)}  budget {format_duration(route.fanout.budget)}"
        if route.auth != "none":
            detail += f"  auth {'|'.join(route.auth)}"
        if route.rate_limit is not None:
            detail += f"  limit by {route.rate_limit.by}"
            if route.rate_limit.cost != 1:
                detail += f" cost {route.rate_limit.cost}"
        rows.append((methods, route.path, route.name or "", detail))
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(3)]
    print(f"{loaded.files[0]}: OK, {len(rows)} routes (* = required part)")
    for row in rows:
        print(f"  {row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config)
    if loaded is None:
        return 1
    return _run_loop(serve(loaded))


def _cmd_mocks(args: argparse.Namespace) -> int:
    from examples import services

    return _run_loop(until_stop_signal(services.run_from_args(args)))


def _cmd_demo(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config)
    if loaded is None:
        return 1
    from .demo import run_demo

    return _run_loop(run_demo(loaded))


def _cmd_bench(args: argparse.Namespace) -> int:
    from .budget.command import run_from_args

    return _run_loop(run_from_args(args))


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every POSIX
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)
