"""One pipelined connection to Redis for the limiter's decisions.

A decision is one pre-encoded ``EVALSHA`` command. Through redis-py each one cost more
Python than the rest of the request's rate limiting together: a task and a timeout
context per batch, and per reply a chain of coroutines around the parser. Here the
commands asked during one turn of the event loop go out in one write at the start of
the next turn, on a connection that is never waited on: Redis answers in the order it
was asked, so each reply, parsed by hiredis (the parser redis-py uses too), resolves the
oldest command still on the wire.

Every command fails with ``StoreError`` once ``timeout`` has passed since it was asked,
also one still waiting for a connection. One timer keeps that for all of them, batch by
batch. When a command on the wire runs out of time the connection is dropped: Redis is
hung or too slow to be of use, and the connection is not trusted again. Connecting runs
on a bound of its own (``CONNECT_TIMEOUT_S``): the commands waiting for it fail at their
own deadlines, and the ones after find the connection made.

The URL is read by redis-py itself (``redis://``, ``rediss://`` with all of redis-py's
``ssl_*`` options, ``unix://``, user, password and database): the same URL means the
same server, certificate checks and credentials as for the health check, which uses
redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import (
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)

from ...stores.base import StoreError

#: A command on its way: its bytes, the future its reply resolves, and whether it was
#: already sent again after a ``NOSCRIPT`` (it is not sent a third time).
_Sent = tuple[bytes, "asyncio.Future[Any]", bool]

#: How long a new connection may take, handshake included (TCP, TLS, AUTH, SELECT):
#: longer than a decision may wait, or a link with a few ms of round trip could never
#: connect again after a drop.
CONNECT_TIMEOUT_S = 2.0
#: uvloop's clock counts whole milliseconds, so a timer fires up to one early: a
#: deadline this close is due (else the reaper would spin until the clock ticks).
_CLOCK_SLACK_S = 0.001


def encode_command(*args: str | bytes | float) -> bytes:
    """A command in RESP: an array of bulk strings."""
    return b"*%d\r\n" % len(args) + bulk_strings(args)


def bulk_strings(args: Sequence[str | bytes | float]) -> bytes:
    """RESP bulk strings; numbers as redis-py encodes them (``repr``)."""
    out = []
    for arg in args:
        if not isinstance(arg, bytes):
            arg = (arg if isinstance(arg, str) else repr(arg)).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


def _answered(batch: list[_Sent]) -> bool:
    for _, future, _ in batch:  # noqa: SIM110 - a loop, not a generator per batch
        if not future.done():
            return False
    return True


class RedisTarget:
    """Where and how to connect, read once from the URL by redis-py."""

    def __init__(self, url: str) -> None:
        params: dict[str, Any] = dict(parse_url(url))  # ValueError: a URL it cannot read
        kind = params.pop("connection_class", Connection)
        try:
            # Built, never connected: what redis-py makes of the URL's options.
            settings = kind(**params)
        except TypeError as exc:  # an option that does not go with the scheme
            raise ValueError(f"redis URL: {exc}") from None
        self.path: str | None = None
        self.host = "localhost"
        self.port = 6379
        self.ssl: ssl.SSLContext | None = None
        if isinstance(settings, UnixDomainSocketConnection):
            self.path = settings.path
        else:
            assert isinstance(settings, Connection)
            self.host, self.port = settings.host, int(settings.port)
            if isinstance(settings, SSLConnection):
                self.ssl = settings.ssl_context.get()
        #: Sent on every new connection before any decision, together: AUTH, SELECT.
        self.handshake: list[bytes] = []
        password, username = settings.password, settings.username
        if password is not None:
            auth = ("AUTH", username, password) if username else ("AUTH", password)
            self.handshake.append(encode_command(*auth))
        if settings.db:
            self.handshake.append(encode_command("SELECT", int(settings.db)))

    def describe(self) -> str:
        """For errors: where, never the password."""
        return self.path or f"{self.host}:{self.port}"


class _Connection(asyncio.Protocol):
    """The socket's side: replies in, each to the oldest command on the wire."""

    def __init__(self, wire: RedisWire) -> None:
        self._wire = wire
        #: Set as the connection is made.
        self.transport: asyncio.Transport
        self._replies = hiredis.Reader()
        #: Commands written and not yet answered, oldest first.
        self.on_wire: deque[_Sent] = deque()
        #: Loop time when it was ready for decisions (handshake done).
        self.ready_at = 0.0

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
        # Abort, not close: close would flush our write buffer first, so commands the
        # kernel had not taken yet would wait for a stalled Redis and run when it
        # wakes. What the kernel has taken is in Redis's socket already and may still
        # run (a reset does not take it back: Redis reads queued data before the
        # error), which is why the docs say a timed-out decision may still count.
        self.transport.abort()
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
        #: The commands asked in this turn of the loop, written together at the start of
        #: the next one (None: no write due yet).
        self._batch: list[_Sent] | None = None
        #: Commands of earlier turns waiting for a connection, oldest first.
        self._waiting: list[_Sent] = []
        #: Every batch of the last ``timeout``, with when its commands fail, oldest
        #: first. Its commands were asked in one turn: one deadline serves them all.
        self._deadlines: deque[tuple[float, list[_Sent]]] = deque()
        self._reaper: asyncio.TimerHandle | None = None
        self._closed = False

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """``command``'s reply, to be awaited: it fails with ``StoreError`` when Redis
        cannot be reached or does not answer within the timeout."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._bind()
        future: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            future.set_exception(StoreError("the limiter store stopped"))
            return future
        batch = self._batch
        if batch is None:
            batch = self._start_batch(loop)
        batch.append((command, future, False))
        return future

    def _bind(self) -> asyncio.AbstractEventLoop:
        """The running loop. On a new one (the last one closed) everything made on the
        old one is gone with it: start afresh."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._forget()
            self._loop = loop
        return loop

    def _forget(self) -> None:
        """Drop what belongs to a closed loop, without touching it."""
        self._connection = None
        self._connecting = None
        self._batch = None
        self._waiting = []
        self._deadlines.clear()
        self._reaper = None

    def _start_batch(self, loop: asyncio.AbstractEventLoop) -> list[_Sent]:
        """This turn's batch: its deadline, and its write at the start of the next turn."""
        batch: list[_Sent] = []
        self._batch = batch
        deadline = loop.time() + self._timeout
        self._deadlines.append((deadline, batch))
        if self._reaper is None:
            self._reaper = loop.call_at(deadline, self._reap)
        loop.call_soon(self._write)
        return batch

    async def warm_up(self, within: float) -> None:
        """Connect and load the script now, bounded by ``within`` rather than by the
        decisions' own timeout: a start may take longer than a decision may wait."""
        self._bind()
        try:
            async with asyncio.timeout(within):
                if self._connection is None:
                    self._connection = await self._open_and_greet()
                else:
                    await self._ask_on(self._connection, [self._load_script])
        except TimeoutError as exc:
            raise StoreError(f"redis at {self._target.describe()}: no answer in time") from exc
        except OSError as exc:
            raise StoreError(f"redis at {self._target.describe()}: {exc}") from exc

    def _write(self) -> None:
        batch = self._batch
        self._batch = None
        if batch is None or self._closed:
            return
        connection = self._connection
        if connection is None:
            self._waiting += batch
            if self._connecting is None:
                assert self._loop is not None
                self._connecting = self._loop.create_task(self._connect())
            return  # written once connected
        _write_on(connection, batch)

    async def _connect(self) -> None:
        """Connect for the commands in ``_waiting``, then write them, or fail them."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                connection = await self._open_and_greet()
        except Exception as exc:  # whatever it was (a bug too), the waiting must hear
            if isinstance(exc, StoreError):
                error = exc
            else:
                reason = str(exc) or "no answer in time"
                error = StoreError(f"redis at {self._target.describe()}: {reason}")
            _fail(self._waiting, error)
            self._waiting = []
            return
        finally:
            self._connecting = None
        self._connection = connection
        waiting, self._waiting = self._waiting, []
        _write_on(connection, waiting)

    async def _open_and_greet(self) -> _Connection:
        """A new connection, through its handshake (AUTH, SELECT) and the script's load:
        a new connection is often to a Redis that restarted, without the script."""
        loop = asyncio.get_running_loop()
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
            await self._ask_on(connection, [*target.handshake, self._load_script])
        except BaseException:
            connection.drop()
            raise
        connection.ready_at = loop.time()
        return connection

    async def _ask_on(self, connection: _Connection, commands: list[bytes]) -> list[Any]:
        """Commands of the gateway's own (a handshake, a script load) sent together on
        ``connection`` at once: their replies. An error reply raises ``StoreError``."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        for command in commands:
            future: asyncio.Future[Any] = loop.create_future()
            connection.on_wire.append((command, future, True))
            futures.append(future)
        connection.transport.write(b"".join(commands))
        # Every reply read, also after a failed one: a failure left unread would be
        # logged as "never retrieved" (after a wrong password, two per attempt).
        replies = await asyncio.gather(*futures, return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    def answered_otherwise(self, sent: _Sent, reply: Any) -> None:
        """A reply that is not a decision: an error, or a handshake's or SCRIPT LOAD's."""
        command, future, retried = sent
        if not isinstance(reply, hiredis.ReplyError):
            if not future.done():
                future.set_result(reply)
            return
        if str(reply).startswith("NOSCRIPT"):
            # The scripts were flushed: load the script (also when this command's time
            # is up: the next ones need it), then send the command again, once. On one
            # connection, in order: the load is done before the command runs, with no
            # wait for its reply. The command keeps its first deadline: its first batch
            # still holds it.
            assert self._loop is not None
            batch = self._batch
            if batch is None:
                batch = self._start_batch(self._loop)
            if not batch or batch[0][0] is not self._load_script:
                batch.insert(0, (self._load_script, self._unwatched_future(), True))
            if not retried and not future.done():
                batch.append((command, future, True))
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
        due = self._loop.time() + _CLOCK_SLACK_S
        connection = self._connection
        timeout = self._timeout
        late_on_wire = False
        while deadlines:
            deadline, batch = deadlines[0]
            if deadline <= due:
                failed = False
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(StoreError("redis did not answer in time"))
                        failed = True
                # Asked while the connection was up, so written at once: Redis has not
                # answered it for a whole slice. (One asked before, which waited for the
                # connection, says nothing against it.)
                if failed and connection is not None:
                    late_on_wire = late_on_wire or deadline - timeout >= connection.ready_at
            elif not _answered(batch):
                break  # the next wake is at its deadline
            deadlines.popleft()
        if late_on_wire and connection is not None:
            connection.drop()  # hung, or too slow to be of use: not trusted again
        self._reaper = self._loop.call_at(deadlines[0][0], self._reap) if deadlines else None

    async def close(self) -> None:
        self._closed = True
        if self._loop is not None and self._loop.is_closed():
            self._forget()  # its loop is gone, and everything with it
            return
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        stopped = StoreError("the limiter store stopped")
        _fail(self._batch or [], stopped)
        _fail(self._waiting, stopped)
        self._batch, self._waiting = None, []
        if self._connection is not None:
            self._connection.drop()
        for _, batch in self._deadlines:
            _fail(batch, stopped)
        self._deadlines.clear()


def _write_on(connection: _Connection, batch: list[_Sent]) -> None:
    """``batch`` written on ``connection`` in one go. A command that failed (its time
    ran out while it waited for a connection) or was cancelled (its client left) before
    it could go is not sent: it must not be charged."""
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


def _fail(batch: list[_Sent], error: StoreError) -> None:
    for _, future, _ in batch:
        if not future.done():
            future.set_exception(error)
