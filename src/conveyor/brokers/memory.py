"""The in-process store (``memory://``): the whole broker contract in Python.

Not a mock. It is the reference implementation users' unit tests run against,
held to the same conformance suite as SQLite, so it has to be as correct (and
as thread-safe) as the real stores. Every ``memory://`` broker is its own,
empty store; nothing is shared between instances or processes.

One lock guards all state, so each operation is atomic like a transaction.
Claiming stays cheap with many jobs: each queue keeps a heap of ready jobs
ordered by (-priority, seq), and a heap of delayed jobs ordered by run_at.
Heap entries are never removed in place (a job can leave ``waiting`` by being
cancelled, say); instead an entry is checked when it reaches the top and
dropped if its job moved on ("lazy deletion"). Each push takes a fresh ticket
and the job remembers only its latest one, so exactly one entry per job is
live: the one whose ticket matches and whose heap fits the job's state.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import secrets
import threading
import time
from collections.abc import Iterable, Sequence

import orjson

from conveyor.brokers.base import (
    ACTIVE,
    CANCELLED,
    COMPLETED,
    DEAD,
    DELAYED,
    ENDED_STATES,
    STATES,
    WAITING,
    AttemptError,
    Broker,
    EnqueueResult,
    JobRecord,
    Lease,
    NewJob,
    Recovered,
    Tick,
    held_record,
    purge_states,
)
from conveyor.brokers.memory_limits import Flow
from conveyor.clock import Clock

ReadyEntry = tuple[int, int, int, str]  # (-priority, seq, ticket, job_id): smallest first
DelayedEntry = tuple[float, int, str]  # (run_at, ticket, job_id)


@dataclasses.dataclass(slots=True)
class _Lock:
    """A unique key held in a queue (``NewJob.unique_key``): by ``job_id``
    until it ends, then until ``expires`` (its finished_at + unique_for)."""

    job_id: str
    unique_for: float
    created_at: float
    state: str | None = None  # the state its job ended in; None while it has not
    finished_at: float | None = None
    expires: float | None = None


def _snapshot(job: JobRecord) -> JobRecord:
    # Every field is immutable, so a shallow copy is enough to keep callers
    # from editing the store's own record.
    return dataclasses.replace(job)


class MemoryBroker(Broker):
    """The broker contract held in dictionaries and heaps, guarded by one lock."""

    def __init__(self, url: str, clock: Clock) -> None:
        self.url = url
        self.clock = clock
        self._lock = threading.RLock()
        # Waiters in wait_for_work sleep on this; anything that may make a job
        # ready (or changes the next due time) notifies it.
        self._cond = threading.Condition(self._lock)
        # Insertion order is seq order: a replaced job is deleted and re-added
        # with a new (larger) seq, and seq never changes otherwise.
        self._jobs: dict[str, JobRecord] = {}
        self._seq = 0
        self._ready: dict[str, list[ReadyEntry]] = {}
        self._delayed: dict[str, list[DelayedEntry]] = {}
        self._tickets: dict[str, int] = {}  # job id -> ticket of its live heap entry
        self._next_ticket = itertools.count()
        self._interrupts = 0  # bumped by interrupt(): every waiter returns
        self._waiting = 0  # wait_for_work calls inside their wait (see waiting())
        self._active: set[str] = set()  # what recover() has to look at
        self._counts: dict[str, dict[str, int]] = {}
        # Bumped per queue whenever a job there becomes waiting, so a waiter
        # can tell a wake-up that concerns its queues from one that does not.
        self._generation: dict[str, int] = {}
        self._paused: set[str] = set()
        self._last_ticks: dict[tuple[str, str], int] = {}  # (queue, schedule) -> tick
        # Unique keys: (queue, key) -> its lock; job id -> (queue, key) for
        # the jobs holding one; ended locks by expiry, to drop them lazily.
        self._locks: dict[tuple[str, str], _Lock] = {}
        self._unique: dict[str, tuple[str, str]] = {}
        self._expiring: list[tuple[float, str, str]] = []
        self._closed = False
        self._flow = Flow()  # controls: start windows and parked jobs

    # -- bookkeeping (call with the lock held) ---------------------------

    def _tally(self, queue: str, state: str, delta: int) -> None:
        counts = self._counts.setdefault(queue, dict.fromkeys(STATES, 0))
        counts[state] += delta
        if not any(counts.values()):
            del self._counts[queue]  # "every queue that holds jobs", no more

    def _move(self, job: JobRecord, state: str) -> None:
        self._tally(job.queue, job.state, -1)
        self._tally(job.queue, state, +1)
        if job.state == ACTIVE:  # whatever comes next, the lease is over
            self._active.discard(job.id)
            job.lease_token = job.lease_expires = None
            if job.queue in self.controls.concurrency:  # a slot of its cap is free
                self._generation[job.queue] = self._generation.get(job.queue, 0) + 1
                self._cond.notify_all()
        elif state == ACTIVE:
            self._active.add(job.id)
        job.state = state

    def _make_ready(self, job: JobRecord) -> None:
        self._move(job, WAITING)
        ticket = self._tickets[job.id] = next(self._next_ticket)
        entry = (-job.priority, job.seq, ticket, job.id)
        heapq.heappush(self._ready.setdefault(job.queue, []), entry)
        self._generation[job.queue] = self._generation.get(job.queue, 0) + 1
        self._cond.notify_all()

    def _make_delayed(self, job: JobRecord, run_at: float) -> None:
        job.run_at = run_at
        self._move(job, DELAYED)
        ticket = self._tickets[job.id] = next(self._next_ticket)
        heapq.heappush(self._delayed.setdefault(job.queue, []), (run_at, ticket, job.id))
        self._cond.notify_all()  # the next due time may be sooner now

    def _end(self, job: JobRecord, state: str, now: float) -> None:
        self._move(job, state)
        job.finished_at = now
        if self._unique and (where := self._unique.get(job.id)) is not None:
            lock = self._locks.get(where)
            if lock is not None and lock.job_id == job.id and lock.state is None:
                lock.state, lock.finished_at = state, now
                lock.expires = now + lock.unique_for
                heapq.heappush(self._expiring, (lock.expires, *where))

    # -- unique keys (call with the lock held) ---------------------------

    def _holder(self, new: NewJob, now: float) -> JobRecord | None:
        """The job holding ``new``'s unique key in its queue, or None when the
        key is free; a lock whose job retention deleted gives ``held_record``."""
        where = (new.queue, new.unique_key or "")
        lock = self._locks.get(where)
        if lock is None:
            return None
        job = self._jobs.get(lock.job_id)
        if lock.expires is None:  # its job has not ended: held while it exists
            return _snapshot(job) if job is not None else None
        if lock.expires <= now:
            return None
        if job is not None:
            return _snapshot(job)
        return held_record(new, lock.job_id, lock.state or "", lock.created_at, lock.finished_at)

    def _take(self, new: NewJob, now: float) -> None:
        """``new`` (just stored) takes its unique key."""
        self._drop_expired(now)
        where = (new.queue, new.unique_key or "")
        if (old := self._locks.get(where)) is not None and self._unique.get(old.job_id) == where:
            del self._unique[old.job_id]
        self._locks[where] = _Lock(new.id, new.unique_for or 0.0, now)
        self._unique[new.id] = where

    def _drop_expired(self, now: float) -> None:
        """Forget the locks whose hold ran out (called when a key is taken,
        and by trim), so they cannot pile up."""
        while self._expiring and self._expiring[0][0] <= now:
            _, queue, key = heapq.heappop(self._expiring)
            lock = self._locks.get((queue, key))
            if lock is not None and lock.expires is not None and lock.expires <= now:
                del self._locks[(queue, key)]
                if self._unique.get(lock.job_id) == (queue, key):
                    del self._unique[lock.job_id]

    def _unlock(self, job: JobRecord) -> None:
        """A job deleted before it ended (purge) frees its unique key."""
        where = self._unique.pop(job.id, None)
        if where is not None and (lock := self._locks.get(where)) and lock.job_id == job.id:
            del self._locks[where]

    def _delete(self, job: JobRecord) -> None:
        self._tally(job.queue, job.state, -1)
        self._active.discard(job.id)
        del self._jobs[job.id]
        self._tickets.pop(job.id, None)  # its heap entries are now dead

    def _held(self, lease: Lease) -> JobRecord | None:
        """The job if ``lease`` still holds it: the fencing check."""
        job = self._jobs.get(lease.job_id)
        if job is None or job.state != ACTIVE or job.lease_token != lease.token:
            return None
        return job

    def _live(self, ticket: int, job_id: str, state: str) -> JobRecord | None:
        """The job a heap entry stands for, or None if the entry is stale."""
        if self._tickets.get(job_id) != ticket:
            return None
        job = self._jobs[job_id]
        return job if job.state == state else None

    def _delayed_top(self, queue: str) -> DelayedEntry | None:
        """The live delayed entry due first in ``queue``, dropping dead ones."""
        heap = self._delayed.get(queue)
        while heap:
            if self._live(heap[0][1], heap[0][2], DELAYED) is not None:
                return heap[0]
            heapq.heappop(heap)
        return None

    def _promote_due(self, now: float) -> None:
        for queue in list(self._delayed):
            while (entry := self._delayed_top(queue)) is not None and entry[0] <= now:
                heapq.heappop(self._delayed[queue])
                self._make_ready(self._jobs[entry[2]])

    def _count_due(self, queue: str, now: float) -> int:
        """Live delayed jobs of ``queue`` already due, without moving them.

        Walks only the heap's subtree of entries <= now (a heap's children are
        never earlier than their parent), so it costs the number of due entries.
        """
        heap = self._delayed.get(queue, [])
        due, stack = 0, [0]
        while stack:
            i = stack.pop()
            if i < len(heap) and heap[i][0] <= now:
                due += self._live(heap[i][1], heap[i][2], DELAYED) is not None
                stack += (2 * i + 1, 2 * i + 2)
        return due

    @staticmethod
    def _append_error(job: JobRecord, error: AttemptError, now: float) -> None:
        errors = orjson.loads(job.errors)
        errors.append({"attempt": job.attempts, **dataclasses.asdict(error), "at": now})
        job.errors = orjson.dumps(errors).decode()

    # -- producing -------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        with self._lock:
            now = self.clock.now()
            results: list[EnqueueResult] = []
            for new in jobs:
                if new.unique_key is not None and (holder := self._holder(new, now)):
                    results.append(EnqueueResult(holder, created=False))
                    continue
                existing = self._jobs.get(new.id)
                if existing is not None and existing.state not in ENDED_STATES:
                    results.append(EnqueueResult(_snapshot(existing), created=False))
                    continue
                if existing is not None:
                    self._delete(existing)  # an ended job's id may be reused
                self._seq += 1
                # Every NewJob field but generated_id (id, task, queue, payload,
                # priority, run_at, options, rate_key) is a JobRecord field of
                # the same name and meaning.
                job = JobRecord(
                    id=new.id, seq=self._seq, task=new.task, queue=new.queue, state=WAITING,
                    priority=new.priority, payload=new.payload, options=new.options,
                    attempts=0, stalls=0, created_at=now, run_at=new.run_at,
                    rate_key=new.rate_key,
                )  # fmt: skip
                self._jobs[job.id] = job
                self._tally(job.queue, WAITING, +1)  # _move below subtracts it again
                if new.run_at is not None and new.run_at > now:
                    self._make_delayed(job, new.run_at)
                else:
                    self._make_ready(job)
                if new.unique_key is not None:
                    self._take(new, now)
                results.append(EnqueueResult(_snapshot(job), created=True))
            return results

    def fire(self, ticks: Sequence[Tick]) -> list[bool]:
        with self._lock:
            fired: list[bool] = []
            for tick in ticks:
                key = (tick.job.queue, tick.schedule)
                last = self._last_ticks.get(key)
                if last is not None and last >= tick.at:
                    fired.append(False)
                    continue
                self._last_ticks[key] = tick.at
                fired.append(self.enqueue([tick.job])[0].created)  # the lock is re-entrant
            return fired

    def last_ticks(self, schedules: Sequence[tuple[str, str]]) -> list[int | None]:
        with self._lock:
            return [self._last_ticks.get((queue, name)) for queue, name in schedules]

    # -- consuming -------------------------------------------------------

    def claim(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str
    ) -> list[JobRecord]:
        with self._lock:
            now = self.clock.now()
            self._promote_due(now)
            claimed: list[JobRecord] = []
            controls = self.controls
            if self._flow.controls is not controls:
                self._flow.new_controls(controls, self._ready)
            for queue in queues:
                heap = None if queue in self._paused else self._ready.get(queue)
                if heap is not None and controls.touch(queue):
                    self._flow.claim(self, queue, heap, limit, now, lease_seconds, worker, claimed)
                    continue
                while heap and len(claimed) < limit:
                    _, _, ticket, job_id = heapq.heappop(heap)
                    job = self._live(ticket, job_id, WAITING)
                    if job is None:
                        continue  # stale entry: the job was cancelled, replaced...
                    claimed.append(self._lease(job, now, lease_seconds, worker))
            return claimed

    def _lease(self, job: JobRecord, now: float, lease_seconds: float, worker: str) -> JobRecord:
        """Make a waiting job active for ``worker``; a snapshot of it."""
        self._move(job, ACTIVE)
        job.attempts += 1
        job.started_at = now
        job.lease_token = secrets.token_hex(8)
        job.lease_expires = now + lease_seconds
        job.worker = worker
        return _snapshot(job)

    def _running(self, queue: str, now: float) -> tuple[int, float | None]:
        """Jobs of ``queue`` active with an unexpired lease, and the earliest
        of those leases' ends (for its concurrency cap)."""
        count, first = 0, None
        for job_id in self._active:
            job = self._jobs[job_id]
            expires = job.lease_expires
            if job.queue == queue and expires is not None and expires > now:
                count += 1
                first = expires if first is None else min(first, expires)
        return count, first

    def extend(self, leases: Sequence[Lease], lease_seconds: float) -> list[str]:
        with self._lock:
            expires = self.clock.now() + lease_seconds
            lost: list[str] = []
            for lease in leases:
                job = self._held(lease)
                if job is None:
                    lost.append(lease.job_id)
                else:
                    job.lease_expires = expires
            return lost

    def complete(self, done: Sequence[tuple[Lease, str]]) -> list[bool]:
        with self._lock:
            now = self.clock.now()
            outcome: list[bool] = []
            for lease, result in done:
                job = self._held(lease)
                if job is not None:
                    job.result = result
                    self._end(job, COMPLETED, now)
                outcome.append(job is not None)
            return outcome

    def fail(self, lease: Lease, error: AttemptError, retry_at: float | None) -> bool:
        with self._lock:
            job = self._held(lease)
            if job is None:
                return False
            now = self.clock.now()
            self._append_error(job, error, now)
            if retry_at is None:
                self._end(job, DEAD, now)
                return True
            if retry_at > now:
                self._make_delayed(job, retry_at)
            else:
                job.run_at = retry_at
                self._make_ready(job)
            return True

    def release(self, leases: Sequence[Lease]) -> int:
        with self._lock:
            released = 0
            for lease in leases:
                job = self._held(lease)
                if job is not None:
                    job.attempts -= 1  # the run was interrupted, not spent
                    self._make_ready(job)
                    released += 1
            return released

    def recover(self, max_stalled: int) -> list[Recovered]:
        with self._lock:
            now = self.clock.now()
            # Every worker calls this every few seconds: the place to forget
            # the windows of keys not seen for a period.
            self._flow.windows.sweep(self.controls, now)
            expired = [
                job
                for job in map(self._jobs.__getitem__, self._active)
                if job.lease_expires is not None and job.lease_expires <= now
            ]
            recovered: list[Recovered] = []
            for job in sorted(expired, key=lambda j: j.seq):  # a stable, readable order
                job.stalls += 1
                if job.stalls > max_stalled:
                    # A job that keeps killing its worker must not loop forever.
                    stalled = AttemptError(
                        "Stalled",
                        f"lease expired {job.stalls} times, more than max_stalled={max_stalled}",
                    )
                    self._append_error(job, stalled, now)
                    self._end(job, DEAD, now)
                else:
                    job.attempts -= 1  # the worker died; the job did not fail
                    self._make_ready(job)
                recovered.append(Recovered(job.id, job.state))
            return recovered

    # -- controlling -----------------------------------------------------

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state not in (WAITING, DELAYED):
                return False
            self._end(job, CANCELLED, self.clock.now())
            return True

    def _select(
        self, job_ids: Sequence[str] | None, queue: str | None, states: Iterable[str]
    ) -> list[JobRecord]:
        """Jobs named by ``job_ids`` (or all jobs) of ``queue`` (if given) in ``states``."""
        if job_ids is None:
            candidates: Iterable[JobRecord] = self._jobs.values()
        else:
            candidates = (job for i in dict.fromkeys(job_ids) if (job := self._jobs.get(i)))
        return [j for j in candidates if j.state in states and queue in (None, j.queue)]

    def retry(self, job_ids: Sequence[str] | None = None, *, queue: str | None = None) -> int:
        with self._lock:
            # By id, a cancelled job may be brought back too; "all" means dead only.
            states = (DEAD,) if job_ids is None else (DEAD, CANCELLED)
            jobs = self._select(job_ids, queue, states)
            now = self.clock.now()
            for job in jobs:
                job.attempts = 0
                job.stalls = 0
                job.finished_at = None
                self._make_ready(job)  # same id, same seq: errors are kept
                where = self._unique.get(job.id) if self._unique else None
                lock = self._locks.get(where) if where is not None else None
                if lock and lock.job_id == job.id and lock.expires and lock.expires > now:
                    # Still held for it: it holds its key again until it ends.
                    lock.state = lock.finished_at = lock.expires = None
            return len(jobs)

    def promote(self, job_ids: Sequence[str] | None = None, *, queue: str | None = None) -> int:
        with self._lock:
            jobs = self._select(job_ids, queue, (DELAYED,))
            for job in jobs:
                self._make_ready(job)  # its delayed heap entry is now dead
            return len(jobs)

    def trim(
        self, queue: str, state: str, keep: int | None = None, older_than: float | None = None
    ) -> int:
        if state not in ENDED_STATES:
            raise ValueError(f"trim deletes ended jobs only, not {state!r} ones")
        with self._lock:
            ended = [j for j in self._jobs.values() if j.queue == queue and j.state == state]
            # Most recently finished first; seq breaks ties the same way.
            ended.sort(key=lambda j: (j.finished_at or 0.0, j.seq), reverse=True)
            # Each limit given selects jobs to delete; with neither, nothing goes.
            doomed = {j.id: j for j in ended[keep:]} if keep is not None else {}
            if older_than is not None:
                doomed.update((j.id, j) for j in ended if (j.finished_at or 0.0) < older_than)
            for job in doomed.values():
                self._delete(job)
            self._drop_expired(self.clock.now())
            return len(doomed)

    def pause(self, queue: str) -> bool:
        with self._lock:
            was = queue in self._paused
            self._paused.add(queue)
            return not was

    def resume(self, queue: str) -> bool:
        with self._cond:
            if queue not in self._paused:
                return False
            self._paused.discard(queue)
            self._generation[queue] = self._generation.get(queue, 0) + 1
            self._cond.notify_all()  # its waiting jobs are ready again
            return True

    def paused(self) -> set[str]:
        with self._lock:
            return set(self._paused)

    def purge(self, queue: str, states: Sequence[str]) -> int:
        chosen = purge_states(states)
        with self._lock:
            doomed = [j for j in self._jobs.values() if j.queue == queue and j.state in chosen]
            for job in doomed:
                if job.state not in ENDED_STATES:
                    self._unlock(job)  # it never ran: its unique key is free
                self._delete(job)  # its heap entries are now dead
            return len(doomed)

    # -- reading ---------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else _snapshot(job)

    def list(
        self,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> list[JobRecord]:
        with self._lock:
            page: list[JobRecord] = []
            for job in self._jobs.values():  # already in seq order
                if len(page) >= limit:
                    break
                if after is not None and job.seq <= after:
                    continue
                if queue in (None, job.queue) and state in (None, job.state):
                    page.append(_snapshot(job))
            return page

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {queue: dict(counts) for queue, counts in self._counts.items()}

    def pending(self, queues: Sequence[str]) -> int:
        with self._lock:
            now = self.clock.now()
            total = 0
            for queue in dict.fromkeys(queues):
                counts = self._counts.get(queue)
                if counts is None:
                    continue
                total += counts[ACTIVE]
                if queue not in self._paused:
                    total += counts[WAITING] + self._count_due(queue, now)
            return total

    def next_due(self, queues: Sequence[str]) -> float | None:
        with self._lock:
            now = self.clock.now()
            tops = []
            for queue in queues:
                if queue in self._paused:
                    continue
                if (entry := self._delayed_top(queue)) is not None:
                    tops.append(entry[0])
                counts = self._counts.get(queue)
                held_back = self.controls and counts and counts[WAITING]  # else nothing is
                if held_back and (held := self._flow.held_due(self, queue, now)) is not None:
                    tops.append(held)
            return min(tops, default=None)

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        # Blocking is real time (time.monotonic): nobody advances a FakeClock
        # while we sleep. The store clock only says how far off the next
        # delayed job is, so we wake for it when it comes due.
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            seen = [self._generation.get(q, 0) for q in queues]
            interrupts = self._interrupts
            self._waiting += 1
            try:
                while not self._closed and self._interrupts == interrupts:
                    if [self._generation.get(q, 0) for q in queues] != seen:
                        return
                    remaining = deadline - time.monotonic()
                    due = self.next_due(queues)  # the lock is re-entrant
                    if due is not None:
                        remaining = min(remaining, due - self.clock.now())
                    if remaining <= 0:
                        return
                    self._cond.wait(remaining)
            finally:
                self._waiting -= 1

    def waiting(self) -> int:
        return self._waiting

    def interrupt(self) -> None:
        with self._cond:
            self._interrupts += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()  # nobody should sleep on a closed store
