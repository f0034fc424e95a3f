"""Slot threads: where plain-function (``def``) jobs run.

A plain function that calls a blocking client (requests, psycopg, redis-py,
an ORM) must run on a thread of its own while the event loop goes on. How
those threads and the loop hand jobs and outcomes to each other is what a
sync job costs beyond its own work, so it is kept to the least:

- ``size`` threads (the worker's concurrency) take jobs from one queue and
  run them one after another: a thread that finishes a job takes the next
  at once, without waiting for the loop. It builds the whole outcome there
  too (the result's JSON, or the failure decided: retry after the backoff,
  or dead), off the loop.
- Outcomes go back in batches: a thread appends to a list and wakes the
  loop only when the loop has something to do with them: a batch is in
  (``wake_after``), or the queue is running low (``low_water``: time to
  claim more). Otherwise the loop collects them on a timer every
  ``COLLECT_EVERY`` seconds while jobs run. No asyncio task, future or
  callback is made per job, and the loop (which must take the GIL from the
  job threads each time it wakes) wakes once per batch, not once per job.
- A job past its ``timeout`` fails at that moment (a timer on the loop,
  armed when the job starts, only for jobs that have one) and its slot is
  freed: its thread is asked to stop and, if it is stuck in C code,
  abandoned and counted (``abandoned``) until it returns, while a new thread
  takes its place.

Threads are daemons, so a hung job never keeps the process alive at exit.
"""

from __future__ import annotations

import asyncio
import ctypes
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from conveyor.app import Conveyor
from conveyor.brokers.base import JobRecord, Lease
from conveyor.errors import JobTimeout
from conveyor.worker.execution import (
    Outcome,
    Prepared,
    internal_error,
    run_sync_job,
    timed_out,
)


@dataclass(slots=True, eq=False)
class SyncJob:
    """One plain-function job handed to the slots."""

    record: JobRecord
    lease: Lease
    prepared: Prepared
    thread: int | None = None  # the ident of the thread running it
    started: float = 0.0  # time.monotonic() when it started
    took: float = 0.0  # seconds it ran
    over: bool = False  # its outcome is decided: run, timed out or dropped
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


Finished = list[tuple[SyncJob, Outcome]]

#: While jobs run, the loop collects finished ones at least this often (seconds).
COLLECT_EVERY = 0.01


class SyncSlots:
    """``size`` threads running plain-function jobs for one worker, in the
    order they were handed over; ``on_finished`` gets their outcomes, in
    batches, on the loop."""

    def __init__(
        self,
        app: Conveyor,
        on_finished: Callable[[Finished], None],
        size: int,
        max_abandoned: int,
    ) -> None:
        self.app = app
        self.size = size
        self.max_abandoned = max_abandoned  # beyond, no thread replaces a stuck one
        self.wake_after = max(1, size // 2)  # finished jobs that wake the loop at once
        self.low_water = 0  # wake it at once too when no more than this are queued
        self._on_finished = on_finished
        self._todo: queue.SimpleQueue[SyncJob | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._finished: Finished = []
        self._serving = 0  # threads taking jobs (the abandoned ones not counted)
        self._idle = 0  # of those, the ones waiting for a job
        self._queued = 0  # jobs handed over and not taken yet
        self._abandoned = 0
        self._count = 0  # threads ever started, for their names
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._woken = False  # a delivery is on its way to the loop
        self._collector: asyncio.TimerHandle | None = None

    @property
    def abandoned(self) -> int:
        """Threads still running a job that passed its timeout."""
        return self._abandoned

    @property
    def queued(self) -> int:
        """Jobs handed over that no thread has taken yet."""
        return self._queued

    def run(self, job: SyncJob) -> None:
        """Hand ``job`` over: it starts as soon as a thread is free."""
        loop = self._loop = self._loop or asyncio.get_running_loop()
        if self._collector is None:
            self._collector = loop.call_later(COLLECT_EVERY, self._collect)
        with self._lock:
            self._queued += 1
            start = (
                self._queued > self._idle
                and self._serving < self.size
                and self._abandoned <= self.max_abandoned
            )
            if start:
                self._serving += 1
                self._count += 1
        self._todo.put(job)
        if start:
            self._start_thread()

    def drop(self, job: SyncJob, unless_started: bool = False) -> bool:
        """Forget ``job``'s outcome (the worker gave it back on shutdown);
        with ``unless_started``, only if no thread took it yet. Whether it
        was dropped."""
        with self._lock:
            if job.over or (unless_started and job.started):
                return False
            job.over = True
        if job.timer is not None:
            job.timer.cancel()
        return True

    def close(self) -> None:
        """Let the threads end once idle (busy ones end when their job returns)."""
        if self._collector is not None:
            self._collector.cancel()
            self._collector = None
        with self._lock:
            self._closed = True
            threads = self._serving + self._abandoned
        for _ in range(threads):
            self._todo.put(None)

    def _start_thread(self) -> None:
        name = f"conveyor-job-{self._count}"
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    # -- on the slot threads ----------------------------------------------

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._todo.get()
            with self._lock:
                self._idle -= 1
                if job is None:
                    self._serving -= 1
                    return
                self._queued -= 1
            if not self._run(job):  # it was abandoned at its timeout, and is back
                with self._lock:
                    if self._closed or self._serving >= self.size:
                        return  # another thread took its place for good
                    self._serving += 1

    def _run(self, job: SyncJob) -> bool:
        """Run ``job``; False when its thread was abandoned meanwhile."""
        with self._lock:
            if job.over:  # timed out or dropped before it started
                return True
            job.thread = threading.get_ident()
            job.started = time.monotonic()
        if job.prepared.options.timeout is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._arm, job)
        try:
            outcome = run_sync_job(self.app, job.record, job.prepared)
        except BaseException as exc:
            # The timeout's interrupt landing after the job's own code, or a
            # bug of ours: either way the job gets an outcome and the thread
            # lives on.
            outcome = internal_error(job.record, exc, job.prepared.options)
        with self._lock:
            job.thread = None
            job.took = time.monotonic() - job.started
            if job.over:  # the loop gave up on it at its timeout: it is back now
                self._abandoned -= 1
                _interrupt(threading.get_ident(), None)  # one not delivered yet is dropped
                return False
            job.over = True
            self._finished.append((job, outcome))
            wake = not self._woken and (
                len(self._finished) >= self.wake_after or self._queued <= self.low_water
            )
            self._woken = self._woken or wake
        if wake and self._loop is not None:
            self._loop.call_soon_threadsafe(self._deliver)
        return True

    # -- on the loop ------------------------------------------------------

    def _deliver(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
            self._woken = False
        for job, _ in finished:
            if job.timer is not None:
                job.timer.cancel()
        if finished:
            self._on_finished(finished)

    def _collect(self) -> None:
        """The timer's round: deliver what finished; again while jobs remain."""
        self._deliver()
        with self._lock:
            busy = self._serving - self._idle + self._queued > 0 or self._abandoned
        self._collector = None
        if busy and self._loop is not None and not self._closed:
            self._collector = self._loop.call_later(COLLECT_EVERY, self._collect)

    def _arm(self, job: SyncJob) -> None:
        """Start ``job``'s timeout clock (it started on its thread just now)."""
        timeout = job.prepared.options.timeout
        if timeout is not None and not job.over and self._loop is not None:
            left = timeout - (time.monotonic() - job.started)
            job.timer = self._loop.call_later(max(left, 0.0), self._expire, job)

    def _expire(self, job: SyncJob) -> None:
        """``job`` passed its timeout: it fails now and its slot is freed. Its
        thread is asked to stop (Python code sees JobTimeout at once; a call
        blocked in C only when it returns) and counted as abandoned."""
        start = False
        with self._lock:  # held while interrupting: the thread then sees `over`
            if job.over or job.thread is None:
                return
            job.over = True
            job.took = time.monotonic() - job.started
            self._abandoned += 1
            self._serving -= 1  # its slot goes to a new thread meanwhile
            _interrupt(job.thread, JobTimeout)
            replace = self._abandoned <= self.max_abandoned and not self._closed
            if replace and self._queued > self._idle:
                self._serving += 1
                self._count += 1
                start = True
        if start:
            self._start_thread()
        detail = " (its thread could not be stopped at once)"
        self._on_finished([(job, timed_out(job.record, job.prepared.options, detail))])


def _interrupt(ident: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in thread ``ident`` when it next runs Python code;
    None takes back one not raised yet."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc_type) if exc_type else ctypes.c_void_p(0)
    )
