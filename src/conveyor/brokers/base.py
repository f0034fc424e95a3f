"""The broker contract: every store implements exactly these operations.

Each operation is atomic for each queue it touches: one SQL transaction on
SQLite; on Redis one Lua script per queue (its keys share one hash slot),
sent together in one round trip, so an operation over several queues is
atomic queue by queue, not as a whole. Nothing is ever half-moved.
Everything above the store (retry policy, backoff, timeouts, unknown tasks,
events) is written once, in the worker and the app, never in a store.

Why the operations are plain blocking calls and not ``async def``: each one is
a short transaction, and writing every store twice (sync for producers, async
for workers) is the duplication we refuse. Producers call them directly; the
asyncio worker awaits them through ``async_store()`` (``async_store.AsyncStore``:
a store thread, or a store's faster way) so its event loop never blocks. One
implementation per operation, one place to read.

Fencing: ``claim`` hands out a lease token. Every later call about that job
(``extend``, ``complete``, ``fail``, ``release``) presents ``Lease(job_id,
token)`` and is a no-op returning ``False`` when the token no longer matches,
so a worker that lost its lease can never finish a job someone else now runs.

Time comes from the broker's ``clock`` (``conveyor.clock``), never from the
store server, so tests move time forward instead of sleeping.

Job states: ``waiting`` (ready), ``delayed`` (``run_at`` in the future),
``active`` (leased to a worker), and the ended states ``completed``, ``dead``
and ``cancelled``.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from conveyor.clock import Clock

if TYPE_CHECKING:
    from conveyor.brokers.async_store import AsyncStore

WAITING = "waiting"
DELAYED = "delayed"
ACTIVE = "active"
COMPLETED = "completed"
DEAD = "dead"
CANCELLED = "cancelled"

STATES = (WAITING, DELAYED, ACTIVE, COMPLETED, DEAD, CANCELLED)
ENDED_STATES = frozenset({COMPLETED, DEAD, CANCELLED})
#: What ``purge`` may delete: every state but active (a running job is its worker's).
PURGEABLE_STATES = (WAITING, DELAYED, COMPLETED, DEAD, CANCELLED)
#: What purge deletes when no states are named: a queue's backlog.
BACKLOG = (WAITING, DELAYED)


def purge_states(states: Sequence[str]) -> tuple[str, ...]:
    """``states`` checked for ``purge``: each once, none of them active."""
    chosen = tuple(dict.fromkeys(states))
    wrong = [state for state in chosen if state not in PURGEABLE_STATES]
    if wrong or not chosen:
        raise ValueError(
            f"purge deletes jobs in {', '.join(PURGEABLE_STATES)} (never active ones), "
            f"not {', '.join(map(repr, wrong)) or 'no state at all'}"
        )
    return chosen


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` job starts (claims) in *any* window of ``period``
    seconds: a sliding window, never a fixed one that lets 2 x limit through
    across a window's edge."""

    limit: int
    period: float


@dataclass(frozen=True, slots=True)
class Controls:
    """The limits a store enforces when it hands out jobs, from the app's
    definitions (``app.queue(name, rate_limit=, concurrency=)`` and
    ``@app.task(rate_limit=, rate_key=)``). Every worker process of an app
    declares the same ones, so they hold across all of them; producers never
    need them. The app swaps in a new ``Controls`` as definitions are made
    (``Broker.controls``), so a claim reads one consistent set.

    - ``queue_rates``: job starts of the queue, summed over all workers.
    - ``concurrency``: jobs of the queue active at once (a job counts while
      its lease has not expired, so a dead worker's share comes back when its
      lease runs out).
    - ``task_rates``: job starts of the task *per bucket*: the job's
      ``rate_key`` (its ``rate_key`` argument's value), or one shared bucket
      for the task's jobs that carry none.
    """

    queue_rates: Mapping[str, RateLimit] = field(default_factory=dict)
    concurrency: Mapping[str, int] = field(default_factory=dict)
    task_rates: Mapping[str, RateLimit] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.queue_rates or self.concurrency or self.task_rates)

    def touch(self, queue: str) -> bool:
        """Whether these controls may hold back ``queue``'s claims: its own
        rate or cap, or any task rate (a job of any task may be in any queue)."""
        return bool(self.task_rates or queue in self.queue_rates or queue in self.concurrency)


#: No limits: what a store enforces until the app declares one.
NO_CONTROLS = Controls()


@dataclass(slots=True)
class NewJob:
    """A job about to be stored. ``payload`` and ``options`` are JSON text.

    ``run_at`` set (and later than now) makes the job ``delayed``; otherwise it
    is ``waiting``. ``options`` holds only the per-job overrides the caller
    gave (attempts, timeout, backoff...); the worker fills in the rest from the
    task and queue definitions, so a producer that enqueues by name does not
    need to know them.
    """

    id: str
    task: str
    queue: str
    payload: str
    priority: int = 0
    run_at: float | None = None
    options: str | None = None
    #: The id was generated (96 random bits), not chosen by the caller: no
    #: stored job can hold it, so a store may skip the look-up for dedup.
    generated_id: bool = False
    #: ``options(unique_for=...)``: the job's unique key (its id when the
    #: caller chose one, else a hash of its task and arguments) and how many
    #: seconds the key stays held after the job ends. Both set or both None.
    #: A key is unique within its queue (``enqueue`` tells the rules); a job
    #: without one costs no store any extra work.
    unique_key: str | None = None
    unique_for: float | None = None
    #: The value of the task's ``rate_key`` argument, as canonical JSON text
    #: (the producer computes it); None when the producer did not know the
    #: task or the task has none. Picks the job's bucket in ``task_rates``.
    rate_key: str | None = None


@dataclass(slots=True)
class JobRecord:
    """A job as the store holds it.

    ``seq`` is the store's insertion order (FIFO within equal priority, and the
    cursor for ``list``). ``attempts`` counts runs started (incremented by
    ``claim``; given back by ``release`` and by stall recovery). ``stalls``
    counts lease expiries. ``errors`` is JSON text: a list of
    ``{"attempt", "type", "message", "traceback", "at"}`` objects, one per
    failed run, oldest first. ``result`` is JSON text or ``None``.
    """

    id: str
    seq: int
    task: str
    queue: str
    state: str
    priority: int
    payload: str
    options: str | None
    attempts: int
    stalls: int
    created_at: float
    run_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    lease_token: str | None = None
    lease_expires: float | None = None
    worker: str | None = None
    result: str | None = None
    errors: str = "[]"
    rate_key: str | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """Proof that a worker holds a job: the token ``claim`` gave it."""

    job_id: str
    token: str


@dataclass(slots=True)
class AttemptError:
    """What went wrong in one run, kept with the job for the dead-letter list."""

    type: str
    message: str
    traceback: str = ""


@dataclass(slots=True)
class EnqueueResult:
    """``created`` is False when ``job_id`` named a job that has not ended,
    or a unique key was held: ``record`` is then that existing job,
    untouched (or, when retention already deleted it, ``held_record``)."""

    record: JobRecord
    created: bool


@dataclass(frozen=True, slots=True)
class Tick:
    """One tick of a schedule and the job it enqueues: ``fire``'s input.

    ``at`` is whole seconds since the epoch. ``job.queue`` is the schedule's
    queue and ``job.id`` is ``periodic:<schedule>:<at as ISO-8601 UTC>``.
    """

    schedule: str
    at: int
    job: NewJob


def held_record(
    new: NewJob, job_id: str, state: str, created_at: float, finished_at: float | None
) -> JobRecord:
    """What ``enqueue`` returns for ``new`` when its unique key is held by a
    job that retention (``trim``) or ``purge`` deleted already: the lock kept
    that job's id, the state it ended in, and when it was created and ended;
    the rest (task, arguments, priority) is ``new``'s, what the key was made
    from. ``seq`` is 0, which no stored job has; reading the job again
    (``get``) finds nothing, as for any deleted job."""
    return JobRecord(
        id=job_id, seq=0, task=new.task, queue=new.queue, state=state,
        priority=new.priority, payload=new.payload, options=new.options,
        attempts=0, stalls=0, created_at=created_at, finished_at=finished_at,
    )  # fmt: skip


@dataclass(slots=True)
class Recovered:
    """A job whose lease expired: ``state`` is ``waiting`` or ``dead``."""

    job_id: str
    state: str


class Broker(abc.ABC):
    """The store contract. One instance is safe to share between threads."""

    #: the URL the broker was opened with, used in error messages
    url: str
    clock: Clock
    #: False where a job id is unique only within its queue: on Redis Cluster
    #: queues live on different shards, and no single atomic step sees them all.
    ids_unique_across_queues: bool = True
    #: The limits ``claim`` enforces (``Controls``); the app replaces it whole.
    controls: Controls = NO_CONTROLS

    @property
    def location(self) -> str:
        """Where this store's jobs live, for people to read: the URL with any
        password masked, or a SQLite file's absolute path."""
        return self.url

    # -- producing -------------------------------------------------------

    @abc.abstractmethod
    def enqueue(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """Store jobs, in order, atomically per queue; return one result each.

        Dedup: a ``NewJob.id`` naming a stored job that has not ended returns
        that job (``created=False``) and changes nothing. A stored job with the
        same id that has ended is replaced by the new one (a new ``seq``).

        Unique keys (``NewJob.unique_key``; jobs in order, so a second job
        of one call with the key of an earlier one gets that one). A key is
        *held* in its queue while the job that took it has not ended, and
        for ``unique_for`` seconds after it ended (completed, dead or
        cancelled; the clock's ``finished_at`` + ``unique_for``). A new job
        whose key is held is not stored: its result is the holder
        (``created=False``), whatever state it is in now; when retention or
        ``purge`` deleted that ended job already, ``held_record``. The hold
        lives in a lock record of its own, so it outlasts the job's
        deletion; it is given its end in the same atomic step that ends the
        job, and expires by itself. Checked first: a key that is not held
        leaves ``NewJob.id`` to the dedup above, and a job it returns
        instead of storing the new one takes no key. A job stored takes its
        key (from any earlier holder whose hold ran out). Where a job goes:

        - ``purge`` of a waiting or delayed job frees its key at once (it
          never ran);
        - ``retry`` of a dead or cancelled job takes its key again while it
          is still held for it (its ``unique_for`` after the end has not run
          out); later the key may be another job's, and the job runs again
          without it.

        Keys are per queue on every store (a Cluster's queues live in
        different slots): the same key in two queues is two keys.
        """

    @abc.abstractmethod
    def fire(self, ticks: Sequence[Tick]) -> list[bool]:
        """Claim schedule ticks and enqueue their jobs: one bool per tick.

        For each tick, atomically: if the last tick recorded for the
        schedule (by its queue and name) is before ``tick.at``, or there is
        none, record ``tick.at`` as its last tick and enqueue ``tick.job``
        as ``enqueue`` does (True); otherwise change nothing (False). So each
        tick is claimed once, however many workers fire it at once, and a
        late worker can never fire a tick again, even after its job ended and
        was trimmed, replaced or purged: the record, not the job, is the
        guard. Also False (the tick still recorded) when a job with the id
        exists and has not ended. Atomic per queue; several ticks of one
        queue go in one transaction or script.
        """

    @abc.abstractmethod
    def last_ticks(self, schedules: Sequence[tuple[str, str]]) -> list[int | None]:
        """The last tick recorded by ``fire`` for each ``(queue, name)``, or None."""

    # -- consuming -------------------------------------------------------

    @abc.abstractmethod
    def claim(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str
    ) -> list[JobRecord]:
        """Lease up to ``limit`` ready jobs to ``worker``, atomically per queue.

        First moves every ``delayed`` job whose ``run_at`` has come to
        ``waiting``. Then takes jobs from ``queues`` in the order given (all
        of the first queue's ready jobs before any of the second's), within a
        queue highest ``priority`` first, then lowest ``seq``. Each claimed
        job becomes ``active`` with ``attempts + 1``, ``started_at`` = now, a
        fresh ``lease_token`` and ``lease_expires`` = now + ``lease_seconds``.
        Returns the claimed records in that order. Never hands one job to two
        claimers, whatever the number of threads or processes.

        ``self.controls`` holds the claim back, atomically with it: a queue in
        ``concurrency`` hands out at most its cap minus its jobs active with
        an unexpired lease; a queue in ``queue_rates`` at most ``limit`` jobs
        in any window of ``period`` seconds (every claim counts as a start,
        even one later released); a job whose task is in ``task_rates`` only
        while its bucket (task, ``rate_key`` or the shared bucket) has a slot
        in its window. A job held back stays ``waiting`` in its place, spends
        nothing, and never holds back jobs of other buckets or queues behind
        it. A queue with no controls pays nothing for them.
        """

    def complete_and_claim(
        self,
        done: Sequence[tuple[Lease, str]],
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker: str,
    ) -> tuple[list[bool], list[JobRecord]]:
        """``complete(done)`` then ``claim(...)``, in one round trip where the
        store can (a busy worker finishes a batch and takes the next). The
        two halves need not be one transaction. ``limit`` may be 0."""
        accepted = self.complete(done) if done else []
        claimed = self.claim(queues, limit, lease_seconds, worker) if limit > 0 else []
        return accepted, claimed

    @abc.abstractmethod
    def extend(self, leases: Sequence[Lease], lease_seconds: float) -> list[str]:
        """Push back the expiry of every held lease to now + ``lease_seconds``.

        Returns the ids of the jobs whose lease was *lost* (token no longer
        matches or job no longer active): their worker should stop caring.
        """

    @abc.abstractmethod
    def complete(self, done: Sequence[tuple[Lease, str]]) -> list[bool]:
        """Mark jobs ``completed`` with their result JSON, atomically per queue.

        One bool per item: False when the lease was lost (fencing) and nothing
        was changed. Sets ``finished_at``, clears the lease. Here, as in every
        move that ends a job (``fail`` to dead, ``recover`` to dead,
        ``cancel``), the hold of a unique key the job holds starts, in the
        same atomic step (``enqueue``).
        """

    @abc.abstractmethod
    def fail(self, lease: Lease, error: AttemptError, retry_at: float | None) -> bool:
        """Record a failed run and move the job on, fenced by ``lease``.

        Appends ``error`` (with ``attempt`` = the job's ``attempts`` and ``at`` =
        now) to the job's errors. ``retry_at`` given: the job becomes
        ``delayed`` until then (``waiting`` if it is not in the future).
        ``retry_at`` None: the job becomes ``dead`` with ``finished_at`` = now.
        Returns False (and changes nothing) when the lease was lost.
        """

    @abc.abstractmethod
    def release(self, leases: Sequence[Lease]) -> int:
        """Put held jobs back to ``waiting`` without spending an attempt.

        Used on shutdown: ``attempts`` goes back down by one, ``stalls`` is
        unchanged, the lease is cleared. Returns how many were released.
        """

    @abc.abstractmethod
    def recover(self, max_stalled: int) -> list[Recovered]:
        """Handle every ``active`` job whose lease has expired (its worker died).

        ``stalls`` goes up by one. A job with ``stalls`` now above
        ``max_stalled`` goes ``dead`` (an error of type ``Stalled`` is
        appended); any other goes back to ``waiting`` without spending an
        attempt (``attempts`` down by one). Returns what was done.
        """

    # -- controlling -----------------------------------------------------

    @abc.abstractmethod
    def cancel(self, job_id: str) -> bool:
        """Move a ``waiting`` or ``delayed`` job to ``cancelled``; False otherwise."""

    @abc.abstractmethod
    def retry(self, job_ids: Sequence[str] | None = None, *, queue: str | None = None) -> int:
        """Move ``dead`` (or ``cancelled``) jobs back to ``waiting`` with fresh
        attempts (``attempts`` and ``stalls`` set to 0; the error history is
        kept). ``job_ids`` None means every dead job (of ``queue``, if given).
        Returns how many moved. A unique key still held for a job moved is
        its again until it ends (``enqueue``).
        """

    @abc.abstractmethod
    def promote(self, job_ids: Sequence[str] | None = None, *, queue: str | None = None) -> int:
        """Make ``delayed`` jobs ``waiting`` now (all of ``queue`` when ids are None)."""

    @abc.abstractmethod
    def trim(
        self, queue: str, state: str, keep: int | None = None, older_than: float | None = None
    ) -> int:
        """Delete ended jobs of ``queue`` in ``state`` (completed, dead or
        cancelled): all but the ``keep`` most recently finished, and all whose
        ``finished_at`` is before the timestamp ``older_than``. Returns how
        many were deleted."""

    @abc.abstractmethod
    def pause(self, queue: str) -> bool:
        """Stop handing out ``queue``'s jobs: ``claim`` and every call that
        claims take none of them until ``resume``. Enqueueing goes on, and so
        do its jobs already active (they complete, fail and retry as ever).
        True if the queue was not paused already."""

    @abc.abstractmethod
    def resume(self, queue: str) -> bool:
        """Hand out ``queue``'s jobs again, waking idle waits. True if it was paused."""

    @abc.abstractmethod
    def paused(self) -> set[str]:
        """The queues paused now."""

    @abc.abstractmethod
    def purge(self, queue: str, states: Sequence[str]) -> int:
        """Delete ``queue``'s jobs in ``states`` (``PURGEABLE_STATES``: never
        active ones; ``purge_states`` checks them). Returns how many went.
        The unique keys held by deleted jobs that had not ended are free;
        those of ended jobs stay held as long as ``enqueue`` says."""

    # -- reading ---------------------------------------------------------

    @abc.abstractmethod
    def get(self, job_id: str) -> JobRecord | None:
        """The job with this id, or None."""

    @abc.abstractmethod
    def list(
        self,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> list[JobRecord]:
        """Jobs in ``seq`` order, filtered; ``after`` is the last ``seq`` seen
        (cursor pagination)."""

    @abc.abstractmethod
    def counts(self) -> dict[str, dict[str, int]]:
        """``{queue: {state: n}}`` for every queue that holds jobs; every state
        key is present."""

    @abc.abstractmethod
    def pending(self, queues: Sequence[str]) -> int:
        """Jobs of ``queues`` that are waiting, active, or delayed and already
        due: zero means a ``--burst`` worker may stop. Of a paused queue only
        the active ones count: it hands out nothing else."""

    @abc.abstractmethod
    def next_due(self, queues: Sequence[str]) -> float | None:
        """When a job of ``queues`` (not paused) that cannot be claimed now
        may become claimable, or None: the earliest ``run_at`` of a delayed
        job, or, for ready jobs held back by ``controls``, when their window
        next opens (a rate limit) or the earliest lease of the queue expires
        (a concurrency cap). An idle worker sleeps until then; it never spins.
        Work that ends sooner (a completion freeing a concurrency slot) wakes
        the idle waits as an enqueue does."""

    @abc.abstractmethod
    def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Block up to ``timeout`` seconds, returning early when something may
        have become ready (an enqueue, a release, a retry). Spurious wake-ups
        are allowed; callers claim and see."""

    def wait_and_claim(
        self,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker: str,
        timeout: float,
    ) -> builtins.list[JobRecord]:
        """An idle worker's wait: block like ``wait_for_work``, then claim up
        to ``limit`` jobs as ``claim`` does. One call, so a store can wake and
        claim on one connection and thread (Redis: BZPOPMIN, then the claim
        script). After ``interrupt()`` it may return without claiming; jobs
        it did claim belong to the caller, who must run or release them."""
        if limit <= 0:
            self.wait_for_work(queues, timeout)
            return []
        if claimed := self.claim(queues, limit, lease_seconds, worker):
            return claimed
        self.wait_for_work(queues, timeout)
        return self.claim(queues, limit, lease_seconds, worker)

    @abc.abstractmethod
    def waiting(self) -> int:
        """How many idle waits of this broker (``wait_for_work``,
        ``wait_and_claim``, and those of its ``async_store()``) are in the
        store right now, blocked until work may be ready. Tests wait for it
        instead of sleeping, so a wake-up test cannot pass without a waiter."""

    @abc.abstractmethod
    def interrupt(self) -> None:
        """Make every ``wait_for_work`` call of this process return now (a
        worker stopping must not leave a thread blocked in the store)."""

    def async_store(self) -> AsyncStore:
        """This store's operations as coroutines: the worker's one door to the
        store (``async_store.py``). A store may override it to carry some
        calls faster, the way it alone can (Redis: replies read by the event
        loop); the contract of each call stays the one written here."""
        from conveyor.brokers.async_store import AsyncStore

        return AsyncStore(self)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. The broker must not be used afterwards."""
