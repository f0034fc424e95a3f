"""Flow control for the in-process store: sliding windows of job starts, and
the jobs parked while their bucket is full.

``memory.py`` decides, under its one lock, what a claim may take; this
module keeps the state that decision reads and writes:

- A *window* per bucket (a queue, or a task's ``rate_key``): the start times
  of the last period, oldest first, pruned as they leave it. A start at ``t``
  counts while ``now - period < t``: the window slides, so there is never a
  window edge that lets 2 x limit through.
- *Parked* jobs: a claim that meets a job whose bucket is full takes its
  ready-heap entry out of the queue's heap and parks it with its bucket, so
  the next claim does not step over the same backlog again (one key's 10,000
  jobs at the head of the line cost nothing until the key has room). Each
  parked bucket has one entry in its queue's heap of openings; when that
  time comes the claim puts back as many entries as the window has room for.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Hashable, Iterator
from typing import Protocol

from conveyor.brokers.base import WAITING, Controls, JobRecord, RateLimit

ReadyEntry = tuple[int, int, int, str]  # as in memory.py: (-priority, seq, ticket, job_id)


class _Store(Protocol):
    """What ``Flow`` asks of the memory store (under its lock)."""

    controls: Controls

    def _live(self, ticket: int, job_id: str, state: str) -> JobRecord | None: ...

    def _lease(
        self, job: JobRecord, now: float, lease_seconds: float, worker: str
    ) -> JobRecord: ...

    def _running(self, queue: str, now: float) -> tuple[int, float | None]: ...


def queue_bucket(queue: str) -> Hashable:
    return ("queue", queue)


def task_bucket(task: str, rate_key: str | None) -> Hashable:
    return ("task", task, rate_key)


class Windows:
    """The start times of the last period, per bucket."""

    def __init__(self) -> None:
        self._starts: dict[Hashable, deque[float]] = {}

    def room(self, bucket: Hashable, rate: RateLimit, now: float) -> int:
        """How many more starts the window of ``bucket`` allows now."""
        starts = self._starts.get(bucket)
        if starts is None:
            return rate.limit
        cutoff = now - rate.period
        while starts and starts[0] <= cutoff:
            starts.popleft()
        if not starts:
            del self._starts[bucket]
            return rate.limit
        return rate.limit - len(starts)

    def start(self, bucket: Hashable, now: float, count: int = 1) -> None:
        self._starts.setdefault(bucket, deque()).extend([now] * count)

    def opening(self, bucket: Hashable, rate: RateLimit, now: float) -> float:
        """When a window that is full now has room again (call after ``room``)."""
        starts = self._starts.get(bucket)
        if not starts or len(starts) < rate.limit:
            return now
        return starts[len(starts) - rate.limit] + rate.period

    def refill(self, bucket: Hashable, rate: RateLimit, now: float) -> float:
        """When the window is full again if its room is taken now, and then
        opens: its oldest start (or now) plus the period."""
        starts = self._starts.get(bucket)
        return (starts[0] if starts else now) + rate.period

    def sweep(self, controls: Controls, now: float) -> None:
        """Forget windows whose starts have all left them (keys not seen again)."""
        for bucket in list(self._starts):
            kind, name = bucket[0], bucket[1]  # type: ignore[index]
            rates = controls.queue_rates if kind == "queue" else controls.task_rates
            rate = rates.get(name)
            if rate is None or self._starts[bucket][-1] <= now - rate.period:
                del self._starts[bucket]


class Parking:
    """Ready-heap entries taken out of line while their bucket is full."""

    def __init__(self) -> None:
        self._parked: dict[str, dict[Hashable, list[ReadyEntry]]] = {}
        self._openings: dict[str, list[tuple[float, int, Hashable]]] = {}
        self._tie = itertools.count()  # buckets are not comparable: order equal times
        #: The controls the jobs were parked under: when the app swaps them,
        #: every parked job goes back in line (its limit may be gone).
        self.controls: Controls | None = None

    def park(self, queue: str, bucket: Hashable, entry: ReadyEntry, opens: float) -> None:
        buckets = self._parked.setdefault(queue, {})
        entries = buckets.get(bucket)
        if entries is None:
            entries = buckets[bucket] = []
            heapq.heappush(self._openings.setdefault(queue, []), (opens, next(self._tie), bucket))
        heapq.heappush(entries, entry)

    def opened(self, queue: str, now: float) -> Iterator[tuple[Hashable, list[ReadyEntry]]]:
        """Take out the buckets of ``queue`` whose opening time has come, with
        their parked entries (a heap); park back what must wait longer."""
        openings = self._openings.get(queue)
        while openings and openings[0][0] <= now:
            _, _, bucket = heapq.heappop(openings)
            yield bucket, self._parked[queue].pop(bucket)

    def next_opening(self, queue: str) -> float | None:
        openings = self._openings.get(queue)
        return openings[0][0] if openings else None

    def unpark_all(self) -> Iterator[tuple[str, list[ReadyEntry]]]:
        """Every parked entry, by queue, forgetting them all."""
        parked, self._parked, self._openings = self._parked, {}, {}
        for queue, buckets in parked.items():
            for entries in buckets.values():
                yield queue, entries


class Flow:
    """The memory store's claims under controls: its windows and parked jobs,
    and the decisions that read them (always under the store's lock)."""

    def __init__(self) -> None:
        self.windows = Windows()
        self.parking = Parking()

    @property
    def controls(self) -> Controls | None:
        return self.parking.controls

    def new_controls(self, controls: Controls, ready: dict[str, list[ReadyEntry]]) -> None:
        """The app swapped the controls: parked jobs go back in line (their
        limit may have changed or gone); the next claims judge them again."""
        for queue, entries in self.parking.unpark_all():
            heap = ready.setdefault(queue, [])
            for entry in entries:
                heapq.heappush(heap, entry)
        self.parking.controls = controls

    def claim(
        self,
        store: _Store,
        queue: str,
        heap: list[ReadyEntry],
        limit: int,
        now: float,
        lease_seconds: float,
        worker: str,
        claimed: list[JobRecord],
    ) -> None:
        """``claim``'s loop for a queue under controls: as many as the queue's
        window and cap allow, each job only while its task's bucket has room;
        a job of a full bucket is parked (out of line until the bucket opens)."""
        controls = store.controls
        room = limit - len(claimed)
        queue_rate = controls.queue_rates.get(queue)
        if queue_rate is not None:
            room = min(room, self.windows.room(queue_bucket(queue), queue_rate, now))
        cap = controls.concurrency.get(queue)
        if cap is not None:
            room = min(room, cap - store._running(queue, now)[0])
        rates = controls.task_rates
        if rates:
            self._unpark(store, queue, heap, now)
        taken = 0
        while heap and taken < room:
            entry = heapq.heappop(heap)
            job = store._live(entry[2], entry[3], WAITING)
            if job is None:
                continue
            rate = rates.get(job.task) if rates else None
            if rate is not None:
                bucket = task_bucket(job.task, job.rate_key)
                if self.windows.room(bucket, rate, now) <= 0:
                    opens = self.windows.opening(bucket, rate, now)
                    self.parking.park(queue, bucket, entry, opens)
                    continue
                self.windows.start(bucket, now)
            claimed.append(store._lease(job, now, lease_seconds, worker))
            taken += 1
        if queue_rate is not None and taken:
            self.windows.start(queue_bucket(queue), now, taken)

    def _unpark(self, store: _Store, queue: str, heap: list[ReadyEntry], now: float) -> None:
        """Put back in line, from each bucket of ``queue`` whose opening has
        come, as many parked jobs as its window has room for."""
        for bucket, entries in list(self.parking.opened(queue, now)):
            rate = store.controls.task_rates.get(bucket[1])  # type: ignore[index]
            room = len(entries) if rate is None else self.windows.room(bucket, rate, now)
            while entries and room > 0:
                entry = heapq.heappop(entries)
                if store._live(entry[2], entry[3], WAITING) is not None:
                    heapq.heappush(heap, entry)
                    room -= 1
            if entries and rate is not None:
                opens = self.windows.refill(bucket, rate, now)
                for entry in entries:
                    self.parking.park(queue, bucket, entry, opens)

    def held_due(self, store: _Store, queue: str, now: float) -> float | None:
        """When a ready job of ``queue`` (which holds some) held back by the
        controls may be claimable, or None when none is held back."""
        controls = store.controls
        times = []
        queue_rate = controls.queue_rates.get(queue)
        if queue_rate is not None:
            bucket = queue_bucket(queue)
            if self.windows.room(bucket, queue_rate, now) <= 0:
                times.append(self.windows.opening(bucket, queue_rate, now))
        cap = controls.concurrency.get(queue)
        if cap is not None:
            running, first = store._running(queue, now)
            if running >= cap and first is not None:
                times.append(first)
        if (opens := self.parking.next_opening(queue)) is not None:
            times.append(opens)
        return min(times, default=None)
