"""A circuit breaker for the limiter's store: during an outage, requests do not each
wait for a timeout, and the gateway goes back to the store on its own.

closed -> (``failures`` in a row) -> open -> (``open_for`` passes) -> half-open: one
request probes the store; success closes the breaker, failure opens it again.
"""

from __future__ import annotations

from typing import Literal

from ...context import Clock

State = Literal["closed", "open", "half_open"]


class Breaker:
    __slots__ = ("_clock", "_failures", "_limit", "_open_for", "_opened_at", "_probing", "state")

    def __init__(self, clock: Clock, failures: int, open_for: float) -> None:
        self._clock = clock
        self._limit = failures
        self._open_for = open_for
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.state: State = "closed"

    def allow(self) -> bool:
        """May this request ask the store?"""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self._clock.monotonic() - self._opened_at < self._open_for:
                return False
            self.state = "half_open"
        if self._probing:
            return False  # one probe at a time
        self._probing = True
        return True

    def succeeded(self) -> None:
        self._failures = 0
        self._probing = False
        self.state = "closed"

    def abandoned(self) -> None:
        """The call was cancelled before it could tell: let another request probe."""
        self._probing = False

    def trip(self) -> None:
        """Open now, as after ``failures`` in a row: the store is known to be down."""
        self._probing = False
        self._failures = 0
        self.state = "open"
        self._opened_at = self._clock.monotonic()

    def failed(self) -> None:
        self._probing = False
        self._failures += 1
        if self.state == "half_open" or self._failures >= self._limit:
            self.state = "open"
            self._opened_at = self._clock.monotonic()
            self._failures = 0
