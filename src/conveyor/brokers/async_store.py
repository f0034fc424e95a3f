"""The worker's one door to the store: every store call it makes, awaited.

A broker's operations are plain blocking calls (``base.py`` says why). The
worker runs on an event loop that must never block, so it never calls a
broker directly: it awaits an ``AsyncStore`` (``broker.async_store()``),
which decides how each call is carried. Here, the way that suits every
store: short calls go one at a time through one thread (a store serialises
writes anyway, and a fixed thread keeps one connection), and the idle wait,
which blocks, through a thread of its own.

A store may carry some calls faster behind the same door, without the
worker knowing: the Redis store's ``RedisAsyncStore`` sends the busy
worker's complete-and-claim and the idle wait as pipelines whose replies the
event loop reads itself, with no thread hop either way. Its tests are the
Redis store's own; the conformance suite drives this door on every store.

>>> store = broker.async_store()                             # doctest: +SKIP
>>> done, claimed = await store.complete_and_claim([], ["default"], 10, 30.0, "w1")  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor.threads import ThreadRunner

if TYPE_CHECKING:
    from conveyor.brokers.base import AttemptError, Broker, JobRecord, Lease, Recovered, Tick

T = TypeVar("T")


class AsyncStore:
    """A broker's operations as coroutines, for code on an event loop.

    Each method is the broker's operation of the same name (its contract is
    in ``base.Broker``); only the way it is carried differs. ``wait_and_claim``
    ends early after ``interrupt()``; jobs it claimed belong to the caller.
    """

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._thread: ThreadPoolExecutor | None = None
        self._waits = ThreadRunner("wait", max_idle=1)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the store thread (made on first use)."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="conveyor-store")
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # -- the busy worker's and the idle worker's calls ----------------------

    async def complete_and_claim(
        self,
        done: Sequence[tuple[Lease, str]],
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker: str,
    ) -> tuple[list[bool], list[JobRecord]]:
        return await self._call(
            self.broker.complete_and_claim, done, queues, limit, lease_seconds, worker
        )

    async def wait_and_claim(
        self,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker: str,
        timeout: float,
    ) -> list[JobRecord]:
        return await self._waits.run(
            self.broker.wait_and_claim, queues, limit, lease_seconds, worker, timeout
        )

    # -- the rest, one store thread -----------------------------------------

    async def fail(self, lease: Lease, error: AttemptError, retry_at: float | None) -> bool:
        return await self._call(self.broker.fail, lease, error, retry_at)

    async def release(self, leases: Sequence[Lease]) -> int:
        return await self._call(self.broker.release, leases)

    async def extend(self, leases: Sequence[Lease], lease_seconds: float) -> list[str]:
        return await self._call(self.broker.extend, leases, lease_seconds)

    async def recover(self, max_stalled: int) -> list[Recovered]:
        return await self._call(self.broker.recover, max_stalled)

    async def trim(self, queue: str, state: str, keep: int | None, older_than: float | None) -> int:
        return await self._call(self.broker.trim, queue, state, keep, older_than)

    async def pending(self, queues: Sequence[str]) -> int:
        return await self._call(self.broker.pending, queues)

    async def next_due(self, queues: Sequence[str]) -> float | None:
        return await self._call(self.broker.next_due, queues)

    async def fire(self, ticks: Sequence[Tick]) -> list[bool]:
        return await self._call(self.broker.fire, ticks)

    async def last_ticks(self, schedules: Sequence[tuple[str, str]]) -> list[int | None]:
        return await self._call(self.broker.last_ticks, schedules)

    async def paused(self) -> set[str]:
        return await self._call(self.broker.paused)

    async def interrupt(self) -> None:
        await self._call(self.broker.interrupt)

    def close(self) -> None:
        """Let the threads end (a wait still in the store ends with it)."""
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        self._waits.close()
