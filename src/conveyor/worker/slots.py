"""Slot threads: where plain-function (``def``) jobs run.

A plain function that calls a blocking client (requests, psycopg, redis-py,
an ORM) must run on a thread of its own while the event loop goes on. How
those threads and the loop hand jobs and outcomes to each other is what a
sync job costs beyond its own work, so it is kept to the least:

- Each thread runs job after job: it takes the next from one shared queue,
  runs it, and builds its whole outcome there (the result's JSON, or the
  failure decided: retry after the backoff, or dead), off the loop.
- Outcomes go back in batches: the thread appends to a list and wakes the
  loop only when the list was empty, so outcomes that end close together
  cost the loop one wake-up, not one each. No asyncio task, future or
  callback is made per job.
- A job past its ``timeout`` fails at that moment (a timer on the loop, only
  for jobs that have one) and its slot is freed; its thread is asked to stop
  and, if it is stuck in C code, abandoned and counted (``abandoned``) until
  it returns; a new thread takes its place.

Threads are daemons, so a hung job never keeps the process alive at exit.
"""

from __future__ import annotations

import asyncio
import ctypes
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from conveyor.app import Conveyor
from conveyor.brokers.base import JobRecord, Lease
from conveyor.errors import JobTimeout
from conveyor.worker.execution import Outcome, Prepared, run_sync_job, timed_out


@dataclass(slots=True, eq=False)
class SyncJob:
    """One plain-function job handed to the slots."""

    record: JobRecord
    lease: Lease
    prepared: Prepared
    thread: int | None = None  # the ident of the thread running it
    over: bool = False  # its outcome is decided: run, timed out or dropped
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


Finished = list[tuple[SyncJob, Outcome]]


class SyncSlots:
    """Threads running plain-function jobs for one worker; ``on_finished``
    gets their outcomes, in batches, on the loop."""

    def __init__(
        self, app: Conveyor, on_finished: Callable[[Finished], None], max_idle: int
    ) -> None:
        self.app = app
        self.max_idle = max_idle
        self._on_finished = on_finished
        self._todo: queue.SimpleQueue[SyncJob | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._finished: Finished = []
        self._free = 0  # threads waiting for a job, or about to
        self._abandoned = 0
        self._count = 0  # threads ever started, for their names
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def abandoned(self) -> int:
        """Threads still running a job that passed its timeout."""
        return self._abandoned

    def run(self, job: SyncJob) -> None:
        """Start ``job`` now, on a free thread or a new one."""
        loop = self._loop = self._loop or asyncio.get_running_loop()
        timeout = job.prepared.options.timeout
        if timeout is not None:
            job.timer = loop.call_later(timeout, self._expire, job)
        with self._lock:
            if self._free:
                self._free -= 1
                start = False
            else:
                self._count += 1
                start = True
        self._todo.put(job)
        if start:
            name = f"conveyor-job-{self._count}"
            threading.Thread(target=self._serve, name=name, daemon=True).start()

    def drop(self, job: SyncJob) -> None:
        """Forget ``job``'s outcome (the worker gave it back on shutdown)."""
        with self._lock:
            job.over = True
        if job.timer is not None:
            job.timer.cancel()

    def close(self) -> None:
        """Let the threads end once idle (busy ones end when their job returns)."""
        with self._lock:
            self._closed = True
            waiting = self._free
        for _ in range(waiting):
            self._todo.put(None)

    # -- on the slot threads ----------------------------------------------

    def _serve(self) -> None:
        while True:
            job = self._todo.get()
            if job is None:
                return
            self._run(job)
            with self._lock:
                self._free += 1
                if self._closed or self._free > self.max_idle:  # surplus: end
                    self._free -= 1
                    return

    def _run(self, job: SyncJob) -> None:
        with self._lock:
            if job.over:  # timed out before it even started
                return
            job.thread = threading.get_ident()
        try:
            outcome: Outcome | None = run_sync_job(self.app, job.record, job.prepared)
        except BaseException:  # the timeout's interrupt, landing after the job's own code
            outcome = None
        with self._lock:
            job.thread = None
            if job.over:  # the loop gave up on it at its timeout: it is back now
                self._abandoned -= 1
                _interrupt(threading.get_ident(), None)  # one not delivered yet is dropped
                return
            assert outcome is not None
            job.over = True
            self._finished.append((job, outcome))
            first = len(self._finished) == 1
        if first and self._loop is not None:
            self._loop.call_soon_threadsafe(self._deliver)

    # -- on the loop ------------------------------------------------------

    def _deliver(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
        for job, _ in finished:
            if job.timer is not None:
                job.timer.cancel()
        self._on_finished(finished)

    def _expire(self, job: SyncJob) -> None:
        """``job`` passed its timeout: it fails now and its slot is freed. Its
        thread is asked to stop (Python code sees JobTimeout at once; a call
        blocked in C only when it returns) and counted as abandoned."""
        with self._lock:  # held while interrupting: the thread then sees `over`
            if job.over:
                return
            job.over = True
            stuck = job.thread is not None
            if job.thread is not None:
                self._abandoned += 1  # its slot goes to a new thread meanwhile
                _interrupt(job.thread, JobTimeout)
        detail = " (its thread could not be stopped at once)" if stuck else ""
        self._on_finished([(job, timed_out(job.record, job.prepared.options, detail))])


def _interrupt(ident: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in thread ``ident`` when it next runs Python code;
    None takes back one not raised yet."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc_type) if exc_type else ctypes.c_void_p(0)
    )
