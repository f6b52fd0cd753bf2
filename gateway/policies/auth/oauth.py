"""The OAuth2 token endpoint (client credentials, RFC 6749 section 4.4) and the JWKS.

Errors follow RFC 6749 section 5.2 exactly: a JSON body with ``error`` (and
``error_description``), 400, or 401 with ``WWW-Authenticate: Basic`` for a client that
authenticated with HTTP Basic and failed. Every answer carries ``Cache-Control:
no-store``. No refresh token is issued (section 4.4.3).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson
from aiohttp import web

from ...bodies import BodyTooLarge, read_bounded
from ...config.model import OAuthSpec
from ...context import Clock, RequestContext
from ...stores.base import CredentialStore, StoreError
from .secrets import Peppers

_FORM = "application/x-www-form-urlencoded"
_MAX_BODY = 16 * 1024
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

SignFunction = Callable[[dict[str, Any]], str]
DocumentFunction = Callable[[], bytes]


class OAuthError(Exception):
    def __init__(self, error: str, description: str, *, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.basic_challenge = False


class TokenEndpoint:
    """``POST /oauth/token``: a terminal handler."""

    def __init__(
        self,
        *,
        store: CredentialStore,
        peppers: Peppers,
        sign: SignFunction,
        spec: OAuthSpec,
        clock: Clock,
        on_store_error: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._peppers = peppers
        self._sign = sign
        self._spec = spec
        self._clock = clock
        #: Told of every credential store failure, for the metrics.
        self._on_store_error = on_store_error

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        try:
            return await self._issue(ctx.request)
        except OAuthError as exc:
            headers = dict(_NO_STORE)
            if exc.basic_challenge:
                headers["WWW-Authenticate"] = 'Basic realm="gateway"'
            body = {"error": exc.error, "error_description": exc.description}
            return web.Response(
                status=exc.status,
                body=orjson.dumps(body),
                content_type="application/json",
                headers=headers,
            )
        except StoreError:
            self._on_store_error()
            body = {"error": "temporarily_unavailable", "error_description": "try again shortly"}
            return web.Response(
                status=503,
                body=orjson.dumps(body),
                content_type="application/json",
                headers={**_NO_STORE, "Retry-After": "1"},
            )

    async def _issue(self, request: web.BaseRequest) -> web.Response:
        if request.content_type != _FORM:
            raise OAuthError("invalid_request", f"the body must be {_FORM}")
        try:
            raw = await read_bounded(request, _MAX_BODY)
        except BodyTooLarge:
            raise OAuthError("invalid_request", "the request body is too large") from None
        form = _parse_form(raw)
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise OAuthError("invalid_request", "grant_type is required")
        if grant_type != "client_credentials":
            raise OAuthError(
                "unsupported_grant_type", f"grant type {grant_type!r} is not supported"
            )

        client_id, secret, used_basic = _client_credentials(request, form)
        client = await self._store.get_client(client_id)
        if (
            client is None
            or client.revoked_at is not None
            or not self._peppers.verify(secret, client.secret_hash, client.pepper_version)
        ):
            error = OAuthError("invalid_client", "client authentication failed", status=401)
            error.basic_challenge = used_basic
            raise error
        consumer = await self._store.get_consumer(client.consumer_id)
        if consumer is None:
            raise OAuthError("unauthorized_client", "this client may not obtain tokens")

        allowed = set(client.scopes)
        asked = form.get("scope")
        if asked is None:
            granted = sorted(allowed)
        else:
            wanted = asked.split()
            if not wanted or not set(wanted) <= allowed:
                raise OAuthError(
                    "invalid_scope", "the requested scope exceeds what this client may ask"
                )
            granted = sorted(set(wanted))

        now = int(self._clock.wall())
        ttl = int(self._spec.token_ttl)
        claims = {
            "iss": self._spec.issuer,
            "sub": client.consumer_id,
            "aud": self._spec.audience,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": secrets.token_urlsafe(16),
            "scope": " ".join(granted),
            "client_id": client.client_id,
            "plan": consumer.plan,
        }
        body = {
            "access_token": self._sign(claims),
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": " ".join(granted),
        }
        return web.Response(
            body=orjson.dumps(body), content_type="application/json", headers=_NO_STORE
        )


def _parse_form(raw: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw))
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "the form body cannot be parsed") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if not value:
            # RFC 6749 section 3.2: a parameter sent without a value is as if omitted.
            continue
        if name in form:
            # RFC 6749 section 3.2: request parameters MUST NOT be included more than once.
            raise OAuthError("invalid_request", f"parameter {name!r} is repeated")
        form[name] = value
    return form


def _client_credentials(request: web.BaseRequest, form: dict[str, str]) -> tuple[str, str, bool]:
    """(client id, secret, whether HTTP Basic was used). Exactly one method is allowed."""
    header = request.headers.get("Authorization")
    in_body = "client_id" in form or "client_secret" in form
    if header is not None:
        if in_body:
            raise OAuthError("invalid_request", "use one client authentication method, not two")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            error = OAuthError("invalid_client", "use HTTP Basic client authentication", status=401)
            error.basic_challenge = True
            raise error
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            error = OAuthError(
                "invalid_client", "the Basic credentials cannot be decoded", status=401
            )
            error.basic_challenge = True
            raise error from None
        client_id, sep, secret = decoded.partition(":")
        if not sep:
            error = OAuthError(
                "invalid_client", "the Basic credentials cannot be decoded", status=401
            )
            error.basic_challenge = True
            raise error
        # RFC 6749 section 2.3.1: both parts are form-urlencoded before Basic encoding.
        return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " ")), True
    form_id = form.get("client_id")
    form_secret = form.get("client_secret")
    if not form_id or form_secret is None:
        raise OAuthError("invalid_client", "client authentication is required", status=401)
    return form_id, form_secret, False


class JwksEndpoint:
    """``GET /.well-known/jwks.json``: the public signing keys."""

    def __init__(self, document: DocumentFunction) -> None:
        self._document = document

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        body = self._document()
        return web.Response(
            body=body,
            content_type="application/jwk-set+json",
            headers={
                # Short enough that a rotation is seen well before old keys go away.
                "Cache-Control": "public, max-age=300, stale-while-revalidate=60",
            },
        )
