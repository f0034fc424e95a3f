"""Running: the claimed jobs that run now, and the slots they take.

``start_claimed`` is the one route by which claimed jobs start; each runs
as an asyncio task (``execution.run_job``: async jobs on the loop, plain
functions on the threads of ``threads``), and its outcome goes to the
acknowledger the moment it ends.

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
from conveyor.threads import ThreadRunner
from conveyor.worker.ack import Acknowledger
from conveyor.worker.control import EXIT_STUCK_THREADS, Control
from conveyor.worker.execution import internal_error, run_job

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
        self.threads = ThreadRunner("jobs", max_idle=concurrency)
        self.processed = 0
        self.failed = 0
        self._acks = acks
        self._control = control
        self._active: dict[str, tuple[Lease, asyncio.Task[None]]] = {}
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
        return [lease for lease, _ in self._active.values()]

    def tasks(self) -> set[asyncio.Task[None]]:
        return {task for _, task in self._active.values()}

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
        self._active[record.id] = (lease, asyncio.create_task(self._run(record, lease)))

    async def _run(self, record: JobRecord, lease: Lease) -> None:
        try:
            try:
                outcome = await run_job(self.app, self.threads, record)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug of ours: the job still gets an outcome
                log.exception("internal error while running job %s", record.id)
                outcome = internal_error(record, exc)
            if outcome.error is None:
                self._acks.completed(lease, outcome.result_json or "null")
                self.processed += 1
            else:
                self._acks.failed(record, lease, outcome)
                self.failed += 1
                if self.threads.abandoned > self.max_abandoned_threads:  # after a timeout
                    self._too_many_stuck_threads()
        finally:
            self._active.pop(record.id, None)
            if self._alone == record.id:
                self._alone = None
            self._control.wake.set()

    def _too_many_stuck_threads(self) -> None:
        if self._control.stopping.is_set():
            return
        log.error(
            "%d threads of sync jobs that passed their timeout are still running "
            "(the cap is %d, --max-abandoned-threads): claiming no more jobs and "
            "shutting down so that a restart frees them",
            self.threads.abandoned,
            self.max_abandoned_threads,
        )
        self._control.stop(EXIT_STUCK_THREADS)

    def cancel_all(self) -> None:
        for _, task in list(self._active.values()):
            task.cancel()

    def close(self) -> None:
        """Let idle job threads end (busy ones end when their call returns)."""
        self.threads.close()


def _lease(record: JobRecord) -> Lease:
    return Lease(record.id, record.lease_token or "")
