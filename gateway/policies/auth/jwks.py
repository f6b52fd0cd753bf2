"""A remote JWKS, cached, refreshed in the background, never a stall for requests.

Rules:
- The key set is fetched at start and again when its lifetime ends; the lifetime is
  the response's ``Cache-Control: max-age``, clamped to ``[min_ttl, max_ttl]``.
- A token naming an unknown ``kid`` triggers at most one refetch per ``cooldown``
  (a key rotation at the issuer), shared by every request that asks meanwhile.
- When the endpoint is down, the cached keys keep working; refreshes retry after the
  cooldown. A request waits for a fetch only when no key set was ever fetched, and
  then no longer than ``timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

import aiohttp
import jwt
import orjson

from ...config.model import JwksSpec
from ...context import Clock
from .api_keys import CredentialsUnavailable
from .keys import VerificationKey, from_jwk

log = logging.getLogger("gateway.jwks")

_MAX_AGE = re.compile(r"max-age=(\d+)")


class RemoteJwks:
    def __init__(
        self, url: str, spec: JwksSpec, session: aiohttp.ClientSession, clock: Clock
    ) -> None:
        self.url = url
        self._spec = spec
        self._session = session
        self._clock = clock
        self._keys: dict[str | None, VerificationKey] | None = None
        self._expires = 0.0
        self._last_attempt = float("-inf")
        self._fetching: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self.fetches = 0

    def start(self) -> None:
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def close(self) -> None:
        for task in (self._refresher, self._fetching):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def key(self, kid: str | None) -> VerificationKey | None:
        """The key for ``kid``, None if the issuer has no such key; raises
        ``CredentialsUnavailable`` when no key set could ever be fetched."""
        keys = self._keys
        cooling = self._clock.monotonic() - self._last_attempt < self._spec.cooldown
        if keys is not None:
            found = _pick(keys, kid)
            if found is not None or cooling:
                return found
        elif cooling and (self._fetching is None or self._fetching.done()):
            # Never fetched and the last attempt failed moments ago: do not refetch
            # for every request while the endpoint is down.
            raise CredentialsUnavailable(f"the keys at {self.url} cannot be fetched")
        # Unknown kid past the cooldown, or nothing fetched yet: one shared fetch.
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._fetch_once()), self._spec.timeout)
        if self._keys is None:
            raise CredentialsUnavailable(f"the keys at {self.url} cannot be fetched")
        return _pick(self._keys, kid)

    def _fetch_once(self) -> asyncio.Task[None]:
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.get_running_loop().create_task(self._fetch())
        return self._fetching

    async def _fetch(self) -> None:
        self._last_attempt = self._clock.monotonic()
        self.fetches += 1
        try:
            async with self._session.get(
                self.url, timeout=aiohttp.ClientTimeout(total=self._spec.timeout)
            ) as response:
                if response.status != 200:
                    raise ValueError(f"answered {response.status}")
                document = orjson.loads(await response.read())
                cache_control = response.headers.get("Cache-Control", "")
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            log.warning("JWKS %s could not be fetched (%s); keeping the cached keys", self.url, exc)
            return
        keys = _parse_key_set(document, self.url)
        if keys is None:
            return
        self._keys = keys
        match = _MAX_AGE.search(cache_control)
        ttl = float(match.group(1)) if match else self._spec.min_ttl
        ttl = min(max(ttl, self._spec.min_ttl), self._spec.max_ttl)
        self._expires = self._clock.monotonic() + ttl

    async def _refresh_forever(self) -> None:
        while True:
            await self._fetch_once()
            if self._keys is None:
                delay = self._spec.cooldown
            else:
                delay = max(self._expires - self._clock.monotonic(), self._spec.cooldown)
            await asyncio.sleep(delay)


def _parse_key_set(document: Any, url: str) -> dict[str | None, VerificationKey] | None:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        log.warning("JWKS %s is not a key set; keeping the cached keys", url)
        return None
    keys: dict[str | None, VerificationKey] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = from_jwk(entry)
        except (ValueError, jwt.PyJWKError) as exc:
            log.warning("JWKS %s: skipping a key (%s)", url, exc)
            continue
        keys[key.kid] = key
    return keys


def _pick(keys: dict[str | None, VerificationKey], kid: str | None) -> VerificationKey | None:
    """The key named ``kid``; a token without a ``kid`` may use a set's only key."""
    found = keys.get(kid)
    if found is None and kid is None and len(keys) == 1:
        return next(iter(keys.values()))
    return found
