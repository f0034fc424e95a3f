"""Fetching: where a job is claimed.

The fetch loop keeps the slots full. Each turn it writes what the
acknowledger holds and claims as many jobs as there are free slots, in one
store call (``Acknowledger.write_and_claim``), and hands them to the runner.
When nothing is ready it waits for work: one ``wait_and_claim`` through the
store's door, which claims what it finds for the slots reserved for it, so a
job enqueued meanwhile starts without another round trip.

It tells errors apart. An unreachable store (``StoreUnavailable``) is ridden
out: results are kept, the loop backs off (0.1 s doubling to 5 s, on the
app's clock) with one log line a retry. A store that refuses the worker for
good (``StoreMisconfigured``) stops it with exit status 2; anything else is a
bug, logged with its traceback, and stops it with exit status 1, rather than
being retried as if it were an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from conveyor.brokers.async_store import AsyncStore
from conveyor.brokers.base import JobRecord, Lease
from conveyor.clock import Clock
from conveyor.worker.ack import Acknowledger
from conveyor.worker.control import Control
from conveyor.worker.run import Runner

log = logging.getLogger("conveyor.worker")

# While the store is unreachable: first retry after STORE_RETRY_MIN seconds,
# doubling up to STORE_RETRY_MAX, so a restart is noticed fast and an outage
# costs one log line every few seconds, not a crash loop.
STORE_RETRY_MIN = 0.1
STORE_RETRY_MAX = 5.0


class Fetcher:
    """Claims jobs of ``queues`` (in strict order) for ``runner``'s free slots."""

    def __init__(
        self,
        *,
        store: AsyncStore,
        clock: Clock,
        runner: Runner,
        acks: Acknowledger,
        control: Control,
        queues: Sequence[str],
        lease: float,
        worker: str,
        poll_interval: float,
        burst: bool,
    ) -> None:
        self._store = store
        self._clock = clock
        self._runner = runner
        self._acks = acks
        self._control = control
        self.queues = list(queues)
        self.lease = lease
        self.worker = worker
        self.poll_interval = poll_interval
        self.burst = burst
        self._wait: asyncio.Future[list[JobRecord]] | None = None  # the idle wait
        self._reserved = 0  # slots promised to that wait: it may claim this many
        self._down_since: float | None = None  # monotonic time the store became unreachable
        self._backoff = STORE_RETRY_MIN

    async def run(self) -> None:
        """Claim and start jobs until stopping (or, in burst mode, until the
        queues hold nothing waiting or active)."""
        control = self._control
        while not control.stopping.is_set():
            control.wake.clear()
            try:
                if self._take_waited():
                    # Let the new jobs start before the next store call: its
                    # thread would take the GIL from them (latency of a wake).
                    await asyncio.sleep(0)
                free = self._runner.free_slots() - self._reserved
                claim = self._runner.refill_due(free)
                if not claim:
                    due = self._acks.write_due(idle=not self._runner.running())
                    if due is None or due > 0:  # nothing worth a round trip yet
                        await self._sleep_until_woken(due)
                        continue
                claimed = await self._acks.write_and_claim(
                    self.queues, free if claim else 0, self.lease, self.worker
                )
                self._store_is_back()
                if claimed:
                    self._runner.start_claimed(claimed)
                    continue
                if not claim:
                    continue
                if self.burst and await self._queues_drained():
                    log.info("burst: queues %s are empty", ",".join(self.queues))
                    return
                await self._idle(free)
            except Exception as exc:
                if not control.fatal(exc, "fetching jobs"):
                    await self._store_is_down(exc)

    async def _sleep_until_woken(self, seconds: float | None) -> None:
        """Wait for the wake (None: for ever), at most ``seconds`` of real time."""
        wake = self._control.wake
        if seconds is None:
            await wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), seconds)

    # -- the store going away and coming back -----------------------------

    async def _store_is_down(self, exc: Exception) -> None:
        """Back off with one log line a retry (the message names the URL, its
        password masked), never a traceback."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._backoff = STORE_RETRY_MIN
        else:
            self._backoff = min(self._backoff * 2, STORE_RETRY_MAX)
        log.error(
            "store unavailable: %s; %d results waiting to be written; retrying in %.1fs",
            exc,
            self._acks.unwritten(),
            self._backoff,
        )
        sleep = asyncio.ensure_future(self._clock.sleep(self._backoff))
        woken = asyncio.ensure_future(self._control.wake.wait())
        try:
            await asyncio.wait({sleep, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleep.cancel()
            woken.cancel()

    def _store_is_back(self) -> None:
        if self._down_since is not None:
            log.warning("store reachable again after %.1fs", time.monotonic() - self._down_since)
            self._down_since = None

    async def _queues_drained(self) -> bool:
        if len(self._runner) or self._acks.unwritten():
            return False
        return await self._store.pending(self.queues) == 0

    # -- the idle wait ----------------------------------------------------

    async def _idle(self, free: int) -> None:
        """Wait for new work in the store, a freed slot, a completion or a stop.

        The wait claims what it finds for up to ``free`` slots, reserved for
        it until it returns (on Redis the job is claimed on the connection
        that was woken, with no hop through the loop first)."""
        wake = self._control.wake
        if self._wait is None:
            timeout = self.poll_interval
            due = await self._store.next_due(self.queues)
            if due is not None:
                timeout = max(0.0, min(timeout, due - self._clock.now()))
            self._wait = asyncio.ensure_future(
                self._store.wait_and_claim(self.queues, free, self.lease, self.worker, timeout)
            )
            self._reserved = free
            # Whatever the loop awaits next, the jobs this wait claims must
            # wake it (with every slot reserved it waits on the wake alone).
            self._wait.add_done_callback(lambda _: wake.set())
        await wake.wait()

    def _take_waited(self) -> int:
        """Start the jobs the finished idle wait claimed (or raise its error);
        how many."""
        if self._wait is None or not self._wait.done():
            return 0
        wait, self._wait, self._reserved = self._wait, None, 0
        claimed = wait.result()
        self._runner.start_claimed(claimed)
        return len(claimed)

    async def end_wait(self) -> None:
        """End the idle wait before the worker returns (a daemon thread still
        inside the store when the interpreter exits can crash it), and give
        back any jobs it claimed meanwhile."""
        if self._wait is None:
            return
        wait, self._wait, self._reserved = self._wait, None, 0
        deadline = asyncio.get_running_loop().time() + self.poll_interval + 1.0
        while not wait.done() and asyncio.get_running_loop().time() < deadline:
            # Again until it ends: an interrupt that comes while the wait is
            # still claiming, before it blocks, may not be seen by the block.
            with contextlib.suppress(Exception):
                await self._store.interrupt()
            await asyncio.wait({wait}, timeout=0.05)
        if not wait.done():
            wait.cancel()  # a wait this loop reads is dropped; a thread's is let go
            return
        if wait.cancelled() or wait.exception() is not None or not wait.result():
            return
        leases = [Lease(r.id, r.lease_token or "") for r in wait.result()]
        try:
            await self._store.release(leases)
        except Exception as exc:  # their leases expire and another worker runs them
            log.error("could not give back %d jobs claimed while stopping: %s", len(leases), exc)
