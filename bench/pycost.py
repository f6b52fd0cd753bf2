"""Python instructions per request: what a feature adds to the gateway's own work, free
of machine noise.

The throughput ratios of ``bench.run`` are the bars, but on a shared VM one round can
move them by 10 % and the whole machine's speed shifts them (a slow network stack makes
every route's base cost larger and every ratio closer to 1). This counts, for one
request at a time over a keep-alive connection, the bytecode instructions the gateway's
process runs, with ``sys.settrace`` opcode events: the same code gives the same count on
any machine, so a change to the request path shows as a number before and after.

It counts Python only: C work (parsing, orjson, multidict, the event loop, syscalls)
is not in it, so it ranks Python-side changes and is not a time.

    .venv/bin/python -m bench.pycost            # d, i, q, r, j: 200 requests each
    .venv/bin/python -m bench.pycost --only d,i --requests 500

The gateway runs in this process, the sample ``users`` service (and j's private
redis-server) in a subprocess, and the client is a few lines of asyncio streams whose
own frames are left out of the count. j's requests come one at a time, so each Redis
decision is a batch of one: under load, batches share a round trip and its Python.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvloop

from bench.configs import proxy_gateway_config, services_command
from bench.processes import PortPicker, Processes, wait_ready
from bench.redis_store import redis_command
from bench.variants import HOST
from gateway.config.loader import load_config
from gateway.server import Gateway

#: The variants counted: (name, the options of d's route that make it).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "d": ("proxy route", {}),
    "i": ("+ rate limit (memory)", {"rate_limits": {"store": "memory"}}),
    "q": ("observability off", {"observability": False}),
    "r": ("+ metrics, tracing, log", {"observability": True, "access_log": "file"}),
    # The Redis URL is filled in with a private redis-server's port.
    "j": ("+ rate limit (Redis)", {"rate_limits": {"store": "redis", "redis_timeout": "50ms"}}),
}
#: Each pair: the figure added by the first over the second.
PAIRS = (("i", "d"), ("j", "d"), ("r", "q"))

#: Frames of the client (this module, asyncio streams) are not the gateway's work.
_CLIENT_FILES = (__file__, "asyncio/streams.py")

Tracer = Callable[[FrameType, str, Any], Any]


class InstructionCounter:
    """Counts the opcodes run by traced frames of this thread, but the client's."""

    def __init__(self) -> None:
        self.count = 0

    def tracer(self, frame: FrameType, event: str, arg: Any) -> Tracer | None:
        if frame.f_code.co_filename.endswith(_CLIENT_FILES):
            return None
        frame.f_trace_opcodes = True
        return self._local

    def _local(self, frame: FrameType, event: str, arg: Any) -> Tracer:
        if event == "opcode":
            self.count += 1
        return self._local


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def count_variant(
    folder: Path, upstream: str, options: dict[str, Any], requests: int
) -> float:
    """Instructions per request of one variant's gateway, after a warm-up."""
    access_log = str(folder / "access.log") if options.get("access_log") == "file" else "off"
    config = proxy_gateway_config(
        folder,
        0,
        upstream,
        access_log,
        rate_limits=options.get("rate_limits"),
        observability=options.get("observability"),
    )
    gateway = Gateway(load_config(config))
    await gateway.start()
    try:
        reader, writer = await asyncio.open_connection(HOST, gateway.port)
        for _ in range(50):  # warm-up: caches, memos, the upstream connection
            assert await _get(reader, writer, "/users/42") == 200
        counter = InstructionCounter()
        previous = sys.gettrace()  # a coverage tool's, say: put back afterwards
        sys.settrace(counter.tracer)
        try:
            for _ in range(requests):
                await _get(reader, writer, "/users/42")
        finally:
            sys.settrace(previous)
        writer.close()
        return counter.count / requests
    finally:
        await gateway.stop()


def measure(only: list[str], requests: int) -> dict[str, float]:
    """Instructions per request of each variant in ``only``, on uvloop."""
    # The event loop the gateway runs on (``gateway run``): uvloop's is C, so its work
    # is not counted; asyncio's own loop would add its Python to every request, a
    # varying amount (how many loop passes a request takes depends on timing).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_main(only, requests))


async def _main(only: list[str], requests: int) -> dict[str, float]:
    ports = PortPicker()
    with tempfile.TemporaryDirectory(prefix="pycost-") as scratch:
        workdir = Path(scratch)
        processes = Processes(workdir)
        port = ports()
        service = processes.start("users", services_command({"users": port}, None, None))
        try:
            wait_ready(service, port)
            counts: dict[str, float] = {}
            for key in only:
                folder = workdir / key
                folder.mkdir()
                options = VARIANTS[key][1]
                if key == "j":
                    redis_port = ports()
                    redis = processes.start("redis", redis_command(folder, redis_port))
                    wait_ready(redis, redis_port)
                    limits = {**options["rate_limits"], "redis_url": f"redis://{HOST}:{redis_port}"}
                    options = {**options, "rate_limits": limits}
                counts[key] = await count_variant(
                    folder, f"http://{HOST}:{port}", options, requests
                )
            return counts
        finally:
            processes.stop_all()


def added(counts: dict[str, float]) -> dict[str, dict[str, float]]:
    """Each measured pair: instructions the first adds over the second, and the share."""
    return {
        f"{more}_minus_{base}": {
            "instructions": round(counts[more] - counts[base], 1),
            "share": round((counts[more] - counts[base]) / counts[base], 4),
        }
        for more, base in PAIRS
        if more in counts and base in counts
    }


def in_subprocess(keys: Sequence[str], requests: int = 200) -> dict[str, Any]:
    """For ``bench.run``: the counts of ``keys``, measured in a process of their own (the
    gateway runs in it), or ``{"error": ...}``. j is left out without a redis-server."""
    if shutil.which(os.environ.get("REDIS_SERVER", "redis-server")) is None:
        keys = [key for key in keys if key != "j"]
    if not keys:
        return {"error": "no variant to count"}
    command = [sys.executable, "-m", "bench.pycost", "--only", ",".join(keys), "--json"]
    command += ["--requests", str(requests)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_SUBPROCESS_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"not done within {_SUBPROCESS_TIMEOUT_S} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip() or f"exit status {done.returncode}")[-800:]}
    counts: dict[str, float] = json.loads(done.stdout)
    return {"requests": requests, "counts": counts, "added": added(counts)}


_SUBPROCESS_TIMEOUT_S = 240


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pycost", description=__doc__)
    parser.add_argument("--only", default=",".join(VARIANTS), help="variants, comma-separated")
    parser.add_argument("--requests", type=int, default=200, help="counted per variant")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    args = parser.parse_args(argv)
    only = [key for key in args.only.split(",") if key]
    unknown = [key for key in only if key not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants: {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    counts = measure(only, args.requests)
    if args.json:
        print(json.dumps(counts))
        return 0
    print("Python instructions per request (sys.settrace opcode events; C work not counted)")
    for key, value in counts.items():
        print(f"  {key}  {VARIANTS[key][0]:28s} {value:8.0f}")
    for added, base in PAIRS:
        if added in counts and base in counts:
            extra = counts[added] - counts[base]
            print(f"  {added} - {base}: {extra:+.0f} ({extra / counts[base]:+.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
