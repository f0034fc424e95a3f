"""Running: the claimed jobs that run now, and the slots they take.

``start_claimed`` is the one route by which claimed jobs start. An ``async
def`` job runs as an asyncio task on the loop (``execution.run_async_job``);
a plain function runs on a slot thread (``slots.SyncSlots``), which hands
outcomes back in batches. Either way its outcome goes to the acknowledger
the moment it ends.

Two guards live here because they are about what runs beside what:

- A job that stalled before (its worker died while it ran) is a *suspect*:
  it runs alone, so a job that kills its process (``os._exit``, a segfault
  in a C extension) stalls again on its own and takes no other job with it.
- Threads of sync jobs that passed their timeout cannot be killed in
  Python: beyond ``max_abandoned_threads`` of them the worker stops (exit
  status 3), so that a supervisor restarts it and the threads go with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from conveyor.app import Conveyor
from conveyor.brokers.base import JobRecord, Lease
from conveyor.worker.ack import Acknowledger
from conveyor.worker.control import EXIT_STUCK_THREADS, Control
from conveyor.worker.execution import (
    Outcome,
    Prepared,
    internal_error,
    prepare,
    run_async_job,
)
from conveyor.worker.slots import SyncJob, SyncSlots

log = logging.getLogger("conveyor.worker")

#: Jobs that typically run for less than this (seconds) are claimed ahead of
#: free slots, so the round trip to the store is paid once per batch.
SHORT_JOB = 0.05


class Runner:
    """The active jobs of one worker, at most ``concurrency`` of them."""

    def __init__(
        self,
        app: Conveyor,
        concurrency: int,
        max_abandoned_threads: int,
        acks: Acknowledger,
        control: Control,
    ) -> None:
        self.app = app
        self.concurrency = concurrency
        self.max_abandoned_threads = max_abandoned_threads
        self.slots = SyncSlots(
            app, self._sync_finished, size=concurrency, max_abandoned=max_abandoned_threads
        )
        self.processed = 0
        self.failed = 0
        self._acks = acks
        self._control = control
        self._active: dict[str, Lease] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}  # the async jobs' own
        self._sync: dict[str, SyncJob] = {}  # the plain functions' own
        # Jobs claimed ahead wait for a slot here (plain functions: in the
        # slot threads' queue): a slot that frees starts the next at once,
        # with no round trip to the store, and the store is asked for more
        # (and told the outcomes) once per batch. Only while jobs are short
        # (SHORT_JOB): a long job's round trip costs nothing beside it, and a
        # job claimed ahead of long ones would wait while another worker
        # sits idle.
        self._ready: deque[JobRecord] = deque()
        self._started: dict[str, float] = {}  # job id -> loop time it started
        self._typical: float | None = None  # moving average of run times, seconds
        self._alone: str | None = None  # the suspect running alone
        self._isolating = False  # suspects were given back: claim nothing until idle

    def __len__(self) -> int:
        """Jobs held here: running, or claimed and waiting for a slot."""
        return len(self._active) + len(self._ready)

    def running(self) -> int:
        """Jobs running now (not those handed to the slot threads' queue)."""
        return len(self._active) - self.slots.queued

    def waiting(self) -> int:
        """Jobs claimed ahead, not started: here, or in the slot threads' queue."""
        return len(self._ready) + self.slots.queued

    @property
    def prefetch(self) -> int:
        """How many jobs to claim ahead of free slots: twice the concurrency
        while jobs take under SHORT_JOB, else none."""
        typical = self._typical
        return 2 * self.concurrency if typical is not None and typical < SHORT_JOB else 0

    def free_slots(self) -> int:
        """How many jobs may be claimed now: free slots and room to claim
        ahead, but none while a suspect runs alone, nor while isolating
        until nothing runs."""
        if self._alone is not None or (self._isolating and len(self)):
            return 0
        return self.concurrency + self.prefetch - len(self)

    def refill_due(self, free: int) -> bool:
        """Whether to claim now: nothing waits for the next free slot, or the
        jobs claimed ahead have run down to half (then one round trip brings
        a batch, not a job)."""
        if free <= 0:
            return False
        waiting, half = self.waiting(), self.prefetch // 2
        return waiting == 0 or (waiting <= half and free >= half)

    def leases(self) -> list[Lease]:
        return [*self._active.values(), *(_lease(r) for r in self._ready)]

    def give_back_waiting(self) -> list[Lease]:
        """The jobs claimed ahead and not started, taken out to be released
        (shutdown): those waiting here and those no slot thread took yet."""
        leases = [_lease(record) for record in self._ready]
        self._ready.clear()
        for job in list(self._sync.values()):
            if self.slots.drop(job, unless_started=True):
                del self._sync[job.record.id]
                leases.append(self._active.pop(job.record.id))
        return leases

    def start_claimed(self, records: list[JobRecord]) -> None:
        """Start claimed jobs. A suspect starts only when nothing else runs
        here, and nothing starts beside it: an idle worker runs the first
        suspect it claimed alone and gives the rest of the batch back; a
        busy one starts the others, gives the suspects back (unstarted, no
        attempt spent) and claims nothing more until it is idle."""
        suspects = [record for record in records if record.stalls]
        if not suspects:
            self._isolating = False
            for record in records:
                self._admit(record)
            return
        if not len(self):
            alone = suspects[0]
            self._isolating = False
            self._alone = alone.id
            self._acks.give_back([_lease(r) for r in records if r is not alone])
            log.warning(
                "job %s (%s) stalled %d time(s) before: running it alone",
                alone.id,
                alone.task,
                alone.stalls,
            )
            self._start(alone)
            return
        self._isolating = True
        self._acks.give_back([_lease(r) for r in suspects])
        for record in records:
            if not record.stalls:
                self._admit(record)

    def _admit(self, record: JobRecord) -> None:
        """Start ``record`` if a slot is free, else keep it for the next one.
        While only plain functions run, one goes to the slot threads at once
        (their queue holds it): a thread that finishes a job takes the next
        from there, without the loop. Beside async jobs it waits here, so
        that never more than ``concurrency`` jobs run at once."""
        task = self.app.tasks.get(record.task)
        plain = task is not None and not task.is_async
        if (plain and not self._tasks) or (
            len(self._active) < self.concurrency and not self._ready
        ):
            self._start(record)
        else:
            self._ready.append(record)

    def _start(self, record: JobRecord) -> None:
        lease = _lease(record)
        self._active[record.id] = lease
        prepared = prepare(self.app, record)
        if isinstance(prepared, Outcome):  # it cannot run at all
            self._finished(record, lease, prepared, 0.0)
        elif prepared.task.is_async:
            self._started[record.id] = asyncio.get_running_loop().time()
            self._tasks[record.id] = asyncio.create_task(self._run(record, lease, prepared))
        else:
            job = self._sync[record.id] = SyncJob(record, lease, prepared)
            self.slots.run(job)

    async def _run(self, record: JobRecord, lease: Lease, prepared: Prepared) -> None:
        try:
            outcome = await run_async_job(self.app, record, prepared)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug of ours: the job still gets an outcome
            log.exception("internal error while running job %s", record.id)
            outcome = internal_error(record, exc, prepared.options)
        finally:
            self._tasks.pop(record.id, None)
        took = asyncio.get_running_loop().time() - self._started.pop(record.id, 0.0)
        self._finished(record, lease, outcome, took)

    def _sync_finished(self, finished: list[tuple[SyncJob, Outcome]]) -> None:
        """A batch of plain-function jobs ended (on the loop, one wake-up)."""
        for job, outcome in finished:
            self._sync.pop(job.record.id, None)
            self._finished(job.record, job.lease, outcome, job.took)

    def _finished(self, record: JobRecord, lease: Lease, outcome: Outcome, took: float) -> None:
        """Every job's end: its outcome to the acknowledger, its slot freed;
        ``took``: how long it ran, in seconds."""
        if self._active.pop(record.id, None) is None:
            return  # given back already (a forced shutdown)
        typical = self._typical
        self._typical = took if typical is None else typical + (took - typical) / 16
        self.slots.low_water = self.prefetch // 2  # the slot threads wake us to claim more
        if self._alone == record.id:
            self._alone = None
        if outcome.error is None:
            self._acks.completed(lease, outcome.result_json or "null")
            self.processed += 1
        else:
            self._acks.failed(record, lease, outcome)
            self.failed += 1
            if self.slots.abandoned > self.max_abandoned_threads:  # after a timeout
                self._too_many_stuck_threads()
        while (
            self._ready
            and len(self._active) < self.concurrency
            and self._alone is None
            and not self._control.stopping.is_set()
        ):
            self._start(self._ready.popleft())  # the freed slot takes the next at once
        self._control.wake.set()

    def _too_many_stuck_threads(self) -> None:
        if self._control.stopping.is_set():
            return
        log.error(
            "%d threads of sync jobs that passed their timeout are still running "
            "(the cap is %d, --max-abandoned-threads): claiming no more jobs and "
            "shutting down so that a restart frees them",
            self.slots.abandoned,
            self.max_abandoned_threads,
        )
        self._control.stop(EXIT_STUCK_THREADS)

    def cancel_all(self) -> None:
        """Stop caring about every active job (their leases are given back):
        async ones are cancelled; plain functions' outcomes are dropped."""
        for task in list(self._tasks.values()):
            task.cancel()
        for job in list(self._sync.values()):
            self.slots.drop(job)
        self._active.clear()
        self._ready.clear()
        self._started.clear()

    def close(self) -> None:
        """Let idle slot threads end (busy ones end when their job returns)."""
        self.slots.close()


def _lease(record: JobRecord) -> Lease:
    return Lease(record.id, record.lease_token or "")
