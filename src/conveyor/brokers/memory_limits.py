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

from conveyor.brokers.base import Controls, RateLimit

ReadyEntry = tuple[int, int, int, str]  # as in memory.py: (-priority, seq, ticket, job_id)


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
