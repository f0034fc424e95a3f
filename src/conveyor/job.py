"""``Job``: what a producer holds after enqueueing."""

from __future__ import annotations

import asyncio
import binascii
import os
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from conveyor.brokers.base import CANCELLED, COMPLETED, DEAD, JobRecord
from conveyor.errors import ConfigurationError, JobCancelled, JobFailed
from conveyor.serialization import decode_payload, loads

if TYPE_CHECKING:
    from conveyor.app import Conveyor


_LETTERS_AND_DIGITS = bytes.maketrans(b"+/", b"01")  # base64's two symbols that are neither


def new_job_id() -> str:
    """A fresh job id: 96 random bits in base64, 16 letters and digits.

    Short, because the id is part of every key and index entry of the job
    (a uuid4 takes 32 characters, these bits in hex 24); letters and digits
    only, so it is safe in keys, URLs and command lines (``+`` and ``/``
    become ``0`` and ``1``: 95 bits of entropy are left). It is safe to
    generate without a look-up: a clash is only possible between jobs
    stored at the same time, and even with a billion of them its chance is
    about 1 in 10^10.

    >>> len(new_job_id())
    16
    """
    return (
        binascii.b2a_base64(os.urandom(12), newline=False).translate(_LETTERS_AND_DIGITS).decode()
    )


def _refuse_in_event_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop in this thread: blocking is fine
    raise ConfigurationError(
        "job.result() would block this thread's running event loop until the job ends "
        "(an async task doing so stops its own worker): use `await job.result_async()`"
    )


R = TypeVar("R")


class Job(Generic[R]):
    """A handle on a stored job; ``R`` is what its task returns. Attributes reflect the last read of the store;
    ``refresh()`` reads again.

    >>> job = add.enqueue(2, 3)          # doctest: +SKIP
    >>> job.result(timeout=5)            # doctest: +SKIP
    5
    """

    def __init__(self, app: Conveyor, record: JobRecord) -> None:
        self.app = app
        self.record = record

    # -- what the store says --------------------------------------------

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def task(self) -> str:
        return self.record.task

    @property
    def queue(self) -> str:
        return self.record.queue

    @property
    def state(self) -> str:
        return self.record.state

    @property
    def priority(self) -> int:
        return self.record.priority

    @property
    def attempts(self) -> int:
        """Runs started so far (a run given back by a stall or shutdown does not count)."""
        return self.record.attempts

    @property
    def args(self) -> list[Any]:
        return decode_payload(self.record.payload)[0]

    @property
    def kwargs(self) -> dict[str, Any]:
        return decode_payload(self.record.payload)[1]

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Every failed run, oldest first: attempt, type, message, traceback, at."""
        return loads(self.record.errors) or []

    @property
    def error(self) -> str | None:
        """The last error as ``"Type: message"``, or None."""
        errors = self.errors
        if not errors:
            return None
        last = errors[-1]
        return f"{last['type']}: {last['message']}" if last.get("type") else last["message"]

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.task} {self.state}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- acting ---------------------------------------------------------

    def refresh(self) -> Job[R]:
        """Read the job again from the store. Raises LookupError if it was removed."""
        record = self.app.broker.get(self.id)
        if record is None:
            raise LookupError(f"job {self.id} is no longer stored (removed by retention?)")
        self.record = record
        return self

    def result(self, timeout: float | None = None) -> R:
        """Wait for the job to end and return its result.

        Raises ``JobFailed`` if it went dead, ``JobCancelled`` if it was
        cancelled, ``TimeoutError`` if it has not ended within ``timeout``
        seconds (None waits for ever). In async code use ``await
        job.result_async()``: waiting here would freeze the event loop (an
        async task waiting so for a child job would stop its own worker), so
        it is refused with a ``ConfigurationError`` unless the job has
        already ended.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.002
        while True:
            ended, value = self._ended()
            if ended:
                return value
            if deadline is None or time.monotonic() < deadline:
                _refuse_in_event_loop()
            else:
                raise TimeoutError(f"job {self.id} is still {self.state} after {timeout} s")
            time.sleep(
                pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic()))
            )
            pause = min(pause * 1.5, 0.1)

    async def result_async(self, timeout: float | None = None) -> R:
        """``result`` for async code: the store is read on a thread and the
        waits are ``asyncio.sleep``, so the event loop goes on meanwhile.

        >>> value = await job.result_async(timeout=5)  # doctest: +SKIP
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        pause = 0.002
        while True:
            ended, value = await asyncio.to_thread(self._ended)
            if ended:
                return value
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(f"job {self.id} is still {self.state} after {timeout} s")
            await asyncio.sleep(
                pause if deadline is None else min(pause, max(0.0, deadline - loop.time()))
            )
            pause = min(pause * 1.5, 0.1)

    async def refresh_async(self) -> Job[R]:
        """``refresh`` without blocking the event loop."""
        return await asyncio.to_thread(self.refresh)

    def _ended(self) -> tuple[bool, R]:
        """Read the job again: (True, its result) once completed; raises
        ``JobFailed`` or ``JobCancelled`` for the other ended states."""
        self.refresh()
        state = self.record.state
        if state == COMPLETED:
            value: R = loads(self.record.result)
            return True, value
        if state == DEAD:
            last = (self.errors or [{"type": "Error", "message": "unknown error"}])[-1]
            raise JobFailed(self.id, last["type"], last["message"], last.get("traceback", ""))
        if state == CANCELLED:
            raise JobCancelled(self.id)
        return False, None  # type: ignore[return-value]  # never read: not ended

    def cancel(self) -> bool:
        """Cancel the job if it is waiting or delayed; False if it already started or ended."""
        cancelled = self.app.broker.cancel(self.id)
        self.refresh()
        return cancelled

    def retry(self) -> bool:
        """Send a dead or cancelled job back to waiting with fresh attempts."""
        moved = self.app.broker.retry([self.id]) == 1
        self.refresh()
        return moved

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary, the shape of ``conveyor jobs --json``."""
        r = self.record
        return {
            "id": r.id,
            "task": r.task,
            "queue": r.queue,
            "state": r.state,
            "priority": r.priority,
            "attempts": r.attempts,
            "error": self.error,
            "result": loads(r.result),
            "created_at": r.created_at,
            "run_at": r.run_at,
            "started_at": r.started_at,
            "finished_at": r.finished_at,
        }
