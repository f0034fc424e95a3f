"""When the work a Redis queue's controls hold back opens (``next_due``,
``pending``): the reads ``redis_store._heads`` adds for a controlled queue
beside its ready lines, and what it makes of their replies. A queue without
controls adds no read."""

from __future__ import annotations

import builtins
import dataclasses
from typing import Any

from conveyor.brokers.base import Controls, RateLimit
from conveyor.brokers.redis_scripts import QueueKeys
from conveyor.brokers.redis_topology import Call


@dataclasses.dataclass(frozen=True, slots=True)
class Opening:
    """When the work a queue's controls hold back opens: what ``_heads`` reads
    for a queue besides its lines, and what it makes of it. Without controls
    for the queue it reads nothing and its work is open."""

    now: float
    rate: RateLimit | None  # the queue's rate
    cap: int | None  # the queue's concurrency cap
    buckets: bool  # task rates exist: the queue may hold jobs in bucket lines
    # The marker is set whenever the queue has claimable work (one server);
    # in a Cluster it only records that work was announced, and the waits
    # look at whether work is ready instead.
    marks: bool

    @classmethod
    def of(cls, controls: Controls, queue: str, now: float, marks: bool) -> Opening:
        return cls(
            now,
            controls.queue_rates.get(queue),
            controls.concurrency.get(queue),
            bool(controls.task_rates),
            marks,
        )

    def calls(self, k: QueueKeys) -> builtins.list[Call]:
        now, calls = self.now, builtins.list[Call]()
        if not (self.buckets or self.cap is not None or self.rate is not None):
            return calls
        calls.append(lambda c: c.exists(k.marker))
        if self.buckets:  # the bucket that next has a slot
            calls.append(lambda c: c.zrange(k.buckets, 0, 0, withscores=True))
        if self.cap is not None:  # leases not expired: how many, and the first to end
            since = f"({now!r}"
            calls.append(lambda c: c.zcount(k.active, since, "+inf"))
            calls.append(
                lambda c: c.zrange(k.active, since, "+inf", byscore=True, offset=0, num=1,
                                   withscores=True)
            )  # fmt: skip
        if self.rate is not None:  # starts in the window: how many, and the oldest
            since = f"({now - self.rate.period!r}"
            calls.append(lambda c: c.zcount(k.starts, since, "+inf"))
            calls.append(
                lambda c: c.zrange(k.starts, since, "+inf", byscore=True, offset=0, num=1,
                                   withscores=True)
            )  # fmt: skip
        return calls

    def read(self, line: int, replies: builtins.list[Any]) -> tuple[bool, float | None]:
        """(whether work is claimable now, when held-back work opens or None)
        from the replies of ``calls`` and the length of the queue's ready
        line. Work a claim held back may have opened since (its window moved
        on, a lease ran out) while the claim took the marker away, so no idle
        wait would wake for it: then the time it opened, already past, so
        the caller claims at once rather than sleep."""
        if not replies:  # no controls: the line is open, and its marker tells
            return bool(line), None
        now, it = self.now, iter(replies)
        marked = next(it)
        bucket = next(it) if self.buckets else []
        opens = now  # when the queue's own limits let a job start
        if self.cap is not None:
            busy, first = next(it), next(it)
            if busy >= self.cap and first:
                opens = max(opens, first[0][1])
        if self.rate is not None:
            started, oldest = next(it), next(it)
            if started >= self.rate.limit and oldest:
                opens = max(opens, oldest[0][1] + self.rate.period)
        times = [opens] if line else []
        if bucket:  # the earliest bucket with a slot, once the queue lets jobs start
            times.append(max(opens, bucket[0][1]))
        if not times:
            return False, None
        at = min(times)
        if at > now:
            return False, at
        return True, (None if marked or not self.marks else at)
