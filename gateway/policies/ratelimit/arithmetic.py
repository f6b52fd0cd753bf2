"""The arithmetic of one rate-limit decision, pure and clock-free.

Theory of operation:
- A *rate* limit (``rate: 10/s, burst: 20``) is GCRA, the generic cell rate algorithm:
  the state is one number, the theoretical arrival time (TAT). Each unit of cost moves
  the TAT forward by the emission interval ``T = 1/rate``; a request is admitted while
  the TAT stays within ``burst * T`` of now. So up to ``burst`` requests pass at once,
  and after that they are spaced ``T`` apart: a token bucket of size ``burst`` refilled
  at ``rate``, kept in one float instead of a count and a timestamp.
- A *quota* (``quota: 10000/day``) is a fixed window aligned to the epoch (days start at
  00:00 UTC): a counter per window.
- All limits of a request are decided together: each is checked against its state, and
  only if every one admits is every state advanced. A refusal changes nothing, so a
  refused request costs no budget, and a burst and a quota are charged together or not
  at all.
The Redis script (``limiter.lua``) is this module transcribed; the store test suite
runs the same cases against both. The memory store's one-rate path
(``MemoryLimiterStore.decide_rate_now``) inlines ``_rate``; a test compares the two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit as it is enforced: built from config once."""

    #: The policy name shown in ``RateLimit-Policy`` (``burst``, ``daily``, ``route``...).
    name: str
    kind: Literal["rate", "quota"]
    #: rate: units per second; quota: units per window.
    amount: float
    #: rate: the burst (bucket size); quota: unused.
    burst: int
    #: quota: the window in seconds; rate: unused.
    period: float
    #: rate: the emission interval ``1/amount``; ``burst * interval``. Derived once here
    #: because every decision needs them.
    interval: float = field(init=False, repr=False, compare=False)
    burst_time: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        interval = 1.0 / self.amount
        object.__setattr__(self, "interval", interval)
        object.__setattr__(self, "burst_time", self.burst * interval)

    @property
    def window_seconds(self) -> int:
        """``w`` in ``RateLimit-Policy``: the time the policy's quota ``q`` spans."""
        if self.kind == "quota":
            return max(1, round(self.period))
        return max(1, round(self.burst / self.amount))

    @property
    def quota_units(self) -> int:
        """``q`` in ``RateLimit-Policy``."""
        return self.burst if self.kind == "rate" else int(self.amount)


# Outcome and Decision are made for every request: plain slotted classes, not frozen
# dataclasses, whose __init__ goes through object.__setattr__ per field (twice the cost).
@dataclass(slots=True)
class Outcome:
    """What one limit says about one request. Treated as immutable."""

    admitted: bool
    remaining: int
    #: Seconds until the limit is whole again (rate) or the window resets (quota).
    reset: float
    #: Seconds until this request could pass, when refused.
    retry_after: float


@dataclass(slots=True)
class Decision:
    """Treated as immutable."""

    admitted: bool
    outcomes: tuple[Outcome, ...]

    @property
    def retry_after(self) -> float:
        return max((o.retry_after for o in self.outcomes if not o.admitted), default=0.0)


#: Slack on time comparisons: a float holding epoch seconds resolves ~0.2 µs, so
#: ``tat + cost*T - burst*T`` can land a hair after ``now`` and lose a burst's last unit.
EPSILON = 1e-6

#: The state of one limit: the TAT for a rate; (window index, count) for a quota.
State = float | tuple[int, int] | None


def decide(
    limits: Sequence[Limit], states: Sequence[State], cost: int, now: float
) -> tuple[Decision, Sequence[State]]:
    """The decision, and the new states to store (the old ones when refused)."""
    if len(limits) == 1:
        # The common case (one burst/rate limit), without the lists.
        limit = limits[0]
        state = states[0]
        outcome, new = (
            _rate(limit, state, cost, now)
            if limit.kind == "rate"
            else _quota(limit, state, cost, now)
        )
        return Decision(outcome.admitted, (outcome,)), ((new,) if outcome.admitted else states)
    outcomes: list[Outcome] = []
    new_states: list[State] = []
    admitted = True
    for limit, state in zip(limits, states, strict=True):
        if limit.kind == "rate":
            outcome, new = _rate(limit, state, cost, now)
        else:
            outcome, new = _quota(limit, state, cost, now)
        outcomes.append(outcome)
        new_states.append(new)
        admitted = admitted and outcome.admitted
    return Decision(admitted, tuple(outcomes)), (new_states if admitted else states)


def _rate(limit: Limit, state: State, cost: int, now: float) -> tuple[Outcome, float]:
    """One rate (GCRA) limit's outcome and its TAT afterwards: a refusal leaves it where
    it was (an expired or missing state reads as now)."""
    interval = limit.interval
    tat = state if isinstance(state, float) and state > now else now
    new_tat = tat + cost * interval
    allow_at = new_tat - limit.burst_time
    if now < allow_at - EPSILON:
        remaining = max(0, math.floor((now - (tat - limit.burst_time)) / interval + EPSILON))
        return Outcome(False, remaining, tat - now, allow_at - now), tat
    remaining = max(0, math.floor((now - allow_at) / interval + EPSILON))
    return Outcome(True, remaining, new_tat - now, 0.0), new_tat


def _quota(limit: Limit, state: State, cost: int, now: float) -> tuple[Outcome, State]:
    window = math.floor(now / limit.period)
    used = state[1] if isinstance(state, tuple) and state[0] == window else 0
    reset = (window + 1) * limit.period - now
    quota = int(limit.amount)
    if used + cost > quota:
        return Outcome(False, max(0, quota - used), reset, reset), state
    return Outcome(True, quota - used - cost, reset, 0.0), (window, used + cost)


def expiry(limit: Limit, state: State, now: float) -> float:
    """Seconds a stored state stays meaningful; after that it can be dropped."""
    if limit.kind == "rate":
        return max(0.0, (state if isinstance(state, float) else now) - now)
    window = state[0] if isinstance(state, tuple) else math.floor(now / limit.period)
    return max(0.0, (window + 1) * limit.period - now)
