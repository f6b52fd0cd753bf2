"""Time, budgets and the per-request context.

Rules:
- Every time-dependent decision reads a ``Clock``; nothing else calls ``time`` directly,
  so tests step a ``ManualClock`` instead of sleeping.
- A request has one root ``Deadline``. Children take what is left of it, capped by their
  own timeout; a deadline only ever shrinks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiohttp import web

    from .pipeline import CompiledRoute
    from .tracing import TraceContext


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a monotonic scale: budgets, windows, cool-downs."""

    def wall(self) -> float:
        """Seconds since the epoch: token expiry, HTTP dates."""


class SystemClock:
    """The real clock.

    ``monotonic`` is ``time.monotonic`` (the stdlib loop's own clock), not
    ``loop.time()``: uvloop's loop time has millisecond resolution, too coarse to
    show where a 50 ms budget went. Timers are armed with relative delays
    (``Deadline.remaining()``), so the two scales never need to agree.
    """

    __slots__ = ()

    # The stdlib functions themselves, not methods wrapping them: ``clock.monotonic()``
    # is then one C call, on a path that reads the clock several times per request.
    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)


class ManualClock:
    """A clock that moves only when told to: for tests and simulations."""

    __slots__ = ("_monotonic", "_wall")

    def __init__(self, monotonic: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._monotonic = monotonic
        self._wall = wall

    def monotonic(self) -> float:
        return self._monotonic

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._monotonic += seconds
        self._wall += seconds


@dataclass(frozen=True, slots=True)
class Deadline:
    """A point in time on ``clock.monotonic()``'s scale by which work must be done."""

    at: float
    clock: Clock

    @classmethod
    def after(cls, seconds: float, clock: Clock) -> Deadline:
        return cls(clock.monotonic() + seconds, clock)

    def remaining(self) -> float:
        return max(0.0, self.at - self.clock.monotonic())

    @property
    def expired(self) -> bool:
        return self.clock.monotonic() >= self.at

    def cap(self, seconds: float) -> Deadline:
        """A child deadline: ``seconds`` from now, but never later than this one."""
        return Deadline(min(self.at, self.clock.monotonic() + seconds), self.clock)


@dataclass(frozen=True, slots=True)
class Consumer:
    """Who is calling, as every authenticator reports it; read by later policies."""

    id: str
    plan: str
    scopes: frozenset[str]
    #: ``api_key`` or ``jwt``.
    credential: str
    #: The API key id; for a token, ``<client>@<issuer>``: the client it was issued to
    #: (its ``client_id`` or ``azp`` claim, else its consumer id). Never a secret.
    credential_id: str
    #: A JWT's verified claims (empty for API keys), for forwarding chosen ones upstream.
    claims: Mapping[str, Any] = field(default_factory=dict)
    #: Identity headers already rendered for this consumer, per route policy: verified
    #: consumers are cached and reused, so each renders its headers once.
    rendered: dict[int, tuple[tuple[str, str], ...]] = field(
        default_factory=dict, compare=False, repr=False
    )


@dataclass(slots=True, init=False)
class RequestContext:
    """What the gateway knows about one request while it is being answered.

    One is made per request, so ``__init__`` is written out: the generated one called a
    factory per list field (122 bytecode instructions against about 60 here).
    """

    request: web.BaseRequest
    route: CompiledRoute
    params: dict[str, str]
    path: str
    #: The raw query string, without '?'.
    query: str
    request_id: str
    deadline: Deadline
    started: float
    # One entry per upstream call: (name, seconds, outcome). Read by Server-Timing and
    # the access log; appended to by the upstream layer.
    timings: list[tuple[str, float, str]]
    # Seconds spent waiting on upstreams (the longest concurrent span), so the
    # gateway's own time can be told apart from its upstreams'.
    upstream_wait: float
    consumer: Consumer | None
    #: Headers policies ask the terminal to send upstream (identity headers).
    upstream_headers: list[tuple[str, str]]
    #: Request headers policies ask the terminal not to send (a checked credential).
    hidden_headers: list[str]
    #: Server-Timing entries of policies that wait on a store, rendered by the policy
    #: (``ratelimit;dur=0.21``, milliseconds).
    policy_timings: list[str]
    #: The request body when a policy had to read it whole (validation); the terminal
    #: sends these bytes instead of streaming the client's body.
    body: bytes | None
    #: Headers policies set on the response (rate-limit state), before it starts: each
    #: replaces a header of that name from the upstream.
    response_headers: list[tuple[str, str]]
    #: Headers policies add to the response beside the upstream's of the same name
    #: (a version's deprecation ``Link`` next to the upstream's pagination links).
    added_response_headers: list[tuple[str, str]]
    #: The request's W3C trace; None when tracing is off. Each upstream call sends
    #: ``trace.child()``.
    trace: TraceContext | None

    def __init__(
        self,
        *,
        request: web.BaseRequest,
        route: CompiledRoute,
        params: dict[str, str],
        path: str,
        query: str,
        request_id: str,
        deadline: Deadline,
        started: float,
        trace: TraceContext | None = None,
        timings: list[tuple[str, float, str]] | None = None,
        upstream_wait: float = 0.0,
        policy_timings: list[str] | None = None,
    ) -> None:
        self.request = request
        self.route = route
        self.params = params
        self.path = path
        self.query = query
        self.request_id = request_id
        self.deadline = deadline
        self.started = started
        self.trace = trace
        self.timings = [] if timings is None else timings
        self.upstream_wait = upstream_wait
        self.policy_timings = [] if policy_timings is None else policy_timings
        self.consumer = None
        self.upstream_headers = []
        self.hidden_headers = []
        self.body = None
        self.response_headers = []
        self.added_response_headers = []
