"""Time, injectable: stores and workers ask a clock, so tests move time forward
instead of sleeping.

A clock tells the time (``now``) and waits for it (``sleep``, on an event
loop). The worker's own timers (lease renewal, maintenance, the back-off
while the store is down) sleep on the app's clock, so a test with a
``FakeClock`` fires them by advancing it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` of this clock's time have passed."""
        ...


class SystemClock:
    """Wall-clock time; the default everywhere outside tests."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class FakeClock:
    """A clock that only moves when told to; its sleepers wake when it has
    moved far enough (from any thread).

    >>> clock = FakeClock(1000.0)
    >>> clock.advance(30)
    >>> clock.now()
    1030.0
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self._sleepers: list[tuple[float, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        sleeper = (self._now + seconds, loop, future)
        with self._lock:
            self._sleepers.append(sleeper)
        try:
            await future
        finally:
            with self._lock:
                if sleeper in self._sleepers:
                    self._sleepers.remove(sleeper)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
        self._wake_due()

    def set(self, timestamp: float) -> None:
        with self._lock:
            self._now = float(timestamp)
        self._wake_due()

    def _wake_due(self) -> None:
        with self._lock:
            due = [(loop, future) for at, loop, future in self._sleepers if at <= self._now]
        for loop, future in due:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake, future)
