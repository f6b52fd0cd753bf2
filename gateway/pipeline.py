"""The shape of a route's request path: policies folded around a terminal handler.

A policy is an object with one method, ``handle(ctx, call_next)``. It answers early by
returning a response (or raising a ``GatewayError``) without awaiting ``call_next``, or
awaits it and decorates what comes back. A policy that never waits may instead be a
plain function that returns ``call_next(ctx)`` unawaited: its frame then stays out of
the request's await chain. Chains are folded once per route when the config loads,
never per request.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from aiohttp import web

from .config.model import RouteSpec
from .context import RequestContext
from .metrics.recorder import RouteMetrics

Handler = Callable[[RequestContext], Awaitable[web.StreamResponse]]


class Policy(Protocol):
    # Usually a coroutine function; a policy that never waits may be a plain function
    # returning ``call_next(ctx)``, which keeps its frame out of the request's await
    # chain (the rate limit on the memory store does).
    def handle(self, ctx: RequestContext, call_next: Handler) -> Awaitable[web.StreamResponse]: ...


def build_chain(policies: Sequence[Policy], terminal: Handler) -> Handler:
    handler = terminal
    for policy in reversed(policies):
        handler = _link(policy, handler)
    return handler


#: Each link's policy and next handler, for ``unfold_chain``. Weak: a link goes with
#: the runtime whose route held it.
_LINKS: weakref.WeakKeyDictionary[Handler, tuple[Policy, Handler]] = weakref.WeakKeyDictionary()


def _link(policy: Policy, call_next: Handler) -> Handler:
    """``policy`` in front of ``call_next``, as one handler.

    A closure rather than ``functools.partial(policy.handle, call_next=...)``: a
    partial with a keyword copies its keyword dict on every call, and this runs once per
    policy per request.
    """
    handle = policy.handle

    def link(ctx: RequestContext) -> Awaitable[web.StreamResponse]:
        return handle(ctx, call_next)

    _LINKS[link] = (policy, call_next)
    return link


def unfold_chain(handler: Handler) -> tuple[list[object], Handler]:
    """What ``build_chain`` folded: the policies, outermost first, and the terminal.

    For describing a compiled route (the admin API): the order shown is the order
    requests meet, read from the chain itself rather than rebuilt from the config.
    """
    policies: list[object] = []
    while (found := _links_of(handler)) is not None:
        policy, handler = found
        policies.append(policy)
    return policies, handler


def _links_of(handler: Handler) -> tuple[Policy, Handler] | None:
    try:
        return _LINKS.get(handler)
    except TypeError:  # a terminal that takes no weak reference: not a link
        return None


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str
    path: str
    methods: tuple[str, ...]
    kind: Literal["proxy", "fanout", "builtin"]
    #: The request's whole time budget on this route, in seconds.
    budget: float
    handler: Handler
    #: The config it was compiled from (None for the built-in routes). Left out of
    #: equality and hashing: a spec may hold dicts (JSON Schemas).
    spec: RouteSpec | None = field(default=None, compare=False)
    #: Where its requests are recorded (None when metrics are off); set at config load
    #: so the request path reaches it with one attribute read.
    metrics: RouteMetrics | None = field(default=None, compare=False)
