"""The Redis limiter's own connection (``ratelimit/wire.py``), on real redis-servers:
commands pipelined and answered in order, the URL's password, database, socket and TLS,
a script cache flushed under load, and a Redis that answers late."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis.asyncio import Redis

from gateway.policies.ratelimit.arithmetic import Limit
from gateway.policies.ratelimit.stores import RedisLimiterStore
from gateway.policies.ratelimit.wire import RedisTarget
from gateway.stores.base import StoreError
from tests.redis_server import RedisServer, _free_port

MINUTE_RATE = 1 / 60  # one unit a minute: nothing refills during a test


def rate(burst: int) -> Limit:
    return Limit("burst", "rate", MINUTE_RATE, burst, 0.0)


async def remaining(store: RedisLimiterStore, subject: str, burst: int) -> int:
    decision = await store.decide([f"{{rl:{subject}}}:burst"], [rate(burst)], 1)
    assert decision.admitted
    return decision.outcomes[0].remaining


@pytest.fixture
async def inspect(private_redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(private_redis_server.url)
    yield client
    await client.aclose()


async def test_decisions_asked_together_each_get_their_own_answer(
    private_redis_server: RedisServer,
) -> None:
    store = RedisLimiterStore.from_url(private_redis_server.url, timeout=2.0)
    try:
        await store.warm_up(2.0)
        # Subject n has a burst of n + 1, so its first decision leaves exactly n: an
        # answer read for the wrong command shows.
        answers = await asyncio.gather(*(remaining(store, f"s{n}", n + 1) for n in range(300)))
        assert answers == list(range(300))
        # And the next ones, asked one at a time, go out at once.
        assert [await remaining(store, "alone", 3) for _ in range(3)] == [2, 1, 0]
    finally:
        await store.close()


async def test_a_script_cache_flushed_under_load_is_loaded_again_once_per_batch(
    private_redis_server: RedisServer, inspect: Redis
) -> None:
    store = RedisLimiterStore.from_url(private_redis_server.url, timeout=2.0)
    try:
        await store.warm_up(2.0)
        await inspect.script_flush()
        before = await inspect.info("commandstats")
        answers = await asyncio.gather(*(remaining(store, f"f{n}", n + 1) for n in range(50)))
        assert answers == list(range(50))
        after = await inspect.info("commandstats")
        loads = (
            after["cmdstat_script|load"]["calls"]
            - before.get("cmdstat_script|load", {"calls": 0})["calls"]
        )
        # Every NOSCRIPT in one chunk of replies shares one SCRIPT LOAD, sent ahead of
        # the retried commands on the same connection.
        assert 1 <= loads <= 3, loads
    finally:
        await store.close()


async def test_the_urls_password_user_and_database_are_used(
    private_redis_server: RedisServer,
) -> None:
    server = private_redis_server
    assert server.command("ACL", "SETUSER", "limiter", "on", ">li-pass", "~*", "+@all") == b"+OK"
    assert server.command("CONFIG", "SET", "requirepass", "s3cret") == b"+OK"
    admin = Redis(host=server.host, port=server.port, password="s3cret", db=3)
    try:
        for subject, url in (
            ("password", f"redis://:s3cret@{server.host}:{server.port}/3"),
            ("user", f"redis://limiter:li-pass@{server.host}:{server.port}/3"),
        ):
            store = RedisLimiterStore.from_url(url, timeout=2.0)
            try:
                assert await remaining(store, subject, 5) == 4
            finally:
                await store.close()
        assert await admin.exists("{rl:password}:burst", "{rl:user}:burst") == 2
        wrong = RedisLimiterStore.from_url(
            f"redis://:not-it@{server.host}:{server.port}/3", timeout=2.0
        )
        try:
            with pytest.raises(StoreError) as caught:
                await remaining(wrong, "nope", 5)
            assert "WRONGPASS" in str(caught.value) or "invalid" in str(caught.value)
            assert "not-it" not in str(caught.value)
        finally:
            await wrong.close()
    finally:
        await admin.aclose()


async def test_a_unix_socket_url(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(tmp_path / "unix", options={"unixsocket": str(socket_path)})
    server.start()
    try:
        store = RedisLimiterStore.from_url(f"unix://{socket_path}?db=2", timeout=2.0)
        try:
            assert await remaining(store, "u", 5) == 4
            assert await remaining(store, "u", 5) == 3
        finally:
            await store.close()
        client = Redis(unix_socket_path=str(socket_path), db=2)
        try:
            assert await client.exists("{rl:u}:burst") == 1
        finally:
            await client.aclose()
    finally:
        server.stop()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "redis.crt", tmp_path / "redis.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_a_tls_url_verifies_the_server(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cert_file, key_file = tls_files
    tls_port = _free_port()
    server = RedisServer(
        tmp_path / "tls",
        options={
            "tls-port": str(tls_port),
            "tls-cert-file": str(cert_file),
            "tls-key-file": str(key_file),
            "tls-ca-cert-file": str(cert_file),
            "tls-auth-clients": "no",
        },
    )
    server.start()
    try:
        base = f"rediss://127.0.0.1:{tls_port}/0"
        trusted = RedisLimiterStore.from_url(f"{base}?ssl_ca_certs={cert_file}", timeout=2.0)
        try:
            assert await remaining(trusted, "t", 5) == 4
        finally:
            await trusted.close()
        # The certificate is not one the system trusts: refused unless told otherwise.
        untrusted = RedisLimiterStore.from_url(base, timeout=2.0)
        try:
            with pytest.raises(StoreError) as caught:
                await remaining(untrusted, "t", 5)
            assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
        finally:
            await untrusted.close()
        unverified = RedisLimiterStore.from_url(f"{base}?ssl_cert_reqs=none", timeout=2.0)
        try:
            assert await remaining(unverified, "t", 5) == 3
        finally:
            await unverified.close()
    finally:
        server.stop()


async def test_a_stall_past_the_slice_fails_in_time_and_leaves_that_connection(
    private_redis_server: RedisServer, inspect: Redis
) -> None:
    """Redis stops answering (``CLIENT PAUSE``, a real stall) past a decision's slice:
    the decision fails in time and its connection is dropped rather than trusted
    again; later decisions go on a new one and each reads its own answer."""
    store = RedisLimiterStore.from_url(private_redis_server.url, timeout=0.3)
    try:
        await store.warm_up(2.0)
        assert await remaining(store, "late", 5) == 4
        connections = (await inspect.info("stats"))["total_connections_received"]
        await inspect.client_pause(700, all=True)
        started = time.monotonic()
        with pytest.raises(StoreError, match="did not answer in time"):
            await remaining(store, "late", 5)
        assert 0.25 < time.monotonic() - started < 0.5
        await asyncio.sleep(0.5)  # the pause is over
        left = await remaining(store, "late", 5)
        # The stalled command ran once the pause ended, or was dropped with its
        # connection: 3 or 2 left.
        assert left in (2, 3), left
        assert await remaining(store, "late", 5) == left - 1
        # One new connection: the limiter's (``inspect`` keeps its own).
        now = (await inspect.info("stats"))["total_connections_received"]
        assert now - connections == 1
    finally:
        await store.close()


async def test_a_decision_timed_out_in_a_frozen_redis_counts_when_it_wakes(
    private_redis_server: RedisServer,
) -> None:
    """Redis stops dead (SIGSTOP) with a decision written to it: the decision fails in
    time and the connection is dropped, but the command is in Redis's socket already
    and runs when Redis wakes (docs/rate-limiting.md says so). The store connects
    again and each later decision reads its own answer."""
    store = RedisLimiterStore.from_url(private_redis_server.url, timeout=0.3)
    try:
        await store.warm_up(2.0)
        assert await remaining(store, "frozen", 5) == 4
        private_redis_server.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match="did not answer in time"):
                await remaining(store, "frozen", 5)
            assert time.monotonic() - started < 0.5
        finally:
            private_redis_server.thaw()
        assert [await remaining(store, "frozen", 5) for _ in range(2)] == [2, 1]
    finally:
        await store.close()


def test_the_url_is_read_once_and_its_password_never_shown() -> None:
    target = RedisTarget("redis://user:pw-1@redis.internal:6380/4")
    assert (target.host, target.port, target.path, target.ssl) == (
        "redis.internal",
        6380,
        None,
        None,
    )
    assert target.handshake == [
        b"*3\r\n$4\r\nAUTH\r\n$4\r\nuser\r\n$4\r\npw-1\r\n",
        b"*2\r\n$6\r\nSELECT\r\n$1\r\n4\r\n",
    ]
    assert "pw-1" not in target.describe()
    with pytest.raises(ValueError):
        RedisTarget("http://not-redis/")
    # Read by redis-py: its TLS options as it reads them, its refusals too.
    tls = RedisTarget("rediss://10.0.0.5:6380/0?ssl_check_hostname=false&ssl_cert_reqs=optional")
    assert tls.ssl is not None
    assert (tls.ssl.check_hostname, tls.ssl.verify_mode) == (False, ssl.CERT_OPTIONAL)
    assert RedisTarget("rediss://redis.internal/0").ssl.check_hostname  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        RedisTarget("redis://redis.internal/0?path=/tmp/redis.sock")


async def _swallowing_server() -> tuple[asyncio.Server, int, list[int]]:
    """Accepts connections and never answers: a hung Redis (or a stalled path to one).
    The list counts the connections made to it."""
    connections = [0]

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        while await reader.read(4096):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], connections


async def test_a_decision_asked_while_connecting_gets_a_deadline_of_its_own() -> None:
    """The connection's handshake hangs (AUTH never answered), for longer than a slice.
    A decision asked after the first one's slice ran out, still before the connection
    is made, fails in its own slice: it does not join the first one's spent batch."""
    server, port, _ = await _swallowing_server()
    store = RedisLimiterStore.from_url(f"redis://:pw@127.0.0.1:{port}/0", timeout=0.1)
    try:
        first = asyncio.ensure_future(remaining(store, "a", 5))
        await asyncio.sleep(0.15)
        assert first.done()
        assert isinstance(first.exception(), StoreError)
        started = time.monotonic()
        with pytest.raises(StoreError, match="did not answer in time"):
            await remaining(store, "b", 5)
        assert 0.05 < time.monotonic() - started < 0.2
    finally:
        await store.close()
        server.close()


async def _delaying_proxy(target_port: int, delay: float) -> tuple[asyncio.Server, int, list[int]]:
    """A TCP proxy to ``target_port`` that holds every chunk ``delay`` seconds each
    way: a link with a round trip of 2 x ``delay``. Counts its connections."""
    connections = [0]

    async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            await asyncio.sleep(delay)
            sink.write(data)
        sink.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pump(reader, upstream_writer), pump(upstream_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], connections


async def test_a_connection_slower_to_make_than_a_slice_is_made_and_then_used(
    private_redis_server: RedisServer,
) -> None:
    """A 200 ms round trip and a 300 ms slice: a decision fits, but connecting (TCP,
    then AUTH and SELECT) does not. The first decision, which waited for the
    connection, fails; the connection is made anyway and kept, and the next decisions
    are answered on it."""
    assert private_redis_server.command("CONFIG", "SET", "requirepass", "s3cret") == b"+OK"
    proxy, port, connections = await _delaying_proxy(private_redis_server.port, 0.1)
    store = RedisLimiterStore.from_url(f"redis://:s3cret@127.0.0.1:{port}/2", timeout=0.3)
    try:
        with pytest.raises(StoreError, match="did not answer in time"):
            await remaining(store, "far", 5)
        await asyncio.sleep(0.3)  # the connection is made meanwhile
        left = await remaining(store, "far", 5)
        assert left in (3, 4)  # the first one ran on Redis, late, or it did not
        assert await remaining(store, "far", 5) == left - 1
        assert connections[0] == 1
    finally:
        await store.close()
        proxy.close()


def test_the_store_follows_its_user_to_a_new_event_loop(private_redis_server: RedisServer) -> None:
    store = RedisLimiterStore.from_url(private_redis_server.url, timeout=2.0)
    assert asyncio.run(remaining(store, "loops", 5)) == 4
    # The first loop is closed now, and its connection with it.
    assert asyncio.run(remaining(store, "loops", 5)) == 3
    asyncio.run(store.close())


async def test_a_decision_asked_of_a_closed_store_fails_at_once(
    private_redis_server: RedisServer,
) -> None:
    store = RedisLimiterStore.from_url(private_redis_server.url, timeout=2.0)
    assert await remaining(store, "closed", 5) == 4
    await store.close()
    started = time.monotonic()
    with pytest.raises(StoreError, match="stopped"):
        await remaining(store, "closed", 5)
    assert time.monotonic() - started < 0.1


def test_the_timeout_timer_does_not_spin_on_uvloops_millisecond_clock() -> None:
    """uvloop's clock and timers count whole milliseconds, so the timer that fails late
    decisions can fire a hair before a deadline. It must then count the deadline as
    due, not set itself again for the same instant until the clock ticks."""

    async def main() -> tuple[int, int]:
        server, port, _ = await _swallowing_server()
        store = RedisLimiterStore.from_url(f"redis://127.0.0.1:{port}/0", timeout=0.005)
        wire = store._wire
        wakes = [0]
        reap = wire._reap

        def counted() -> None:
            wakes[0] += 1
            reap()

        wire._reap = counted  # type: ignore[method-assign]  # counts, then calls through
        failures = 0
        try:
            for _ in range(30):
                with contextlib.suppress(StoreError):
                    await remaining(store, "spin", 5)
                failures += 1
        finally:
            await store.close()
            server.close()
        return failures, wakes[0]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        failures, wakes = runner.run(main())
    assert failures == 30
    assert wakes <= 2 * failures, wakes


async def test_a_refused_handshake_leaves_no_failure_unread(
    private_redis_server: RedisServer,
) -> None:
    """A wrong password refuses AUTH, then SELECT and SCRIPT LOAD sent with it: every
    one of those replies is read, so none is reported as a failure nobody retrieved."""
    assert private_redis_server.command("CONFIG", "SET", "requirepass", "right") == b"+OK"
    loop = asyncio.get_running_loop()
    unread: list[str] = []
    loop.set_exception_handler(lambda _, context: unread.append(context["message"]))
    try:

        async def attempts() -> None:
            url = f"redis://:wrong@127.0.0.1:{private_redis_server.port}/2"
            store = RedisLimiterStore.from_url(url, timeout=0.5)
            with pytest.raises(StoreError, match="WRONGPASS"):
                await store.warm_up(1.0)
            for _ in range(3):
                with pytest.raises(StoreError, match="WRONGPASS"):
                    await remaining(store, "refused", 5)
            await store.close()

        await attempts()
        gc.collect()  # an unread failure is reported when its future is collected
        assert unread == []
    finally:
        loop.set_exception_handler(None)
