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

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from ...config.model import ContractSpec, LimitSpec, RateLimitsSpec, RouteLimitSpec
from ...context import Clock, RequestContext
from ...errors import ServiceUnavailable, TooManyRequests
from ...pipeline import Handler
from ...stores.base import StoreError
from .arithmetic import Decision, Limit
from .breaker import Breaker
from .stores import LimiterStore, MemoryLimiterStore, RedisLimiterStore

DEGRADED_HEADER = "Gateway-RateLimit"

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
    policy_header: str

    @classmethod
    def of(cls, limits: tuple[Limit, ...], share: float) -> LimitSet:
        header = ", ".join(
            f'"{limit.name}";q={limit.quota_units};w={limit.window_seconds}' for limit in limits
        )
        return cls(limits, scaled(limits, share), header)


class Limiter:
    """The process's limiter: the store, its breaker, the local store, the deny cache."""

    def __init__(self, spec: RateLimitsSpec, clock: Clock) -> None:
        self.spec = spec
        self.clock = clock
        self.local = MemoryLimiterStore(clock)
        self.store: LimiterStore = (
            RedisLimiterStore.from_url(spec.redis_url, spec.redis_timeout)
            if spec.store == "redis"
            else self.local
        )
        self.remote = spec.store == "redis"
        self.breaker = Breaker(clock, spec.breaker.failures, spec.breaker.open_for)
        #: Subjects refused recently: (until, the RateLimit header of that refusal).
        self.denied_until: dict[str, tuple[float, str]] = {}
        #: Decisions by outcome, for metrics and tests.
        self.counts: dict[str, int] = {}

    def count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    async def decide(
        self, keys: list[str], limits: tuple[Limit, ...], cost: int
    ) -> Decision | None:
        """The store's decision, or None when it cannot answer in time."""
        if not self.remote:
            return await self.local.decide(keys, limits, cost)
        if not self.breaker.allow():
            return None
        try:
            async with asyncio.timeout(self.spec.redis_timeout):
                decision = await self.store.decide(keys, limits, cost)
        except (StoreError, TimeoutError):
            self.breaker.failed()
            return None
        except BaseException:
            # Cancelled (the client left) or a bug: either way this was no verdict on
            # the store, and a probe must not stay claimed forever.
            self.breaker.abandoned()
            raise
        self.breaker.succeeded()
        return decision

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
        self._header = spec.by[len("header:") :] if spec.by.startswith("header:") else None

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
            return "k:" + consumer.credential_id, self._limits_for(consumer.id, consumer.plan)
        if self._header is not None:
            value = ctx.request.headers.get(self._header)
            if value is not None:
                return f"h:{self._header}:{value}", self._anonymous
        return "ip:" + (ctx.request.remote or "unknown"), self._anonymous

    async def handle(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse:
        subject, limit_set = self._subject(ctx)
        limits = limit_set.limits
        if not limits:
            return await call_next(ctx)
        limiter = self._limiter
        spec = self._spec
        tag = "{rl:" + subject + "}"
        route_start = len(limits) - self._own_count
        keys = [
            tag + (self._route_prefix if index >= route_start else ":") + limit.name
            for index, limit in enumerate(limits)
        ]
        # Per subject and route: a refusal depends on the route's own limits and cost,
        # so it must not refuse the subject's requests on other routes.
        deny_key = tag + self._route_prefix
        now = limiter.clock.monotonic()
        denied = limiter.denied_until.get(deny_key)
        if denied is not None and denied[0] > now and not spec.shadow:
            # Refused a moment ago and not allowed back yet: no need to ask the store.
            limiter.count("refused_cached")
            ctx.response_headers.append(("RateLimit-Policy", limit_set.policy_header))
            ctx.response_headers.append(("RateLimit", denied[1]))
            raise TooManyRequests(
                "the rate limit is exceeded", headers={"Retry-After": _seconds(denied[0] - now)}
            )
        if limiter.remote:
            # A round trip to Redis: show what it cost in Server-Timing.
            started = limiter.clock.monotonic()
            decision = await limiter.decide(keys, limits, self._cost)
            ctx.policy_timings.append(("ratelimit", limiter.clock.monotonic() - started))
        else:
            decision = await limiter.decide(keys, limits, self._cost)
        if decision is None:
            decision = await self._store_down(ctx, keys, limit_set)
            if decision is None:
                return await call_next(ctx)
        headers = ctx.response_headers
        state = _state_header(limits, decision)
        headers.append(("RateLimit-Policy", limit_set.policy_header))
        headers.append(("RateLimit", state))
        if decision.admitted:
            limiter.count("admitted")
            return await call_next(ctx)
        if spec.shadow:
            limiter.count("shadow_refused")
            headers.append((DEGRADED_HEADER, "shadow;would-refuse"))
            return await call_next(ctx)
        limiter.count("refused")
        retry = decision.retry_after
        limiter.denied_until[deny_key] = (now + retry, state)
        if len(limiter.denied_until) > 100_000:
            limiter.denied_until.clear()  # bounded: it is only an optimisation
        raise TooManyRequests(
            "the rate limit is exceeded", headers={"Retry-After": _seconds(retry)}
        )

    async def _store_down(
        self, ctx: RequestContext, keys: list[str], limit_set: LimitSet
    ) -> Decision | None:
        mode = self._spec.on_store_down
        limiter = self._limiter
        if mode == "fail_closed":
            limiter.count("store_down_refused")
            raise ServiceUnavailable(
                "rate limits cannot be checked right now", headers={"Retry-After": "1"}
            )
        if mode == "local_fallback":
            limiter.count("local_fallback")
            ctx.response_headers.append((DEGRADED_HEADER, "local-fallback"))
            return await limiter.local.decide(keys, limit_set.fallback, self._cost)
        limiter.count("store_down_admitted")
        ctx.response_headers.append((DEGRADED_HEADER, "store-unavailable"))
        return None


def _state_header(limits: tuple[Limit, ...], decision: Decision) -> str:
    return ", ".join(
        f'"{limit.name}";r={outcome.remaining};t={max(0, math.ceil(outcome.reset))}'
        for limit, outcome in zip(limits, decision.outcomes, strict=True)
    )


def _seconds(delay: float) -> str:
    return str(max(1, math.ceil(delay)))
