"""Hot reload: watch the config files, and reload on SIGHUP.

Editors save in different ways (in place, or write-then-rename), so the watcher
watches the files' directories and filters by name, and re-reads the list of files
after every reload (an ``include:`` may have been added).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from watchfiles import awatch

from .server import Gateway

log = logging.getLogger("gateway.reload")


async def watch_config(gateway: Gateway, stop: asyncio.Event) -> None:
    while not stop.is_set():
        files = {Path(name) for name in gateway.watched_files}
        folders = sorted({str(path.parent) for path in files})
        async for changes in awatch(
            *folders, stop_event=stop, debounce=100, step=50, recursive=False
        ):
            # Folders come from resolved paths, so the changed paths are comparable as is.
            if any(Path(changed) in files for _, changed in changes):
                await gateway.reload()
                if {Path(name) for name in gateway.watched_files} != files:
                    break  # the set of files changed: watch the new one


def install_reload_signal(gateway: Gateway) -> None:
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[bool]] = set()

    def on_hangup() -> None:
        log.info("SIGHUP: reloading the config")
        task = loop.create_task(gateway.reload())
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
