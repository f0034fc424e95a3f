"""Time, injectable: stores and workers ask a clock, so tests move time forward
instead of sleeping."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemClock:
    """Wall-clock time; the default everywhere outside tests."""

    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock that only moves when told to.

    >>> clock = FakeClock(1000.0)
    >>> clock.advance(30)
    >>> clock.now()
    1030.0
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def set(self, timestamp: float) -> None:
        with self._lock:
            self._now = float(timestamp)
