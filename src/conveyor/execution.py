"""Running one claimed job and deciding what happens to it.

The decisions live here, once, for every store: unknown task names and
corrupt payloads go dead at once; an error or a timeout spends an attempt and
is retried after the backoff while attempts remain, else the job goes dead
with every attempt's error kept. Nothing here writes to the store: the
worker writes outcomes in batches (``worker.Worker._acknowledge``).
"""

from __future__ import annotations

import asyncio
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conveyor.brokers.base import AttemptError, JobRecord
from conveyor.errors import JobTimeout, PayloadError
from conveyor.serialization import decode_payload, encode_result

if TYPE_CHECKING:
    from conveyor.worker import Worker


@dataclass(slots=True)
class Outcome:
    """Success (``result_json``), a retry in ``retry_in`` seconds, or dead
    (``error`` with ``retry_in`` None)."""

    result_json: str | None = None
    error: AttemptError | None = None
    retry_in: float | None = None


def _dead(kind: str, message: str) -> Outcome:
    return Outcome(error=AttemptError(kind, message))


async def run_job(worker: Worker, record: JobRecord) -> Outcome:
    app = worker.app
    task = app.tasks.get(record.task)
    if task is None:
        known = ", ".join(sorted(app.tasks)) or "none"
        return _dead(
            "UnknownTask",
            f"no task named {record.task!r} is registered in this worker (known: {known})",
        )
    try:
        args, kwargs = decode_payload(record.payload)
        options = app.run_options(record.task, record.queue, record.options)
    except Exception as exc:
        return _dead("CorruptJob", str(exc))

    timeout = options.timeout
    try:
        if task.is_async and timeout is None:  # the common case: no timer to arm
            value = await task.fn(*args, **kwargs)
        elif task.is_async:
            scope = asyncio.timeout(timeout)
            try:
                async with scope:
                    value = await task.fn(*args, **kwargs)
            except TimeoutError:
                if scope.expired():  # our deadline, not a TimeoutError of the task's own
                    raise JobTimeout(f"timed out after {timeout:g} s") from None
                raise
        else:
            future, thread = worker._jobs.submit(_call, task.fn, args, kwargs)
            if timeout is None:
                return Outcome(result_json=encode_result(await future))
            try:
                value = await asyncio.wait_for(asyncio.shield(future), timeout)
            except TimeoutError:
                if future.done():
                    raise
                # The slot is freed now; the thread is asked to stop and, if it
                # is stuck in C code, simply abandoned (it is a daemon thread).
                thread.interrupt(future, JobTimeout)
                raise JobTimeout(
                    f"timed out after {timeout:g} s (its thread could not be stopped at once)"
                ) from None
        return Outcome(result_json=encode_result(value))
    except asyncio.CancelledError:
        raise
    except PayloadError as exc:
        error = AttemptError("ResultNotSerializable", str(exc), traceback.format_exc())
    except Exception as exc:
        error = AttemptError(type(exc).__name__, str(exc), traceback.format_exc())

    if record.attempts < options.attempts:
        return Outcome(error=error, retry_in=options.backoff.seconds(record.attempts))
    return Outcome(error=error)


def _call(fn, args, kwargs):  # type: ignore[no-untyped-def]
    return fn(*args, **kwargs)
