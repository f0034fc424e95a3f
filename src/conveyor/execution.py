"""Running one claimed job: call the task, then complete, retry or bury it.

The decisions live here, once, for every store: unknown task names and
corrupt payloads go dead at once; an error or a timeout spends an attempt and
is retried after the backoff while attempts remain, else the job goes dead
with every attempt's error kept.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conveyor.brokers.base import AttemptError, JobRecord, Lease
from conveyor.errors import JobTimeout, PayloadError
from conveyor.serialization import decode_payload, encode_result

if TYPE_CHECKING:
    from conveyor.worker import Worker

log = logging.getLogger("conveyor.worker")


@dataclass(slots=True)
class Outcome:
    """``result_json`` set: the job succeeded and awaits its completion write."""

    result_json: str | None = None


FAILED = Outcome()


async def run_job(worker: Worker, record: JobRecord, lease: Lease) -> Outcome:
    app = worker.app
    task = app.tasks.get(record.task)
    if task is None:
        known = ", ".join(sorted(app.tasks)) or "none"
        message = f"no task named {record.task!r} is registered in this worker (known: {known})"
        await _bury(worker, record, lease, AttemptError("UnknownTask", message))
        return FAILED
    try:
        args, kwargs = decode_payload(record.payload)
        options = app.run_options(record.task, record.queue, record.options)
    except Exception as exc:
        await _bury(worker, record, lease, AttemptError("CorruptJob", str(exc)))
        return FAILED

    timeout = options.timeout
    try:
        if task.is_async:
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
        return Outcome(encode_result(value))
    except asyncio.CancelledError:
        raise
    except PayloadError as exc:
        error = AttemptError("ResultNotSerializable", str(exc), traceback.format_exc())
    except Exception as exc:
        error = AttemptError(type(exc).__name__, str(exc), traceback.format_exc())

    attempt = record.attempts
    if attempt < options.attempts:
        wait = options.backoff.seconds(attempt)
        retried = await worker.call(worker.broker.fail, lease, error, app.clock.now() + wait)
        if retried:
            log.warning(
                "job %s (%s) failed on attempt %d of %d: %s: %s; retrying in %.3gs",
                record.id,
                record.task,
                attempt,
                options.attempts,
                error.type,
                error.message,
                wait,
            )
    else:
        await _bury(worker, record, lease, error)
    return FAILED


def _call(fn, args, kwargs):  # type: ignore[no-untyped-def]
    return fn(*args, **kwargs)


async def _bury(worker: Worker, record: JobRecord, lease: Lease, error: AttemptError) -> None:
    if await worker.call(worker.broker.fail, lease, error, None):
        log.error(
            "job %s (%s) is dead after %d attempt(s): %s: %s",
            record.id,
            record.task,
            record.attempts,
            error.type,
            error.message,
        )
