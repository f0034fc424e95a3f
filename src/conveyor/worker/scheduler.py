"""The scheduler: every worker fires the app's ``@app.periodic`` schedules.

No leader and no beat process: each worker computes every schedule's ticks
itself and fires each tick when it is due; the store claims the tick with
its job's enqueue in one atomic step (``Broker.fire``), so one job is
enqueued per tick however many workers fire it, and the schedules tick on as
long as one worker runs. A worker fires all of the app's schedules, whatever
queues it serves: its job lands in the schedule's queue, for the workers that
serve it.

Cost: the next tick of each schedule sits in a heap here; the scheduler
sleeps (on the app's clock, so tests move time) until the earliest one and
touches the store only then, with one ``fire`` call for every tick due at
that moment (one transaction, or one script per queue, in one round trip).
Between ticks it costs nothing, and the fetch loop never waits for it.

Missed ticks (``schedules.py`` tells the rule). A worker that starts looks
at the latest tick only: the ones before it were for the workers that ran
then (or none did: they were missed). A running worker fires every tick
after the one it fired last, late if its loop was held up, as long as each
is on time (``ON_TIME``); older ones are skipped (``missed="skip"``) or
fired once, at the newest (``missed="run_once"``).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Awaitable, Sequence

from conveyor.app import Conveyor
from conveyor.brokers.async_store import AsyncStore
from conveyor.brokers.base import Tick
from conveyor.schedules import ON_TIME, Schedule, iso
from conveyor.worker.control import Control

log = logging.getLogger("conveyor.worker")

#: Longest sleep between looks at the clock: a wall clock set back or forward
#: (NTP, a suspended laptop) is noticed within this many seconds.
MAX_SLEEP = 30.0
RETRY = 1.0  # seconds before firing again after the store failed


class Scheduler:
    """Fires ``schedules`` (the app's, by default) through ``store``."""

    def __init__(
        self,
        app: Conveyor,
        store: AsyncStore,
        control: Control,
        schedules: Sequence[Schedule] | None = None,
    ) -> None:
        self.app = app
        self.clock = app.clock
        self._store = store
        self._control = control
        self.schedules = list(app.schedules.values() if schedules is None else schedules)
        self._heap: list[tuple[int, int]] = []  # (next tick, index in schedules)

    async def run(self) -> None:
        if not self.schedules:
            return
        try:
            await self._loop()
        except _Stop:
            return

    async def _loop(self) -> None:
        while not await self._try(self._start(), "starting the scheduler"):
            if self._control.stopping.is_set():
                return
            await self.clock.sleep(RETRY)
        while self._heap and not self._control.stopping.is_set():
            now = self.clock.now()
            if self._heap[0][0] > now:
                await self.clock.sleep(min(self._heap[0][0] - now, MAX_SLEEP))
                continue
            due = []
            while self._heap and self._heap[0][0] <= now:
                due.append(heapq.heappop(self._heap))
            if not await self._try(self._fire(due, now), "firing schedules"):
                for entry in due:  # as they were: the next round judges them again
                    heapq.heappush(self._heap, entry)
                await self.clock.sleep(RETRY)

    async def _try(self, step: Awaitable[None], doing: str) -> bool:
        """Await ``step``; False after an outage of the store."""
        try:
            await step
        except Exception as exc:
            if self._control.fatal(exc, doing):
                raise _Stop from exc
            log.error("scheduler: %s failed: %s", doing, exc)
            return False
        return True

    async def _start(self) -> None:
        """The first tick to look at for each schedule: the latest one if it
        is on time (or, ``run_once``, later than the last one the store
        recorded), else the next one."""
        now = self.clock.now()
        run_once = [s for s in self.schedules if s.missed == "run_once"]
        recorded = dict(
            zip(
                (s.name for s in run_once),
                await self._store.last_ticks([(s.queue, s.name) for s in run_once])
                if run_once
                else [],
                strict=True,
            )
        )
        self._heap = []
        for i, schedule in enumerate(self.schedules):
            latest = schedule.latest(now)
            last = recorded.get(schedule.name)
            if latest is not None and (
                now - latest <= ON_TIME or (last is not None and latest > last)
            ):
                self._heap.append((latest, i))
            elif (first := schedule.next_after(now)) is not None:
                self._heap.append((first, i))
        heapq.heapify(self._heap)
        log.info("scheduler: firing %d schedule(s)", len(self.schedules))

    async def _fire(self, due: list[tuple[int, int]], now: float) -> None:
        """Fire the ticks from each of ``due`` up to ``now``, and put each
        schedule's next tick in the heap. Each tick on time (at most
        ``ON_TIME`` old) fires, in order: a worker whose loop was held up
        for a few ticks fires them all, late. Older ones were missed:
        skipped, or (``run_once``) the newest of them fires."""
        ticks: list[Tick] = []
        following: list[tuple[int, int]] = []
        cut = math.ceil(now - ON_TIME)  # the oldest whole second still on time
        for at, i in due:
            schedule = self.schedules[i]
            tick: int | None = at
            if at < cut:
                newest_missed = schedule.latest(cut - 1)
                if schedule.missed == "run_once" and newest_missed is not None:
                    ticks.append(self._tick(schedule, max(newest_missed, at)))
                tick = schedule.next_after(cut - 1)
            while tick is not None and tick <= now:  # ON_TIME bounds this loop
                ticks.append(self._tick(schedule, tick))
                tick = schedule.next_after(tick)
            if tick is not None:
                following.append((tick, i))
        fired = await self._store.fire(ticks) if ticks else []
        for fired_tick, done in zip(ticks, fired, strict=True):
            if done:
                log.info("schedule %s: enqueued %s", fired_tick.schedule, fired_tick.job.id)
            else:
                log.debug(
                    "schedule %s: tick %s fired elsewhere", fired_tick.schedule, iso(fired_tick.at)
                )
        for entry in following:
            heapq.heappush(self._heap, entry)

    def _tick(self, schedule: Schedule, at: int) -> Tick:
        return Tick(schedule.name, at, self.app.tick_job(schedule, at))


class _Stop(Exception):
    """The store refuses us for good, or a bug: ``Control`` has stopped the worker."""
