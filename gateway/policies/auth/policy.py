"""The authentication policy: one principal, many authenticators.

A route lists its methods in order (``auth: [api_key, jwt]``). The first method whose
credential the request carries decides: a bad credential is refused (401) even when a
later method might have accepted something else, so a client never silently gets a
weaker identity than it sent. No credential at all gets a bare ``Bearer`` challenge.
Then the route's scope rule is checked (403 ``insufficient_scope``), the ``Consumer``
is put on the context, and the chosen identity facts are queued for the upstream.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Protocol

from aiohttp import web

from ...config.model import IdentityHeadersSpec, ScopesSpec
from ...context import Consumer, RequestContext
from ...errors import Forbidden, ServiceUnavailable, Unauthorized
from ...pipeline import Handler
from .api_keys import ApiKeyVerifier, CredentialsUnavailable, InvalidCredential
from .jwt_verify import JwtVerifier
from .secrets import API_KEY_PREFIX, parse_api_key

REALM = 'Bearer realm="gateway"'
_policy_ids = itertools.count()


class Method(Protocol):
    def credential(self, request: web.BaseRequest) -> str | None:
        """The credential this method reads, if the request carries one."""

    def hide(self, ctx: RequestContext) -> None:
        """Keep the credential this method read from reaching the upstream."""

    async def authenticate(self, credential: str) -> Consumer:
        """Raises ``InvalidCredential`` or ``CredentialsUnavailable``."""


def _bearer(request: web.BaseRequest) -> str | None:
    value = request.headers.get("Authorization")
    if value is None or value[:7].lower() != "bearer ":
        return None
    return value[7:].strip()


class ApiKeyMethod:
    __slots__ = ("_header", "_query", "_verifier")

    def __init__(self, verifier: ApiKeyVerifier, header: str, query_param: str | None) -> None:
        self._verifier = verifier
        self._header = header
        self._query = query_param

    def credential(self, request: web.BaseRequest) -> str | None:
        token = _bearer(request)
        if token is not None and token.startswith(API_KEY_PREFIX):
            return token
        value = request.headers.get(self._header)
        if value is not None:
            return value.strip()
        if self._query is not None:
            return request.query.get(self._query)
        return None

    def hide(self, ctx: RequestContext) -> None:
        request = ctx.request
        token = _bearer(request)
        if token is not None and token.startswith(API_KEY_PREFIX):
            ctx.hidden_headers.append("Authorization")
        elif self._header in request.headers:
            ctx.hidden_headers.append(self._header)
        elif self._query is not None and ctx.query:
            ctx.query = _without_parameter(ctx.query, self._query)

    async def authenticate(self, credential: str) -> Consumer:
        verifier = self._verifier
        consumer = verifier.cached(credential)
        if consumer is not None:
            return consumer
        key = parse_api_key(credential)
        if key is None:
            raise InvalidCredential("the API key is not valid")
        generation = verifier.generation
        record, plan = await verifier.verify(key)
        consumer = Consumer(
            id=record.consumer_id,
            plan=plan,
            scopes=frozenset(record.scopes),
            credential="api_key",
            credential_id=record.key_id,
        )
        verifier.remember(credential, consumer, record.expires_at, generation)
        return consumer


class JwtMethod:
    __slots__ = ("_issuers", "_verifier")

    def __init__(self, verifier: JwtVerifier, issuers: frozenset[str] | None) -> None:
        self._verifier = verifier
        self._issuers = issuers

    def credential(self, request: web.BaseRequest) -> str | None:
        token = _bearer(request)
        if token is None or token.startswith(API_KEY_PREFIX):
            return None
        return token

    def hide(self, ctx: RequestContext) -> None:
        ctx.hidden_headers.append("Authorization")

    async def authenticate(self, credential: str) -> Consumer:
        return await self._verifier.verify(credential, self._issuers)


def _quoted_string(text: str) -> str:
    """``text`` made safe inside an RFC 9110 quoted-string (defence in depth: reasons
    are our own words, but must stay well-formed whatever ends up in them)."""
    printable = "".join(char for char in text if char.isprintable())
    return printable.replace("\\", "\\\\").replace('"', '\\"')


def _without_parameter(query: str, name: str) -> str:
    """``query`` less every ``name=...`` pair, the rest byte for byte as it came."""
    prefix = name + "="
    return "&".join(
        pair for pair in query.split("&") if not (pair == name or pair.startswith(prefix))
    )


class ScopeRule:
    __slots__ = ("_all", "_required", "scope_text")

    def __init__(self, spec: ScopesSpec) -> None:
        self._all = spec.all_of is not None
        self._required = frozenset(spec.all_of or spec.any_of or ())
        self.scope_text = " ".join(sorted(self._required))

    def allows(self, scopes: frozenset[str]) -> bool:
        if self._all:
            return self._required <= scopes
        return not self._required.isdisjoint(scopes)


def identity_writers(
    spec: IdentityHeadersSpec,
) -> tuple[tuple[str, Callable[[Consumer], str | None]], ...]:
    """(header, how to read it off the consumer) for every header the route sends."""
    writers: list[tuple[str, Callable[[Consumer], str | None]]] = []
    if spec.consumer_id:
        writers.append((spec.consumer_id, lambda c: c.id))
    if spec.plan:
        writers.append((spec.plan, lambda c: c.plan))
    if spec.scopes:
        writers.append((spec.scopes, lambda c: " ".join(sorted(c.scopes))))
    if spec.credential:
        writers.append((spec.credential, lambda c: c.credential))
    for claim, header in spec.claims.items():
        writers.append((header, _claim_reader(claim)))
    return tuple(writers)


def _claim_reader(claim: str) -> Callable[[Consumer], str | None]:
    def read(consumer: Consumer) -> str | None:
        value = consumer.claims.get(claim)
        if value is None or isinstance(value, dict | list):
            return None  # only plain values fit in a header
        return str(value)

    return read


class AuthPolicy:
    __slots__ = ("_hide", "_methods", "_render_id", "_scopes", "_writers")

    def __init__(
        self,
        methods: list[Method],
        scopes: ScopeRule | None,
        identity: IdentityHeadersSpec,
        hide_credentials: bool = True,
    ) -> None:
        self._hide = hide_credentials
        # Unique for the process's life (unlike id(), never reused after a reload).
        self._render_id = next(_policy_ids)
        self._methods = tuple(methods)
        self._scopes = scopes
        self._writers = identity_writers(identity)

    async def handle(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse:
        request = ctx.request
        for method in self._methods:
            credential = method.credential(request)
            if credential is None:
                continue
            try:
                consumer = await method.authenticate(credential)
            except InvalidCredential as exc:
                reason = str(exc)
                raise Unauthorized(
                    reason,
                    challenge=f'{REALM}, error="invalid_token", '
                    f'error_description="{_quoted_string(reason)}"',
                ) from None
            except CredentialsUnavailable:
                # The client did nothing wrong: the store or an issuer's keys are out
                # of reach. 503, never 401.
                raise ServiceUnavailable(
                    "credentials cannot be checked right now", headers={"Retry-After": "1"}
                ) from None
            if self._hide:
                method.hide(ctx)
            break
        else:
            raise Unauthorized("this route needs credentials", challenge=REALM)
        scopes = self._scopes
        if scopes is not None and not scopes.allows(consumer.scopes):
            raise Forbidden(
                f"this route needs the scope(s): {scopes.scope_text}",
                challenge=f'{REALM}, error="insufficient_scope", scope="{scopes.scope_text}"',
            )
        ctx.consumer = consumer
        rendered = consumer.rendered.get(self._render_id)
        if rendered is None:
            rendered = consumer.rendered[self._render_id] = self._render(consumer)
        ctx.upstream_headers.extend(rendered)
        return await call_next(ctx)

    def _render(self, consumer: Consumer) -> tuple[tuple[str, str], ...]:
        headers = []
        for name, read in self._writers:
            value = read(consumer)
            # A claim with a line break or control character cannot be a header value.
            if value is not None and value.isprintable():
                headers.append((name, value))
        return tuple(headers)
