"""The long-lived parts of authentication, shared by every Runtime of one process.

The store connection, the peppers, the API key cache, the signing keys and remote JWKS
caches outlive config reloads; what a route trusts (issuers, methods, scopes) is built
per Runtime from them. Started only when some route authenticates or the token
endpoint is on, so a gateway without auth touches no credential store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import aiohttp

from ...config.model import AuthSpec, GatewayConfig, IssuerSpec, JwksSpec
from ...context import Clock
from ...stores.base import CredentialStore
from ...stores.channel import ChannelListener
from ...stores.redis import RedisCredentialStore
from .api_keys import ApiKeyVerifier
from .jwks import RemoteJwks
from .jwt_verify import JwtVerifier, KeyLookup, TrustedIssuer
from .keys import VerificationKey, from_jwk, from_pem
from .secrets import Peppers
from .signing import SigningKeys

log = logging.getLogger("gateway.auth")

SELF_ISSUER = "self"
_FLUSH_INTERVAL = 5.0


def needs_auth(config: GatewayConfig) -> bool:
    return (
        config.auth.oauth.enabled
        or config.admin.enabled
        or any(route.auth != "none" for route in config.routes)
    )


def resolve(base_dir: Path, value: str) -> Path:
    """Relative paths in the config are relative to the config file's folder."""
    path = Path(value)
    return path if path.is_absolute() else base_dir / path


def open_store(spec: AuthSpec, base_dir: Path) -> CredentialStore:
    if spec.store == "redis":
        return RedisCredentialStore(spec.redis_url)
    from ...stores.sqlite import SqliteCredentialStore

    return SqliteCredentialStore(resolve(base_dir, spec.sqlite_path))


def effective_issuers(config: GatewayConfig) -> dict[str, IssuerSpec]:
    """The configured issuers, plus the gateway itself when it issues tokens."""
    issuers = dict(config.auth.issuers)
    oauth = config.auth.oauth
    if oauth.enabled and SELF_ISSUER not in issuers:
        issuers[SELF_ISSUER] = IssuerSpec(
            issuer=oauth.issuer,
            keys="self",
            audience=(oauth.audience,),
            algorithms=(oauth.algorithm,),
        )
    return issuers


class AuthServices:
    def __init__(
        self,
        store: CredentialStore,
        peppers: Peppers,
        api_keys: ApiKeyVerifier,
        signing: SigningKeys,
        clock: Clock,
    ) -> None:
        self.store = store
        self.peppers = peppers
        self.api_keys = api_keys
        self.signing = signing
        self.clock = clock
        #: Credential store failures of the token endpoint (API-key lookups count their
        #: own, in ``api_keys``); kept here so that they survive reloads.
        self.token_store_errors = 0
        self._jwks: dict[str, RemoteJwks] = {}
        self._session: aiohttp.ClientSession | None = None
        self._flusher: asyncio.Task[None] | None = None
        #: With the Redis store: API key changes announced by other nodes and the CLI.
        self.key_changes: ChannelListener | None = None

    def count_token_store_error(self) -> None:
        self.token_store_errors += 1

    @property
    def store_errors(self) -> int:
        """Failed credential store calls: key lookups, last-use flushes, token requests."""
        return self.api_keys.store_errors + self.token_store_errors

    @classmethod
    async def start(cls, config: GatewayConfig, base_dir: Path, clock: Clock) -> AuthServices:
        spec = config.auth
        store = open_store(spec, base_dir)
        await store.open()
        peppers = Peppers.load_or_create(resolve(base_dir, spec.pepper_file))
        verifier = ApiKeyVerifier(
            store,
            peppers,
            clock,
            cache_ttl=spec.cache_ttl,
            negative_cache_ttl=spec.negative_cache_ttl,
            default_plan=spec.default_plan,
        )
        signing = SigningKeys(store, spec.oauth, clock)
        await signing.load()
        signing.start()
        services = cls(store, peppers, verifier, signing, clock)
        services._flusher = asyncio.get_running_loop().create_task(services._flush_forever())
        if isinstance(store, RedisCredentialStore):
            services.key_changes = ChannelListener(
                store.url,
                store.key_changes_channel,
                lambda key_id: verifier.invalidate(key_id.decode(errors="replace")),
                on_resubscribed=verifier.forget_all,
                what="API key change",
            )
            await services.key_changes.start()
        return services

    def reload_peppers(self, config: GatewayConfig, base_dir: Path) -> None:
        """Pick up a rotated pepper (``gateway pepper rotate``) on a config reload."""
        self.peppers.replace(Peppers.load_or_create(resolve(base_dir, config.auth.pepper_file)))

    def jwt_verifier(self, config: GatewayConfig) -> JwtVerifier:
        issuers = [
            TrustedIssuer(name, spec, self._key_lookup(name, spec))
            for name, spec in effective_issuers(config).items()
        ]
        return JwtVerifier(issuers, self.clock)

    def _key_lookup(self, name: str, spec: IssuerSpec) -> KeyLookup:
        if spec.keys == "self":
            signing = self.signing

            async def own(kid: str | None) -> VerificationKey | None:
                return signing.key(kid)

            return own
        if spec.jwks_url is not None:
            remote = self._remote_jwks(spec.jwks_url, spec.jwks)
            return remote.key
        static: dict[str | None, VerificationKey] = {}
        for entry in spec.static_keys or ():
            key = (
                from_pem(entry.pem, entry.kid)
                if entry.pem is not None
                else from_jwk(entry.jwk or {})
            )
            static[entry.kid or key.kid] = key

        async def fixed(kid: str | None) -> VerificationKey | None:
            found = static.get(kid)
            if found is None and len(static) == 1 and (kid is None or None in static):
                # One key written without a kid verifies whatever kid a token names.
                return next(iter(static.values()))
            return found

        return fixed

    def _remote_jwks(self, url: str, spec: JwksSpec) -> RemoteJwks:
        remote = self._jwks.get(url)
        if remote is None:
            if self._session is None:
                self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
            remote = self._jwks[url] = RemoteJwks(url, spec, self._session, self.clock)
            remote.start()
        return remote

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_INTERVAL)
            await self.api_keys.flush_last_used()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.api_keys.flush_last_used()
        for remote in self._jwks.values():
            await remote.close()
        if self._session is not None:
            await self._session.close()
        await self.signing.close()
        if self.key_changes is not None:
            await self.key_changes.close()
        await self.store.close()
