"""Clocks. Everything that schedules takes a Clock so tests can drive time by hand."""

from __future__ import annotations

import threading
import time
from typing import Protocol

TICKS_PER_SECOND = 10_000_000  # Graph's media library counts time in 100 ns ticks.


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic time base."""
        ...

    def wait_until(self, deadline: float, stop: threading.Event) -> bool:
        """Block the calling thread until `deadline` or until `stop` is set; True if stopped."""
        ...


class MonotonicClock:
    """The real clock: time.monotonic() and a wait that a stop event interrupts."""

    def now(self) -> float:
        return time.monotonic()

    def wait_until(self, deadline: float, stop: threading.Event) -> bool:
        delay = deadline - time.monotonic()
        if delay <= 0:
            return stop.is_set()
        return stop.wait(delay)


class FakeClock:
    """A clock that only moves when told to. wait_until() jumps straight to the deadline."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def wait_until(self, deadline: float, stop: threading.Event) -> bool:
        if deadline > self._now:
            self._now = deadline
        return stop.is_set()


def to_ticks(seconds: float) -> int:
    """Seconds to 100 ns ticks, the unit of AudioFrame.timestamp."""
    return round(seconds * TICKS_PER_SECOND)
