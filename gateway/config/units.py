"""Parsers for the human units used in config: durations (``50ms``) and sizes (``8KiB``)."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s|m|h|d)$")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_SIZE = re.compile(r"^(\d+)(B|KiB|MiB|GiB|KB|MB|GB)?$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}


def parse_duration(value: object) -> float:
    """``"50ms"`` -> 0.05 seconds. A bare number is refused: ``50`` could mean either."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"not a duration: {value!r} (write a number with a unit: 50ms, 2s)")
    match = _DURATION.match(value.strip())
    if match is None:
        raise ValueError(f"not a duration: {value!r} (write a number with a unit: 50ms, 2s)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(value: object) -> int:
    """``"8KiB"`` -> 8192 bytes; a bare integer is a number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value}")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value.strip())
        if match is not None:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    raise ValueError(f"not a size: {value!r} (write bytes or a unit: 512KiB, 1MiB)")


def format_duration(seconds: float) -> str:
    if seconds < 1.0:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


_RATE = re.compile(r"^(\d+(?:\.\d+)?)/(\d*)(s|sec|second|m|min|minute|h|hour|d|day)$")
_RATE_UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}


def parse_rate(value: object) -> tuple[float, float]:
    """``"10/s"`` -> (10, 1.0); ``"10000/day"`` -> (10000, 86400); ``"5/10s"`` -> (5, 10)."""
    if isinstance(value, tuple) and len(value) == 2:
        return float(value[0]), float(value[1])  # already parsed (a model built in code)
    if not isinstance(value, str):
        raise ValueError(f"not a rate: {value!r} (write it as 10/s, 100/minute, 10000/day)")
    match = _RATE.match(value.strip())
    if match is None:
        raise ValueError(f"not a rate: {value!r} (write it as 10/s, 100/minute, 10000/day)")
    count = float(match.group(1))
    if count <= 0:
        raise ValueError(f"a rate must be above zero: {value!r}")
    multiple = int(match.group(2)) if match.group(2) else 1
    if multiple <= 0:
        raise ValueError(f"a rate's period must be above zero: {value!r}")
    return count, float(multiple * _RATE_UNITS[match.group(3)])
