"""One pipelined connection to Redis for the limiter's decisions.

A decision is one pre-encoded ``EVALSHA`` command. Through redis-py each one cost more
Python than the rest of the request's rate limiting together: a task and a timeout
context per batch, and per reply a chain of coroutines around the parser. Here the
commands asked during one pass of the event loop go out in one write, on a connection
that is never waited on: Redis answers in the order it was asked, so each reply,
parsed by hiredis (the parser redis-py uses too), resolves the oldest command still on
the wire. A lone request's command is written in the same loop pass it was asked in.

Every command fails with ``StoreError`` once ``timeout`` has passed since it was asked,
also one still waiting for a connection. One timer keeps that for all of them (they
expire in the order they were asked). When the oldest command on the wire runs out of
time the connection is dropped: Redis is hung or too slow to be of use, and its late
replies must not be read as answers to newer commands. The next command connects again.

The URL is read as redis-py reads it (``redis://``, ``rediss://``, ``unix://``, user,
password and database); of its query options, the TLS ones are used
(``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from ...stores.base import StoreError

#: A command on its way: its bytes, the future its reply resolves, and whether it was
#: already sent again after a ``NOSCRIPT`` (it is not sent a third time).
_Sent = tuple[bytes, "asyncio.Future[Any]", bool]


def encode_command(*args: str | bytes | int) -> bytes:
    """A command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(out)


def _answered(batch: list[_Sent]) -> bool:
    for _, future, _ in batch:  # noqa: SIM110 - a loop, not a generator per batch
        if not future.done():
            return False
    return True


class RedisTarget:
    """Where and how to connect, read once from the URL."""

    def __init__(self, url: str) -> None:
        params: dict[str, Any] = dict(parse_url(url))  # ValueError: a URL it cannot read
        self.path: str | None = params.get("path")
        if params.get("connection_class") is UnixDomainSocketConnection:
            assert self.path is not None
        self.host: str = params.get("host", "localhost")
        self.port: int = int(params.get("port", 6379))
        self.ssl = _ssl_context(params) if params.get("connection_class") is SSLConnection else None
        #: Sent on every new connection before any decision: AUTH, SELECT.
        self.handshake: list[bytes] = []
        password = params.get("password")
        if password is not None:
            username = params.get("username")
            auth = ("AUTH", username, password) if username else ("AUTH", password)
            self.handshake.append(encode_command(*auth))
        db = int(params.get("db", 0) or 0)
        if db:
            self.handshake.append(encode_command("SELECT", db))

    def describe(self) -> str:
        """For errors: where, never the password."""
        return self.path or f"{self.host}:{self.port}"


def _ssl_context(params: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=params.get("ssl_ca_certs"))
    certfile = params.get("ssl_certfile")
    if certfile:
        context.load_cert_chain(certfile, params.get("ssl_keyfile"))
    required = str(params.get("ssl_cert_reqs", "required")).lower()
    if required in ("none", "cert_none"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif required in ("optional", "cert_optional"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


class _Connection(asyncio.Protocol):
    """The socket's side: replies in, each to the oldest command on the wire."""

    def __init__(self, wire: RedisWire) -> None:
        self._wire = wire
        #: Set as the connection is made.
        self.transport: asyncio.Transport
        self._replies = hiredis.Reader()
        #: Commands written and not yet answered, oldest first.
        self.on_wire: deque[_Sent] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio's, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        replies = self._replies
        on_wire = self.on_wire
        try:
            replies.feed(data)
            reply = replies.gets()
            while reply is not False:
                sent = on_wire.popleft()
                future = sent[1]
                # A decision's reply is a list; anything else is an error or the answer
                # to a handshake or SCRIPT LOAD, looked at more closely.
                if reply.__class__ is list:
                    if not future.done():
                        future.set_result(reply)
                else:
                    self._wire.answered_otherwise(sent, reply)
                reply = replies.gets()
        except (hiredis.ProtocolError, IndexError):
            # Not Redis speaking, or more replies than commands: nothing on this
            # connection can be trusted any more.
            self.drop()

    def connection_lost(self, exc: Exception | None) -> None:
        self._wire.lost(self, exc)

    def drop(self) -> None:
        self.transport.close()
        self._wire.lost(self, None)


class RedisWire:
    """The connection, its writes, its replies and its timeouts (see the module)."""

    def __init__(self, target: RedisTarget, timeout: float, script: str) -> None:
        self._target = target
        self._timeout = timeout
        self._load_script = encode_command("SCRIPT", "LOAD", script)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        #: Commands asked in this loop pass (or while connecting), not yet written: a
        #: batch, written in one go.
        self._outgoing: list[_Sent] = []
        #: Every batch of the last ``timeout``, with when its commands fail, oldest
        #: first. Its commands were asked within one loop pass: one deadline serves.
        self._deadlines: deque[tuple[float, list[_Sent]]] = deque()
        self._reaper: asyncio.TimerHandle | None = None
        self._closed = False

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """``command``'s reply, to be awaited: it fails with ``StoreError`` when Redis
        cannot be reached or does not answer within the timeout."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        outgoing = self._outgoing
        if not outgoing:
            self._start_batch(loop)
        outgoing.append((command, future, False))
        return future

    def _start_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        """The first command of a batch: its deadline, and its write at the end of this
        loop pass, with every command asked in it."""
        deadline = loop.time() + self._timeout
        self._deadlines.append((deadline, self._outgoing))
        if self._reaper is None:
            self._reaper = loop.call_at(deadline, self._reap)
        loop.call_soon(self._write)

    async def warm_up(self, within: float) -> None:
        """Connect and load the script now, bounded by ``within`` rather than by the
        decisions' own timeout: a start may take longer than a decision may wait."""
        try:
            async with asyncio.timeout(within):
                if self._connection is None:
                    self._connection = await self._open_and_greet()
                await self._ask_on(self._connection, self._load_script)
        except TimeoutError as exc:
            raise StoreError(f"redis at {self._target.describe()}: no answer in time") from exc
        except OSError as exc:
            raise StoreError(f"redis at {self._target.describe()}: {exc}") from exc

    def _write(self) -> None:
        batch = self._outgoing
        if not batch or self._closed:
            return
        connection = self._connection
        if connection is None:
            if self._connecting is None:
                assert self._loop is not None
                self._connecting = self._loop.create_task(self._connect())
            return  # written once connected; later commands join this batch
        self._outgoing = []
        # A command that failed (its time ran out while connecting) or was cancelled
        # (its client left) before it could go is not sent: it must not be charged.
        if len(batch) == 1:
            sent = batch[0]
            if not sent[1].done():
                connection.on_wire.append(sent)
                connection.transport.write(sent[0])
            return
        live = [sent for sent in batch if not sent[1].done()]
        if live:
            connection.on_wire.extend(live)
            connection.transport.write(b"".join([sent[0] for sent in live]))

    async def _connect(self) -> None:
        """Connect for the commands waiting in ``_outgoing``, or fail them."""
        try:
            async with asyncio.timeout(self._timeout):
                connection = await self._open_and_greet()
        except (OSError, TimeoutError, StoreError) as exc:
            if isinstance(exc, StoreError):
                error = exc
            else:
                reason = str(exc) or "no answer in time"
                error = StoreError(f"redis at {self._target.describe()}: {reason}")
            self._fail_outgoing(error)
            return
        finally:
            self._connecting = None
        self._connection = connection
        self._write()

    async def _open_and_greet(self) -> _Connection:
        """A new connection, through its handshake (AUTH, SELECT)."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        target = self._target
        factory: Callable[[], _Connection] = lambda: _Connection(self)  # noqa: E731
        if target.path is not None:
            transport, connection = await loop.create_unix_connection(factory, target.path)
        else:
            transport, connection = await loop.create_connection(
                factory, target.host, target.port, ssl=target.ssl
            )
        # uvloop may call ``connection_made`` a moment after this returns.
        connection.transport = transport
        try:
            for command in target.handshake:
                await self._ask_on(connection, command)
        except BaseException:
            connection.drop()
            raise
        return connection

    async def _ask_on(self, connection: _Connection, command: bytes) -> Any:
        """A handshake command on a connection not yet in use: its reply."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        connection.on_wire.append((command, future, True))
        connection.transport.write(command)
        return await future

    def answered_otherwise(self, sent: _Sent, reply: Any) -> None:
        """A reply that is not a decision: an error, or a handshake's or SCRIPT LOAD's."""
        command, future, retried = sent
        if not isinstance(reply, hiredis.ReplyError):
            if not future.done():
                future.set_result(reply)
            return
        if str(reply).startswith("NOSCRIPT") and not retried and not future.done():
            # Redis restarted or its scripts were flushed: load the script, then send
            # the command again, once. On one connection, in order: the load is done
            # before the command runs, with no wait for its reply.
            # The command keeps its first deadline: its first batch still holds it.
            outgoing = self._outgoing
            if not outgoing:
                assert self._loop is not None
                self._start_batch(self._loop)
            if not outgoing or outgoing[0][0] is not self._load_script:
                outgoing.insert(0, (self._load_script, self._unwatched_future(), True))
            outgoing.append((command, future, True))
            return
        if not future.done():
            future.set_exception(StoreError(f"redis: {reply}"))

    def _unwatched_future(self) -> asyncio.Future[Any]:
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        # Nobody awaits a reload's reply: its failure shows as the retried command's.
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        return future

    def lost(self, connection: _Connection, exc: Exception | None) -> None:
        """The connection closed (by Redis, the network, or a drop here)."""
        if self._connection is connection:
            self._connection = None
        reason = f": {exc}" if exc else ""
        error = StoreError(f"redis at {self._target.describe()}: connection lost{reason}")
        while connection.on_wire:
            future = connection.on_wire.popleft()[1]
            if not future.done():
                future.set_exception(error)

    def _reap(self) -> None:
        """Fail the commands whose time is up, and forget the batches answered in full;
        wake again at the deadline of the oldest batch still waiting. (So with Redis
        answering, this wakes about once per ``timeout``, not once per batch.)"""
        assert self._loop is not None
        deadlines = self._deadlines
        now = self._loop.time()
        expired = False
        while deadlines:
            deadline, batch = deadlines[0]
            if deadline <= now:
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(StoreError("redis did not answer in time"))
                        expired = True
            elif not _answered(batch):
                break  # the next wake is at its deadline
            deadlines.popleft()
        connection = self._connection
        if expired and connection is not None and connection.on_wire:
            # The oldest command on the wire was failed just now, or before: this
            # connection has been waiting on Redis for a whole slice.
            oldest = connection.on_wire[0][1]
            if oldest.done():
                connection.drop()
        self._reaper = self._loop.call_at(deadlines[0][0], self._reap) if deadlines else None

    def _fail_outgoing(self, error: StoreError) -> None:
        batch, self._outgoing = self._outgoing, []
        for _, future, _ in batch:
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        stopped = StoreError("the limiter store stopped")
        self._fail_outgoing(stopped)
        if self._connection is not None:
            self._connection.drop()
        for _, batch in self._deadlines:
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(stopped)
        self._deadlines.clear()
