"""``Deadline`` on a ``ManualClock``: time moves only when the test moves it."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.context import Deadline, ManualClock, SystemClock


def test_manual_clock_moves_only_when_advanced() -> None:
    clock = ManualClock(monotonic=5.0, wall=100.0)
    assert (clock.monotonic(), clock.wall()) == (5.0, 100.0)
    assert (clock.monotonic(), clock.wall()) == (5.0, 100.0)
    clock.advance(1.5)
    assert (clock.monotonic(), clock.wall()) == (6.5, 101.5)


def test_after_is_measured_from_now() -> None:
    clock = ManualClock(monotonic=1000.0)
    deadline = Deadline.after(0.05, clock)
    assert deadline.at == pytest.approx(1000.05)
    assert deadline.clock is clock
    assert deadline.remaining() == pytest.approx(0.05)


def test_remaining_shrinks_as_the_clock_advances() -> None:
    clock = ManualClock()
    deadline = Deadline.after(1.0, clock)
    clock.advance(0.25)
    assert deadline.remaining() == pytest.approx(0.75)
    clock.advance(0.5)
    assert deadline.remaining() == pytest.approx(0.25)


def test_remaining_never_goes_below_zero() -> None:
    clock = ManualClock()
    deadline = Deadline.after(0.1, clock)
    clock.advance(5.0)
    assert deadline.remaining() == 0.0


def test_expired_turns_true_exactly_at_the_deadline() -> None:
    clock = ManualClock(monotonic=10.0)
    deadline = Deadline(at=11.0, clock=clock)
    states = [deadline.expired]
    clock.advance(0.75)  # binary fractions: the sums are exact
    states.append(deadline.expired)
    clock.advance(0.25)
    states.append(deadline.expired)
    clock.advance(1.0)
    states.append(deadline.expired)
    assert states == [False, False, True, True]
    assert deadline.remaining() == 0.0


def test_zero_budget_is_expired_at_once() -> None:
    deadline = Deadline.after(0.0, ManualClock())
    assert deadline.expired
    assert deadline.remaining() == 0.0


def test_cap_shorter_than_what_is_left_gives_the_shorter_deadline() -> None:
    clock = ManualClock(monotonic=100.0)
    parent = Deadline.after(1.0, clock)
    child = parent.cap(0.25)
    assert child.at == pytest.approx(100.25)
    assert child.remaining() == pytest.approx(0.25)
    assert parent.at == pytest.approx(101.0)


def test_cap_never_extends_the_parent() -> None:
    clock = ManualClock(monotonic=100.0)
    parent = Deadline.after(0.05, clock)
    child = parent.cap(30.0)
    assert child.at == parent.at
    assert child.remaining() == pytest.approx(0.05)


def test_cap_is_measured_from_now_not_from_the_parent_start() -> None:
    clock = ManualClock(monotonic=0.0)
    parent = Deadline.after(1.0, clock)
    clock.advance(0.9)
    assert parent.cap(0.5).at == parent.at
    assert parent.cap(0.05).at == pytest.approx(0.95)


def test_cap_of_an_expired_deadline_stays_expired() -> None:
    clock = ManualClock()
    parent = Deadline.after(0.1, clock)
    clock.advance(1.0)
    child = parent.cap(10.0)
    assert child.expired
    assert child.remaining() == 0.0


def test_caps_chain_and_only_ever_shrink() -> None:
    clock = ManualClock()
    root = Deadline.after(0.05, clock)
    deadlines = [root, root.cap(0.04), root.cap(0.04).cap(1.0), root.cap(0.04).cap(0.01)]
    ats = [deadline.at for deadline in deadlines]
    assert ats == sorted(ats, reverse=True)
    assert ats[1] == ats[2]


def test_deadline_is_frozen() -> None:
    deadline = Deadline.after(1.0, ManualClock())
    with pytest.raises(dataclasses.FrozenInstanceError):
        deadline.at = 0.0  # type: ignore[misc]


def test_system_clock_is_monotonic() -> None:
    clock = SystemClock()
    first = clock.monotonic()
    assert clock.monotonic() >= first
    assert clock.wall() > 1_600_000_000
