"""The rate-limit policy: which limits apply to a request, one decision, the headers.

Per request: find the subject (consumer, API key, client IP or a header), the limits
(the plan's or the consumer's contract, plus the route's own), and the storage keys —
one small key per (subject, limit), all with the hash tag ``{rl:<subject>}`` so one
subject's keys sit on one Redis Cluster shard and no key is shared by all consumers.
A subject refused recently is refused again from memory until it may retry, so an
abusive client costs the store nothing. ``RateLimit-Policy`` and ``RateLimit`` (IETF
httpapi draft syntax) go on every response of a limited route.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web
from multidict import istr

from ...config.model import ContractSpec, LimitSpec, RateLimitsSpec, RouteLimitSpec
from ...context import Clock, RequestContext
from ...errors import ServiceUnavailable, TooManyRequests
from ...pipeline import Handler
from ...stores.base import StoreError
from .arithmetic import Decision, Limit
from .breaker import Breaker
from .stores import LimiterStore, MemoryLimiterStore, RedisLimiterStore, decision_of

log = logging.getLogger("gateway.ratelimit")

DEGRADED_HEADER = "Gateway-RateLimit"
# Case-insensitive strings already: the response's header dict takes them as they are.
POLICY_HEADER = istr("RateLimit-Policy")
STATE_HEADER = istr("RateLimit")

#: Bound on the per-subject memos (keys, refusals): they only save work, so when one
#: grows past this (many distinct clients) it is emptied rather than tracked by age.
_MAX_REMEMBERED_SUBJECTS = 100_000

#: Per route: the subjects whose storage keys are kept made. Small, since a subject may
#: come from a client's header: past it the memo starts again (keys are cheap to make).
_MAX_SUBJECT_KEYS = 10_000

#: How long the start waits for the Redis store's connection and script.
_WARM_UP_S = 2.0

_QUOTA_NAMES = {86400.0: "daily", 3600.0: "hourly", 60.0: "minutely", 604800.0: "weekly"}


def limits_of(spec: LimitSpec | ContractSpec, prefix: str = "") -> tuple[Limit, ...]:
    limits: list[Limit] = []
    if spec.rate is not None:
        per_second = spec.rate[0] / spec.rate[1]
        burst = spec.burst if spec.burst is not None else max(1, math.ceil(per_second))
        limits.append(Limit(prefix + "burst", "rate", per_second, burst, 0.0))
    if spec.quota is not None:
        count, period = spec.quota
        name = _QUOTA_NAMES.get(period, f"quota-{int(period)}s")
        limits.append(Limit(prefix + name, "quota", count, 0, period))
    return tuple(limits)


def contract_limits(plan: LimitSpec | None, contract: ContractSpec) -> tuple[Limit, ...]:
    """The plan with the contract's overrides on top."""
    merged = ContractSpec(
        rate=contract.rate if contract.rate is not None else (plan.rate if plan else None),
        burst=contract.burst if contract.burst is not None else (plan.burst if plan else None),
        quota=contract.quota if contract.quota is not None else (plan.quota if plan else None),
    )
    return limits_of(merged)


def scaled(limits: tuple[Limit, ...], share: float) -> tuple[Limit, ...]:
    """The same limits at ``share`` of their size, for one node's local fallback."""
    return tuple(
        Limit(
            limit.name,
            limit.kind,
            limit.amount * share
            if limit.kind == "rate"
            else max(1.0, math.floor(limit.amount * share)),
            max(1, math.floor(limit.burst * share)) if limit.kind == "rate" else 0,
            limit.period,
        )
        for limit in limits
    )


@dataclass(frozen=True, slots=True)
class LimitSet:
    """Limits that apply together, with their precomputed header and fallback."""

    limits: tuple[Limit, ...]
    fallback: tuple[Limit, ...]
    #: ``RateLimit-Policy`` and its value, as the response's header list takes it.
    policy_entry: tuple[istr, str]
    #: ``"name";r=`` per limit: the constant part of each ``RateLimit`` entry.
    state_prefixes: tuple[str, ...]
    #: The limit when the set is one rate limit (a plan without a quota, or only a
    #: route's own limit): the common case, which the memory store decides on a
    #: shorter path.
    single_rate: Limit | None

    @classmethod
    def of(cls, limits: tuple[Limit, ...], share: float) -> LimitSet:
        header = ", ".join(
            f'"{limit.name}";q={limit.quota_units};w={limit.window_seconds}' for limit in limits
        )
        prefixes = tuple(f'"{limit.name}";r=' for limit in limits)
        single = limits[0] if len(limits) == 1 and limits[0].kind == "rate" else None
        return cls(limits, scaled(limits, share), (POLICY_HEADER, header), prefixes, single)

    def state_header(self, decision: Decision) -> str:
        """``RateLimit``: what is left of each limit and when it is whole again."""
        outcomes = decision.outcomes
        if len(outcomes) == 1:
            outcome = outcomes[0]
            reset = outcome.reset
            return f"{self.state_prefixes[0]}{outcome.remaining};t={_whole(reset)}"
        return ", ".join(
            f"{prefix}{outcome.remaining};t={_whole(outcome.reset)}"
            for prefix, outcome in zip(self.state_prefixes, outcomes, strict=True)
        )


@dataclass(frozen=True, slots=True)
class _SubjectKeys:
    """One subject's storage keys on one route, made on its first request."""

    limit_set: LimitSet
    keys: tuple[str, ...]
    #: The key of the local "refused until" memo (per subject and route).
    deny_key: str
    #: With the Redis store: the decision's command, encoded once (None in memory).
    command: bytes | None


class Limiter:
    """The process's limiter: the store, its breaker, the local store, the deny cache."""

    def __init__(self, spec: RateLimitsSpec, clock: Clock) -> None:
        self.spec = spec
        self.clock = clock
        self.local = MemoryLimiterStore(clock)
        #: The Redis store, when that is the store.
        self.redis = (
            RedisLimiterStore.from_url(spec.redis_url, spec.redis_timeout)
            if spec.store == "redis"
            else None
        )
        self.store: LimiterStore = self.redis if self.redis is not None else self.local
        self.remote = self.redis is not None
        self.breaker = Breaker(clock, spec.breaker.failures, spec.breaker.open_for)
        #: Subjects refused recently: (until, the RateLimit header of that refusal).
        self.denied_until: dict[str, tuple[float, str]] = {}
        #: Decisions by route name, then outcome: the metrics' source. Kept here, not in
        #: a route's policy, so counts survive reloads.
        self.by_route: dict[str, dict[str, int]] = {}
        #: Store calls that failed or timed out, for the metrics.
        self.store_errors = 0

    def route_counts(self, route: str) -> dict[str, int]:
        """The decision counts of ``route``, to be incremented by its policy."""
        return self.by_route.setdefault(route, {})

    @property
    def counts(self) -> dict[str, int]:
        """Decisions by outcome over every route."""
        total: dict[str, int] = {}
        for counts in self.by_route.values():
            for outcome, count in counts.items():
                total[outcome] = total.get(outcome, 0) + count
        return total

    async def decide_raw(self, command: bytes) -> list[int] | None:
        """The Redis store's reply to ``command`` (``RedisLimiterStore.command``, made
        once per subject; ``decision_of`` reads it), or None when it cannot answer in
        time. (The memory store is asked directly: ``local.decide_now``.)"""
        redis = self.redis
        assert redis is not None, "only the Redis store is asked through the breaker"
        breaker = self.breaker
        if not breaker.allow():
            return None
        try:
            # The store bounds each decision by ``redis_timeout`` itself (one deadline per
            # batch of decisions, one timer for them all).
            raw = await redis.send(command)
        except StoreError:
            self.store_errors += 1
            breaker.failed()
            return None
        except BaseException:
            # Cancelled (the client left) or a bug: either way this was no verdict on
            # the store, and a probe must not stay claimed forever.
            breaker.abandoned()
            raise
        breaker.succeeded()
        return raw

    async def warm_up(self) -> None:
        """Connect to the Redis store now, bounded: a store that is down at start is
        logged and left to ``on_store_down`` and the breaker, like an outage later."""
        if self.redis is None:
            return
        try:
            await self.redis.warm_up(_WARM_UP_S)
        except StoreError as exc:
            # An outage from the first request: the breaker is open (no request waits
            # for a timeout), and it probes again after ``open_for``.
            self.store_errors += 1
            self.breaker.trip()
            log.warning(
                "rate-limit store not reachable at start (%s); routes follow on_store_down", exc
            )

    async def close(self) -> None:
        await self.store.close()
        if self.store is not self.local:
            await self.local.close()


class RateLimitPolicy:
    def __init__(
        self,
        limiter: Limiter,
        route_name: str,
        spec: RouteLimitSpec,
        plans: Mapping[str, LimitSpec],
        contracts: Mapping[str, ContractSpec],
        default_plan: str,
    ) -> None:
        self._limiter = limiter
        self._counts = limiter.route_counts(route_name)
        self._spec = spec
        self._cost = spec.cost
        share = spec.local_share
        own = limits_of(spec.limit, prefix="route-") if spec.limit is not None else ()
        # Route-own keys are per route; plan keys are shared by every route of a consumer.
        self._route_prefix = f":r:{route_name}:"
        self._own_count = len(own)

        def with_own(limits: tuple[Limit, ...]) -> LimitSet:
            return LimitSet.of(limits + own, share)

        self._by_plan: dict[str, LimitSet] = {}
        self._contracts = contracts if spec.plan else {}
        self._plans = plans
        self._with_own = with_own
        # (consumer, plan) -> limits: a contract without `plan:` builds on the plan the
        # consumer has, which is only known per request; built once per pair.
        self._by_contract: dict[tuple[str, str], LimitSet] = {}
        if spec.plan:
            self._by_plan = {name: with_own(limits_of(plan)) for name, plan in plans.items()}
        self._default = (self._by_plan.get(default_plan) if spec.plan else None) or with_own(())
        self._anonymous = (
            self._by_plan.get(spec.anonymous_plan, self._default)
            if spec.anonymous_plan
            else self._default
        )
        self._by = spec.by
        self._shadow = spec.shadow
        #: Each subject's keys, made on its first request: by subject, or (``by: ip``,
        #: where every subject is an address and the limits are the same for all) by
        #: the bare address, which saves making the subject string per request.
        self._subject_keys: dict[str, _SubjectKeys] = {}
        self._header = spec.by[len("header:") :] if spec.by.startswith("header:") else None
        # A flag, not a bound method kept on self: that would be a reference cycle,
        # and the collector is frozen after start (serve.tune_collector), so a policy
        # replaced by a reload would never be freed.
        self._by_ip = spec.by == "ip"

    def _count(self, outcome: str) -> None:
        counts = self._counts
        counts[outcome] = counts.get(outcome, 0) + 1

    def _limits_for(self, consumer_id: str, plan: str) -> LimitSet:
        contract = self._contracts.get(consumer_id)
        if contract is None:
            return self._by_plan.get(plan, self._default)
        limit_set = self._by_contract.get((consumer_id, plan))
        if limit_set is None:
            base = self._plans.get(contract.plan or plan)
            limit_set = self._with_own(contract_limits(base, contract))
            self._by_contract[(consumer_id, plan)] = limit_set
        return limit_set

    def _subject(self, ctx: RequestContext) -> tuple[str, LimitSet]:
        consumer = ctx.consumer
        by = self._by
        if by == "consumer" and consumer is not None:
            return "c:" + consumer.id, self._limits_for(consumer.id, consumer.plan)
        if by == "api_key" and consumer is not None:
            # API keys and tokens in key spaces of their own: an id may not tell them apart.
            kind = "k:" if consumer.credential == "api_key" else "j:"
            return kind + consumer.credential_id, self._limits_for(consumer.id, consumer.plan)
        if self._header is not None:
            value = ctx.request.headers.get(self._header)
            if value is not None:
                return f"h:{self._header}:{value}", self._anonymous
        return "ip:" + (ctx.request.remote or "unknown"), self._anonymous

    def _keys_by_subject(self, ctx: RequestContext) -> _SubjectKeys:
        subject, limit_set = self._subject(ctx)
        found = self._subject_keys.get(subject)
        if found is None or found.limit_set is not limit_set:
            found = self._keys(subject, limit_set, subject)
        return found

    def _keys_by_ip(self, ctx: RequestContext) -> _SubjectKeys:
        address = ctx.request.remote or "unknown"
        found = self._subject_keys.get(address)
        if found is None:
            found = self._keys("ip:" + address, self._anonymous, address)
        return found

    def _keys(self, subject: str, limit_set: LimitSet, memo_key: str) -> _SubjectKeys:
        """The subject's keys: one per limit, all under the subject's hash tag. Made
        once per subject and limit set, and kept under ``memo_key``."""
        tag = "{rl:" + subject + "}"
        route_start = len(limit_set.limits) - self._own_count
        keys = tuple(
            tag + (self._route_prefix if index >= route_start else ":") + limit.name
            for index, limit in enumerate(limit_set.limits)
        )
        # Per subject and route: a refusal depends on the route's own limits and cost,
        # so it must not refuse the subject's requests on other routes.
        redis = self._limiter.redis
        command = redis.command(keys, limit_set.limits, self._cost) if redis is not None else None
        found = _SubjectKeys(limit_set, keys, tag + self._route_prefix, command)
        if len(self._subject_keys) >= _MAX_SUBJECT_KEYS:
            self._subject_keys.clear()  # bounded: it only saves rebuilding strings
        self._subject_keys[memo_key] = found
        return found

    def handle(self, ctx: RequestContext, call_next: Handler) -> Awaitable[web.StreamResponse]:
        """Decide, then hand on: the next handler's awaitable, refused with a raise.

        A plain function, not a coroutine: on the memory store nothing here waits, so
        the request's await chain gets no frame of this policy's (every resumption of
        the request walks that chain). Only a Redis decision makes a coroutine.
        """
        subject_keys = self._keys_by_ip(ctx) if self._by_ip else self._keys_by_subject(ctx)
        limit_set = subject_keys.limit_set
        limits = limit_set.limits
        if not limits:
            return call_next(ctx)
        limiter = self._limiter
        denied = limiter.denied_until.get(subject_keys.deny_key)
        if denied is not None and not self._shadow:
            wait = denied[0] - limiter.clock.monotonic()
            if wait > 0:
                # Refused a moment ago and not allowed back yet: no need to ask the store.
                self._count("refused_cached")
                ctx.response_headers.append(limit_set.policy_entry)
                ctx.response_headers.append((STATE_HEADER, denied[1]))
                raise TooManyRequests(
                    "the rate limit is exceeded", headers={"Retry-After": _seconds(wait)}
                )
        if limiter.remote:
            return self._decide_remotely(ctx, call_next, subject_keys)
        single = limit_set.single_rate
        if single is not None:
            # One rate limit: one outcome, no Decision around it, and the RateLimit
            # entry rendered here. Every request of a limited route comes this way in
            # the common configuration.
            admitted, remaining, reset, retry = limiter.local.decide_rate_now(
                subject_keys.keys[0], single, self._cost
            )
            # ``reset`` is never negative here (a TAT is never before now): no clamp.
            state = f"{limit_set.state_prefixes[0]}{remaining};t={math.ceil(reset)}"
        else:
            decision = limiter.local.decide_now(subject_keys.keys, limits, self._cost)
            admitted, state = decision.admitted, limit_set.state_header(decision)
            retry = decision.retry_after
        headers = ctx.response_headers
        headers.append(limit_set.policy_entry)
        headers.append((STATE_HEADER, state))
        if admitted:
            counts = self._counts
            counts["admitted"] = counts.get("admitted", 0) + 1
            return call_next(ctx)
        return self._refused(ctx, call_next, subject_keys, state, retry)

    async def _decide_remotely(
        self, ctx: RequestContext, call_next: Handler, subject_keys: _SubjectKeys
    ) -> web.StreamResponse:
        """The Redis store's decision: a round trip, shown in Server-Timing."""
        limiter = self._limiter
        limit_set = subject_keys.limit_set
        command = subject_keys.command
        assert command is not None  # made with the keys when the store is Redis
        clock = limiter.clock
        started = clock.monotonic()
        raw = await limiter.decide_raw(command)
        ctx.policy_timings.append(f"ratelimit;dur={(clock.monotonic() - started) * 1000:.2f}")
        if raw is not None and limit_set.single_rate is not None:
            # One rate limit, the common case: its entry rendered from the reply,
            # ``[admitted, admitted, remaining, reset µs, retry µs]``, with no Decision
            # made (as the memory store's short path). ``t`` is the reset in whole
            # seconds, rounded up: an integer ceiling, as ``_whole`` takes it.
            whole = -(-raw[3] // 1_000_000)
            state = f"{limit_set.state_prefixes[0]}{raw[2]};t={whole if whole > 0 else 0}"
            admitted = raw[0] == 1
            retry = raw[4] / 1e6
        else:
            if raw is not None:
                decision = decision_of(raw, len(limit_set.limits))
            else:
                down = self._store_down(ctx, subject_keys.keys, limit_set)
                if down is None:
                    return await call_next(ctx)
                decision = down
            state = limit_set.state_header(decision)
            admitted, retry = decision.admitted, decision.retry_after
        headers = ctx.response_headers
        headers.append(limit_set.policy_entry)
        headers.append((STATE_HEADER, state))
        if admitted:
            counts = self._counts
            counts["admitted"] = counts.get("admitted", 0) + 1
            return await call_next(ctx)
        return await self._refused(ctx, call_next, subject_keys, state, retry)

    def _refused(
        self,
        ctx: RequestContext,
        call_next: Handler,
        subject_keys: _SubjectKeys,
        state: str,
        retry: float,
    ) -> Awaitable[web.StreamResponse]:
        """A refusal: 429 and remembered until ``retry``, or in shadow mode only marked."""
        if self._shadow:
            self._count("shadow_refused")
            _mark(ctx, "shadow;would-refuse")
            return call_next(ctx)
        self._count("refused")
        limiter = self._limiter
        limiter.denied_until[subject_keys.deny_key] = (limiter.clock.monotonic() + retry, state)
        if len(limiter.denied_until) > _MAX_REMEMBERED_SUBJECTS:
            limiter.denied_until.clear()  # bounded: it is only an optimisation
        raise TooManyRequests(
            "the rate limit is exceeded", headers={"Retry-After": _seconds(retry)}
        )

    def _store_down(
        self, ctx: RequestContext, keys: Sequence[str], limit_set: LimitSet
    ) -> Decision | None:
        mode = self._spec.on_store_down
        limiter = self._limiter
        if mode == "fail_closed":
            self._count("store_down_refused")
            raise ServiceUnavailable(
                "rate limits cannot be checked right now", headers={"Retry-After": "1"}
            )
        if mode == "local_fallback":
            self._count("local_fallback")
            _mark(ctx, "local-fallback")
            return limiter.local.decide_now(keys, limit_set.fallback, self._cost)
        self._count("store_down_admitted")
        _mark(ctx, "store-unavailable")
        return None


def _mark(ctx: RequestContext, marker: str) -> None:
    """Add ``marker`` to the response's one ``Gateway-RateLimit`` field (a shadow
    refusal on the local fallback carries both: ``local-fallback, shadow;would-refuse``)."""
    headers = ctx.response_headers
    for index, (name, value) in enumerate(headers):
        if name == DEGRADED_HEADER:
            headers[index] = (name, f"{value}, {marker}")
            return
    headers.append((DEGRADED_HEADER, marker))


def _whole(reset: float) -> int:
    """``t`` in ``RateLimit``: whole seconds, rounded up, never negative."""
    return max(0, math.ceil(reset))


def _seconds(delay: float) -> str:
    return str(max(1, math.ceil(delay)))
