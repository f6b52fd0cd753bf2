"""How a sample service misbehaves: its latency distribution and its error rate.

Durations are read from numbers of milliseconds or strings like ``"500ms"`` and
``"1.5s"``, on the command line and through ``/_control`` alike.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

_Z99 = 2.3263478740408408  # 99th percentile of the standard normal distribution

_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?\s*", re.IGNORECASE)


class FieldError(ValueError):
    """A bad value for a named field, answered as a 400 that names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parse_duration_ms(value: object) -> float:
    """Milliseconds from a number of milliseconds or a string like "500ms", "1.5s" or "20"."""
    if isinstance(value, bool):  # bool is an int subclass, but never a duration
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        ms = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        ms = float(match[1]) * (1000.0 if (match[2] or "").lower() == "s" else 1.0)
    else:
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 1.5s or milliseconds)")
    if not math.isfinite(ms) or ms < 0:
        raise ValueError(f"duration must be finite and >= 0, got {value!r}")
    return ms


def parse_error_rate(value: object) -> float:
    """A fraction of requests, from 0 to 1, given as a number or a numeric string."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a fraction: {value!r}")
    try:
        rate = float(value)
    except ValueError:
        raise ValueError(f"not a fraction: {value!r}") from None
    if not 0.0 <= rate <= 1.0:  # also rejects nan
        raise ValueError(f"error rate must be from 0 to 1, got {value!r}")
    return rate


def parse_duration_s(value: object) -> float:
    """Seconds, from what ``parse_duration_ms`` reads."""
    return parse_duration_ms(value) / 1000.0


def _fmt_duration(seconds: float) -> str:
    # Same syntax parse_duration_ms reads, so GET /_control output can be PUT back.
    return f"{seconds * 1000:g}ms"


@dataclass(frozen=True)
class Behaviour:
    """How a service misbehaves: a log-normal added latency and a rate of 5xx answers.

    The latency is the log-normal whose median is ``median_s`` and whose 99th percentile
    is ``p99_s``; a median of 0 adds no delay. Invalid values raise FieldError naming
    the field as the control endpoint spells it (latency, p99, error_rate).
    """

    median_s: float = 0.0
    p99_s: float = 0.0
    error_rate: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.median_s) and self.median_s >= 0):
            raise FieldError("latency", f"latency must be finite and >= 0, got {self.median_s}s")
        if not (math.isfinite(self.p99_s) and self.p99_s >= self.median_s):
            p99, median = _fmt_duration(self.p99_s), _fmt_duration(self.median_s)
            raise FieldError("p99", f"p99 ({p99}) must be >= latency ({median})")
        if not 0.0 <= self.error_rate <= 1.0:
            raise FieldError("error_rate", f"error_rate must be from 0 to 1, got {self.error_rate}")

    def with_changes(
        self,
        median_s: float | None = None,
        p99_s: float | None = None,
        error_rate: float | None = None,
    ) -> Behaviour:
        """A copy with the given values replaced.

        A new median without a new p99 scales p99 along, so the distribution keeps its
        shape and changing the median back restores it; a zero median has no shape, so
        p99 then becomes the new median.
        """
        if median_s is not None and p99_s is None:
            spread = self.p99_s / self.median_s if self.median_s > 0 else 1.0
            p99_s = median_s * spread
        return Behaviour(
            self.median_s if median_s is None else median_s,
            self.p99_s if p99_s is None else p99_s,
            self.error_rate if error_rate is None else error_rate,
        )

    def sample_delay(self, rng: random.Random) -> float:
        if self.median_s == 0:
            return 0.0
        sigma = math.log(self.p99_s / self.median_s) / _Z99
        return rng.lognormvariate(math.log(self.median_s), sigma)

    def to_json(self) -> dict[str, object]:
        return {
            "latency": _fmt_duration(self.median_s),
            "p99": _fmt_duration(self.p99_s),
            "error_rate": self.error_rate,
        }
