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
        self.slots = SyncSlots(app, self._sync_finished, max_idle=concurrency)
        self.processed = 0
        self.failed = 0
        self._acks = acks
        self._control = control
        self._active: dict[str, Lease] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}  # the async jobs' own
        self._sync: dict[str, SyncJob] = {}  # the plain functions' own
        self._alone: str | None = None  # the suspect running alone
        self._isolating = False  # suspects were given back: claim nothing until idle

    def __len__(self) -> int:
        return len(self._active)

    def free_slots(self) -> int:
        """How many jobs to claim now: the free slots, but none while a
        suspect runs alone, nor while isolating until nothing runs."""
        if self._alone is not None or (self._isolating and self._active):
            return 0
        return self.concurrency - len(self._active)

    def leases(self) -> list[Lease]:
        return list(self._active.values())

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
                self._start(record)
            return
        if not self._active:
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
                self._start(record)

    def _start(self, record: JobRecord) -> None:
        lease = _lease(record)
        self._active[record.id] = lease
        prepared = prepare(self.app, record)
        if isinstance(prepared, Outcome):  # it cannot run at all
            self._finished(record, lease, prepared)
        elif prepared.task.is_async:
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
            outcome = internal_error(record, exc)
        finally:
            self._tasks.pop(record.id, None)
        self._finished(record, lease, outcome)

    def _sync_finished(self, finished: list[tuple[SyncJob, Outcome]]) -> None:
        """A batch of plain-function jobs ended (on the loop, one wake-up)."""
        for job, outcome in finished:
            self._sync.pop(job.record.id, None)
            self._finished(job.record, job.lease, outcome)

    def _finished(self, record: JobRecord, lease: Lease, outcome: Outcome) -> None:
        """Every job's end: its outcome to the acknowledger, its slot freed."""
        if self._active.pop(record.id, None) is None:
            return  # given back already (a forced shutdown)
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

    def close(self) -> None:
        """Let idle slot threads end (busy ones end when their job returns)."""
        self.slots.close()


def _lease(record: JobRecord) -> Lease:
    return Lease(record.id, record.lease_token or "")
