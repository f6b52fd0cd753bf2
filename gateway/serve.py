"""Serving until told to stop: signals, the config watcher, and a clean drain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from .config.loader import LoadedConfig
from .reload import install_reload_signal, watch_config
from .server import Gateway


async def wait_for_stop_signal() -> None:
    """Return on the first SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def until_stop_signal(work: Coroutine[Any, Any, None]) -> int:
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(wait_for_stop_signal())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, stopper):
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
    return 0


#: Container allocations between two young-generation collections (CPython's default
#: is 700). A proxied request frees what it allocates by reference counting, so young
#: collections find nothing to collect, yet each rescans the objects of every request
#: in flight: at 700, on the proxy route, that was 7 to 8 % of the gateway's core
#: (throughput with the collector off against on). Ten thousand keeps the young
#: generation small enough to stay in cache (a hundred thousand measured slower
#: again). The cost: cyclic garbage (an exception's traceback on an error path, say)
#: waits up to 14 times as many allocations to be collected, with whatever it holds;
#: the proxy's success path makes none (no RSS growth over 90,000 requests with the
#: collector off).
YOUNG_GC_THRESHOLD = 10_000


def tune_collector() -> None:
    """Set the cyclic garbage collector for serving, once start-up is done."""
    # Everything allocated so far (modules, config, pools) lives as long as the
    # process: move it out of the collector's sight, so the full collections that
    # request garbage triggers do not rescan it (they showed up as p99 spikes).
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, old)


async def serve(
    loaded: LoadedConfig, on_ready: Callable[[Gateway], Awaitable[None]] | None = None
) -> int:
    """Run a gateway until SIGINT/SIGTERM, reloading on file change and SIGHUP."""
    gateway = Gateway(loaded)
    try:
        await gateway.start()
    except (OSError, ValueError) as exc:
        # A port in use, an empty admin token file: say so plainly, no traceback.
        print(f"gateway: cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    tune_collector()
    listen = loaded.config.server.listen
    print(
        f"gateway listening on http://{listen.host}:{gateway.port} "
        f"({len(gateway.runtime.routes)} routes from {Path(loaded.files[0]).name})",
        file=sys.stderr,
        flush=True,
    )
    if on_ready is not None:
        await on_ready(gateway)
    install_reload_signal(gateway)
    stop_watching = asyncio.Event()
    watcher = None
    if loaded.config.server.watch:
        watcher = asyncio.ensure_future(watch_config(gateway, stop_watching))
    try:
        await wait_for_stop_signal()
    finally:
        print("gateway: draining in-flight requests...", file=sys.stderr, flush=True)
        stop_watching.set()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await gateway.stop()
    return 0
