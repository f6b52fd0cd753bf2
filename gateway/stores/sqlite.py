"""``CredentialStore`` in one SQLite file: the default for a single node.

The file is shared by the gateway and the ``gateway keys`` CLI, often at the same time,
so it runs in WAL mode (readers never wait for the writer) with a busy timeout (a
writer waits for another process's write instead of failing at once). Durability is
``synchronous=NORMAL``: in WAL mode a commit survives a process crash, and only a
power cut can lose the last commits, which is an acceptable trade for credentials that
an operator can issue again.

Layout (schema version 1, recorded in ``schema_version`` so later versions can
migrate; a file written by a newer version is refused rather than misread)::

    consumers     (id PK, plan, created_at)
    api_keys      (key_id PK, consumer_id, secret_hash, pepper_version, scopes,
                   created_at, expires_at, revoked_at, last_used_at, rotated_from)
    clients       (client_id PK, consumer_id, secret_hash, pepper_version, scopes,
                   created_at, revoked_at)
    signing_keys  (kid PK, algorithm, private_pem BLOB, created_at, retired_at,
                   publish_until)

Timestamps are REAL (a float round-trips exactly), "never" is NULL, scopes are a JSON
array (lossless whatever the scope strings hold). Lists are oldest first, ties broken by
id, the same order as ``RedisCredentialStore``.

The file holds private signing keys, so it is created owner-only (0600) before SQLite
first opens it; SQLite gives its ``-wal`` and ``-shm`` files the same mode.

Every call goes through aiosqlite's worker thread, so the event loop never waits on the
disk. The connection is in autocommit mode: each single-statement write is committed
at once. ``touch_api_keys`` is one explicit transaction; writes are serialised by an
``asyncio.Lock`` so a statement from another task cannot land inside that transaction
(one connection is shared by every task of the process).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiosqlite

from .base import ApiKeyRecord, ClientRecord, ConsumerRecord, SigningKeyRecord, StoreError

SCHEMA_VERSION = 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS consumers (
        id TEXT PRIMARY KEY,
        plan TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS api_keys (
        key_id TEXT PRIMARY KEY,
        consumer_id TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        pepper_version INTEGER NOT NULL,
        scopes TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked_at REAL,
        last_used_at REAL,
        rotated_from TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS api_keys_consumer ON api_keys (consumer_id)",
    """CREATE TABLE IF NOT EXISTS clients (
        client_id TEXT PRIMARY KEY,
        consumer_id TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        pepper_version INTEGER NOT NULL,
        scopes TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL
    )""",
    """CREATE TABLE IF NOT EXISTS signing_keys (
        kid TEXT PRIMARY KEY,
        algorithm TEXT NOT NULL,
        private_pem BLOB NOT NULL,
        created_at REAL NOT NULL,
        retired_at REAL,
        publish_until REAL
    )""",
)


def _scopes_out(scopes: Sequence[str]) -> str:
    return json.dumps(list(scopes))


def _scopes_in(text: str) -> tuple[str, ...]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise StoreError(f"malformed scopes in the credential store: {text!r}")
    return tuple(value)


def _api_key(row: Sequence[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row[0],
        consumer_id=row[1],
        secret_hash=row[2],
        pepper_version=row[3],
        scopes=_scopes_in(row[4]),
        created_at=row[5],
        expires_at=row[6],
        revoked_at=row[7],
        last_used_at=row[8],
        rotated_from=row[9],
    )


def _client(row: Sequence[Any]) -> ClientRecord:
    return ClientRecord(
        client_id=row[0],
        consumer_id=row[1],
        secret_hash=row[2],
        pepper_version=row[3],
        scopes=_scopes_in(row[4]),
        created_at=row[5],
        revoked_at=row[6],
    )


def _signing_key(row: Sequence[Any]) -> SigningKeyRecord:
    return SigningKeyRecord(
        kid=row[0],
        algorithm=row[1],
        private_pem=bytes(row[2]),
        created_at=row[3],
        retired_at=row[4],
        publish_until=row[5],
    )


async def _run(db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> None:
    """Execute a statement whose rows, if any, are not wanted, and close its cursor."""
    async with db.execute(sql, params):
        pass


def _create_owner_only(path: Path) -> None:
    """Create the parent folder (mode left to the umask) and an empty 0600 file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: if another process creates the file first, its mode stands.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


class SqliteCredentialStore:
    """Credentials in the SQLite file at ``path``; one connection per store object.

    ``busy_timeout`` is how long (seconds) a write waits for another process's write
    lock before failing with ``StoreError``.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # lifecycle

    async def open(self) -> None:
        if self._db is not None:
            return
        try:
            await asyncio.to_thread(_create_owner_only, self.path)
            db = await aiosqlite.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the credential store {self.path}: {exc}") from exc
        try:
            await self._prepare(db)
        except BaseException as exc:
            # The worker thread is not a daemon: it must be stopped on every path.
            with contextlib.suppress(sqlite3.Error, ValueError):
                await db.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open the credential store {self.path}: {exc}") from exc
            raise
        self._db = db

    async def _prepare(self, db: aiosqlite.Connection) -> None:
        await _run(db, "PRAGMA journal_mode = WAL")
        await _run(db, "PRAGMA synchronous = NORMAL")
        # IMMEDIATE: two processes opening a new file at once create the schema in turn.
        await _run(db, "BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                await _run(db, statement)
            rows = list(await db.execute_fetchall("SELECT MAX(version) FROM schema_version"))
            version = rows[0][0]
            if version is None:
                await _run(db, "INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}; this gateway knows"
                    f" versions up to {SCHEMA_VERSION}"
                )
            await _run(db, "COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await _run(db, "ROLLBACK")
            raise

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                await db.close()
            except sqlite3.Error as exc:
                raise StoreError(f"closing the credential store failed: {exc}") from exc

    # plumbing

    @contextlib.asynccontextmanager
    async def _connection(self, *, write: bool = False) -> AsyncIterator[aiosqlite.Connection]:
        if self._db is None:
            raise StoreError("the SQLite credential store is not open")
        db = self._db
        try:
            if write:
                async with self._write_lock:
                    yield db
            else:
                yield db
        except sqlite3.IntegrityError:
            raise  # a duplicate id: the caller turns it into ValueError
        except (sqlite3.Error, ValueError) as exc:
            # ValueError: aiosqlite's "Connection closed" when close() raced a call.
            raise StoreError(f"credential store {self.path}: {exc}") from exc

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._connection() as db:
            return list(await db.execute_fetchall(sql, params))

    async def _change(self, sql: str, params: Sequence[Any]) -> bool:
        """Run one write statement; True when it changed a row."""
        async with self._connection(write=True) as db, db.execute(sql, params) as cursor:
            return cursor.rowcount > 0

    async def _insert(self, what: str, ident: str, sql: str, params: Sequence[Any]) -> None:
        try:
            await self._change(sql, params)
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"{what} {ident!r} exists already") from exc

    # consumers

    async def upsert_consumer(self, consumer: ConsumerRecord) -> None:
        # An existing consumer keeps its created_at: only the plan is updated.
        await self._change(
            "INSERT INTO consumers (id, plan, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET plan = excluded.plan",
            (consumer.id, consumer.plan, consumer.created_at),
        )

    async def get_consumer(self, consumer_id: str) -> ConsumerRecord | None:
        rows = await self._fetch(
            "SELECT id, plan, created_at FROM consumers WHERE id = ?", (consumer_id,)
        )
        return ConsumerRecord(*rows[0]) if rows else None

    async def list_consumers(self) -> list[ConsumerRecord]:
        rows = await self._fetch(
            "SELECT id, plan, created_at FROM consumers ORDER BY created_at, id"
        )
        return [ConsumerRecord(*row) for row in rows]

    # API keys

    async def add_api_key(self, record: ApiKeyRecord) -> None:
        await self._insert(
            "API key",
            record.key_id,
            "INSERT INTO api_keys (key_id, consumer_id, secret_hash, pepper_version, scopes,"
            " created_at, expires_at, revoked_at, last_used_at, rotated_from)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.key_id,
                record.consumer_id,
                record.secret_hash,
                record.pepper_version,
                _scopes_out(record.scopes),
                record.created_at,
                record.expires_at,
                record.revoked_at,
                record.last_used_at,
                record.rotated_from,
            ),
        )

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        rows = await self._fetch(
            "SELECT key_id, consumer_id, secret_hash, pepper_version, scopes, created_at,"
            " expires_at, revoked_at, last_used_at, rotated_from"
            " FROM api_keys WHERE key_id = ?",
            (key_id,),
        )
        return _api_key(rows[0]) if rows else None

    async def list_api_keys(self, consumer_id: str | None = None) -> list[ApiKeyRecord]:
        if consumer_id is None:
            rows = await self._fetch(
                "SELECT key_id, consumer_id, secret_hash, pepper_version, scopes, created_at,"
                " expires_at, revoked_at, last_used_at, rotated_from"
                " FROM api_keys ORDER BY created_at, key_id"
            )
        else:
            rows = await self._fetch(
                "SELECT key_id, consumer_id, secret_hash, pepper_version, scopes, created_at,"
                " expires_at, revoked_at, last_used_at, rotated_from"
                " FROM api_keys WHERE consumer_id = ?"
                " ORDER BY created_at, key_id",
                (consumer_id,),
            )
        return [_api_key(row) for row in rows]

    async def set_api_key_expiry(self, key_id: str, expires_at: float | None) -> bool:
        return await self._change(
            "UPDATE api_keys SET expires_at = ? WHERE key_id = ?", (expires_at, key_id)
        )

    async def revoke_api_key(self, key_id: str, at: float) -> bool:
        return await self._change(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
            (at, key_id),
        )

    async def touch_api_keys(self, last_used: dict[str, float]) -> None:
        """Unknown ids are ignored; a time never moves backwards (batches from several
        nodes, or a batch retried after a failure, may arrive out of order)."""
        if not last_used:
            return
        params: Iterable[tuple[float, str, float]] = [
            (at, key_id, at) for key_id, at in last_used.items()
        ]
        async with self._connection(write=True) as db:
            await _run(db, "BEGIN IMMEDIATE")
            try:
                async with db.executemany(
                    "UPDATE api_keys SET last_used_at = ?"
                    " WHERE key_id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                    params,
                ):
                    pass
                await _run(db, "COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await _run(db, "ROLLBACK")
                raise

    # OAuth clients

    async def add_client(self, record: ClientRecord) -> None:
        await self._insert(
            "client",
            record.client_id,
            "INSERT INTO clients (client_id, consumer_id, secret_hash, pepper_version, scopes,"
            " created_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                record.client_id,
                record.consumer_id,
                record.secret_hash,
                record.pepper_version,
                _scopes_out(record.scopes),
                record.created_at,
                record.revoked_at,
            ),
        )

    async def get_client(self, client_id: str) -> ClientRecord | None:
        rows = await self._fetch(
            "SELECT client_id, consumer_id, secret_hash, pepper_version, scopes, created_at,"
            " revoked_at FROM clients WHERE client_id = ?",
            (client_id,),
        )
        return _client(rows[0]) if rows else None

    async def list_clients(self) -> list[ClientRecord]:
        rows = await self._fetch(
            "SELECT client_id, consumer_id, secret_hash, pepper_version, scopes, created_at,"
            " revoked_at FROM clients ORDER BY created_at, client_id"
        )
        return [_client(row) for row in rows]

    async def revoke_client(self, client_id: str, at: float) -> bool:
        return await self._change(
            "UPDATE clients SET revoked_at = ? WHERE client_id = ? AND revoked_at IS NULL",
            (at, client_id),
        )

    # signing keys

    async def add_signing_key(self, record: SigningKeyRecord) -> None:
        await self._insert(
            "signing key",
            record.kid,
            "INSERT INTO signing_keys (kid, algorithm, private_pem, created_at, retired_at,"
            " publish_until) VALUES (?, ?, ?, ?, ?, ?)",
            (
                record.kid,
                record.algorithm,
                record.private_pem,
                record.created_at,
                record.retired_at,
                record.publish_until,
            ),
        )

    async def list_signing_keys(self) -> list[SigningKeyRecord]:
        rows = await self._fetch(
            "SELECT kid, algorithm, private_pem, created_at, retired_at, publish_until"
            " FROM signing_keys ORDER BY created_at, kid"
        )
        return [_signing_key(row) for row in rows]

    async def retire_signing_key(self, kid: str, at: float, publish_until: float) -> bool:
        """True when an active key was retired; False when unknown or retired already."""
        return await self._change(
            "UPDATE signing_keys SET retired_at = ?, publish_until = ?"
            " WHERE kid = ? AND retired_at IS NULL",
            (at, publish_until, kid),
        )

    async def delete_signing_key(self, kid: str) -> bool:
        return await self._change("DELETE FROM signing_keys WHERE kid = ?", (kid,))
