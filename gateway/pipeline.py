"""The shape of a route's request path: policies folded around a terminal handler.

A policy is an object with one method, ``handle(ctx, call_next)``. It answers early by
returning a response without awaiting ``call_next``, or awaits it and decorates what
comes back. Chains are folded once per route when the config loads, never per request.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from aiohttp import web

from .context import RequestContext

Handler = Callable[[RequestContext], Awaitable[web.StreamResponse]]


class Policy(Protocol):
    async def handle(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse: ...


def build_chain(policies: Sequence[Policy], terminal: Handler) -> Handler:
    handler = terminal
    for policy in reversed(policies):
        handler = functools.partial(policy.handle, call_next=handler)
    return handler


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str
    path: str
    methods: tuple[str, ...]
    kind: Literal["proxy", "fanout", "builtin"]
    #: The request's whole time budget on this route, in seconds.
    budget: float
    handler: Handler
