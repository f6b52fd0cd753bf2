"""A real ``redis-server`` for tests, and the pytest fixtures that share it.

``RedisServer`` runs one server on a free ephemeral port of 127.0.0.1, with no
persistence (``--save '' --appendonly no``) and its working folder in a temp dir. It can
be stopped and started again on the same port, so a test can simulate an outage and the
recovery with clients that keep their URL; a stop loses the data.

Fixtures (import them into a ``conftest.py`` to use them in a test folder):

- ``redis_server`` (session): the shared ``RedisServer``, started once.
- ``redis_url`` (function): its URL, after making sure it runs (a test that stopped it
  and failed before starting it again does not break the next ones) and emptying it.
- ``private_redis_server`` (function): a server of the test's own, for tests that stop
  it; the shared one stays up for everyone else.

A missing ``redis-server`` is a failure, not a skip: CI installs it, and a skipped
backend would hide that half of the suite never ran. ``$REDIS_SERVER`` overrides the
executable.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _executable() -> str:
    wanted = os.environ.get("REDIS_SERVER", "redis-server")
    found = shutil.which(wanted)
    if found is None:
        raise FileNotFoundError(
            f"{wanted!r} was not found on PATH: the Redis tests need a real server"
            " (apt-get install redis-server, or set $REDIS_SERVER to its path)"
        )
    return found


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port``, working in ``directory``."""

    def __init__(
        self, directory: Path, port: int | None = None, options: dict[str, str] | None = None
    ) -> None:
        self.directory = directory
        self.port = port if port is not None else _free_port()
        #: More ``redis-server`` options (``unixsocket``, ``tls-port``, ...).
        self.options = dict(options or {})
        self.host = "127.0.0.1"
        self._executable = _executable()
        self._process: subprocess.Popen[bytes] | None = None
        self._log = directory / "redis.log"
        # Teardown normally stops it; this covers an interpreter that exits without it.
        atexit.register(self._kill)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (no-op if it runs) and wait until it answers PING."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        options = {
            "port": str(self.port),
            "bind": self.host,
            "save": "",  # no snapshots, no append-only file: nothing outlives a stop
            "appendonly": "no",
            "dir": str(self.directory),
            "daemonize": "no",
            **self.options,
        }
        argv = [self._executable]
        for name, value in options.items():
            argv += [f"--{name}", value]
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"redis-server exited at start:\n{self._log_tail()}")
            try:
                if self.command("PING") == b"+PONG":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self._kill()
                raise RuntimeError(f"redis-server did not answer PING:\n{self._log_tail()}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop the server (its data is gone); the port stays reserved for ``start``."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    async def astop(self) -> None:
        """``stop`` without blocking the event loop (a gateway may share it)."""
        await asyncio.to_thread(self.stop)

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    def freeze(self) -> None:
        """Stop the process (SIGSTOP): connections stay open and the kernel still
        accepts what clients write, but nothing is read or answered until ``thaw``."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def flush(self) -> None:
        reply = self.command("FLUSHALL")
        if reply != b"+OK":
            raise RuntimeError(f"FLUSHALL answered {reply!r}")

    def command(self, *args: str) -> bytes:
        """Send one command; the first line of the reply (enough for status replies)."""
        payload = f"*{len(args)}\r\n".encode()
        for arg in args:
            data = arg.encode()
            payload += b"$%d\r\n%s\r\n" % (len(data), data)
        with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
            sock.sendall(payload)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("redis-server closed the connection")
                reply += chunk
        return reply.split(b"\r\n", 1)[0]

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def _log_tail(self) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"


def _started(directory: Path) -> RedisServer:
    problem = ""
    # Another process may take the free port before redis-server binds it: try anew.
    for _ in range(3):
        try:
            server = RedisServer(directory)
            server.start()
        except FileNotFoundError as exc:
            problem = str(exc)
            break
        except RuntimeError as exc:
            problem = str(exc)
        else:
            return server
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = _started(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def private_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = _started(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()
