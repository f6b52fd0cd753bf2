"""API key verification: lookup by public key id, constant-time secret check, caching.

Rules:
- The store is asked at most once per key id per ``cache_ttl`` (positive answers) or
  ``negative_cache_ttl`` (unknown ids), so random keys cannot hammer it; concurrent
  lookups of one id share a single store call. The negative cache is bounded.
- The secret is checked before anything else is said about the key: "revoked" or
  "expired" is only told to someone who holds the whole key.
- A key that verified is remembered (the whole key -> its ``Consumer``) for the same
  ``cache_ttl``, so a client reusing its key pays for one HMAC, not one per request;
  revoking through the admin API drops the entry at once (with the Redis store, a
  revocation by any node or the CLI too, announced on a channel), and expiry is still
  checked.
- Last-use times are kept in memory and written to the store in batches.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from ...context import Clock, Consumer
from ...stores.base import ApiKeyRecord, CredentialStore, StoreError
from .secrets import ApiKey, Peppers


class InvalidCredential(Exception):
    """Why a credential was refused, in words safe to send back to the client."""


class CredentialsUnavailable(Exception):
    """Credentials cannot be checked now (the store, or an issuer's JWKS, is out of
    reach) and nothing cached can answer: 503, never 401."""


_NEGATIVE_LIMIT = 100_000
_VERIFIED_LIMIT = 100_000

#: A key and its consumer's plan, cached together: one lookup answers both.
_Entry = tuple[ApiKeyRecord, str]


class ApiKeyVerifier:
    def __init__(
        self,
        store: CredentialStore,
        peppers: Peppers,
        clock: Clock,
        *,
        cache_ttl: float,
        negative_cache_ttl: float,
        default_plan: str,
    ) -> None:
        self._default_plan = default_plan
        self._store = store
        self._peppers = peppers
        self._clock = clock
        self._ttl = cache_ttl
        self._negative_ttl = negative_cache_ttl
        self._known: dict[str, tuple[_Entry, float]] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._pending: dict[str, asyncio.Future[_Entry | None]] = {}
        # whole key -> (consumer, trusted until (monotonic), expires_at (wall) or None)
        self._verified: dict[str, tuple[Consumer, float, float | None]] = {}
        self._verified_ids: dict[str, str] = {}
        self.last_used: dict[str, float] = {}
        #: Store calls that failed (lookups and last-use flushes), for the metrics.
        self.store_errors = 0
        #: Moves on every invalidation. A store read that began before one may hold what
        #: was just revoked: its answer is used once, never cached.
        self.generation = 0

    def cached(self, credential: str) -> Consumer | None:
        """The consumer of a key that verified recently and is still live."""
        entry = self._verified.get(credential)
        if entry is None:
            return None
        consumer, until, expires_at = entry
        if until <= self._clock.monotonic() or (
            expires_at is not None and self._clock.wall() >= expires_at
        ):
            self._forget(credential, consumer.credential_id)
            return None
        self.last_used[consumer.credential_id] = self._clock.wall()
        return consumer

    def remember(
        self, credential: str, consumer: Consumer, expires_at: float | None, generation: int
    ) -> None:
        """Trust ``credential`` for ``cache_ttl``, unless a key was invalidated since
        ``generation`` (read before the verification began)."""
        if generation != self.generation:
            return
        if len(self._verified) >= _VERIFIED_LIMIT:
            self._verified.clear()  # bounded; refilled by the next verifications
            self._verified_ids.clear()
        self._verified[credential] = (consumer, self._clock.monotonic() + self._ttl, expires_at)
        self._verified_ids[consumer.credential_id] = credential

    def _forget(self, credential: str, key_id: str) -> None:
        self._verified.pop(credential, None)
        self._verified_ids.pop(key_id, None)

    async def verify(self, key: ApiKey) -> tuple[ApiKeyRecord, str]:
        """The key's record and its consumer's plan; raises ``InvalidCredential``."""
        entry = await self._lookup(key.key_id)
        if entry is None:
            raise InvalidCredential("the API key is not valid")
        record = entry[0]
        if not self._peppers.verify(key.secret, record.secret_hash, record.pepper_version):
            raise InvalidCredential("the API key is not valid")
        now = self._clock.wall()
        if record.revoked_at is not None:
            raise InvalidCredential("the API key has been revoked")
        if record.expires_at is not None and now >= record.expires_at:
            raise InvalidCredential("the API key has expired")
        self.last_used[record.key_id] = now
        return entry

    def forget_all(self) -> None:
        """Drop every cached key: changes may have been missed (the node lost the
        channel that announces them), so each key is read from the store again."""
        self.generation += 1
        self._known.clear()
        self._verified.clear()
        self._verified_ids.clear()

    def invalidate(self, key_id: str) -> None:
        self.generation += 1
        self._known.pop(key_id, None)
        self._unknown.pop(key_id, None)
        credential = self._verified_ids.pop(key_id, None)
        if credential is not None:
            self._verified.pop(credential, None)

    async def _lookup(self, key_id: str) -> _Entry | None:
        now = self._clock.monotonic()
        cached = self._known.get(key_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        until = self._unknown.get(key_id)
        if until is not None and until > now:
            return None
        pending = self._pending.get(key_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Entry | None] = asyncio.get_running_loop().create_future()
        self._pending[key_id] = future
        generation = self.generation
        try:
            record = await self._store.get_api_key(key_id)
            entry: _Entry | None = None
            if record is not None:
                consumer = await self._store.get_consumer(record.consumer_id)
                entry = (record, consumer.plan if consumer else self._default_plan)
        except StoreError as exc:
            self.store_errors += 1
            future.set_exception(CredentialsUnavailable(str(exc)))
            future.exception()  # retrieved here: waiters re-raise it themselves
            if cached is not None:
                # A stale positive answer beats refusing every caller during an outage.
                return cached[0]
            raise CredentialsUnavailable("the credential store is unavailable") from exc
        finally:
            del self._pending[key_id]
        future.set_result(entry)
        if generation != self.generation:
            return entry  # invalidated while it was read: answer this once, keep nothing
        now = self._clock.monotonic()
        if entry is None:
            self._unknown[key_id] = now + self._negative_ttl
            if len(self._unknown) > _NEGATIVE_LIMIT:
                self._unknown.popitem(last=False)
        else:
            self._known[key_id] = (entry, now + self._ttl)
        return entry

    async def flush_last_used(self) -> None:
        if not self.last_used:
            return
        batch, self.last_used = self.last_used, {}
        try:
            await self._store.touch_api_keys(batch)
        except StoreError:
            self.store_errors += 1
            # Put them back: last-use times are informational and may wait.
            for key_id, at in batch.items():
                self.last_used.setdefault(key_id, at)
