"""Running one claimed job and deciding what happens to it.

The decisions live here, once, for every store: unknown task names and
corrupt payloads go dead at once; anything a run raises (an ``Exception``,
``SystemExit``, ``KeyboardInterrupt``, any ``BaseException``) or a timeout
spends an attempt and is retried after the backoff while attempts remain,
else the job goes dead with every attempt's error kept. Recording an error
never fails: a message that cannot be printed, a traceback that cannot be
formatted or a backoff that raises still leave the job with an outcome.
Nothing here writes to the store: the worker writes outcomes in batches.
"""

from __future__ import annotations

import asyncio
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.brokers.base import AttemptError, JobRecord
from conveyor.errors import JobTimeout, PayloadError
from conveyor.options import RunOptions, resolve
from conveyor.serialization import ResultTooLarge, decode_payload, encode_result

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task import Task

# What one failed run may keep: a store holds every attempt's error, so a
# task that raises a 50 MB message must not grow its job by 50 MB a run.
MAX_MESSAGE = 4_000  # characters
MAX_TRACEBACK = 32_000  # characters, the end kept (where the error is)


@dataclass(slots=True)
class Outcome:
    """Success (``result_json``), a retry in ``retry_in`` seconds, or dead
    (``error`` with ``retry_in`` None)."""

    result_json: str | None = None
    error: AttemptError | None = None
    retry_in: float | None = None


def _dead(kind: str, message: str) -> Outcome:
    return Outcome(error=AttemptError(kind, message))


def _storable(text: str, limit: int, keep_end: bool = False) -> str:
    """``text`` as a store can hold it: valid UTF-8 (an unpaired surrogate is
    escaped) and at most about ``limit`` characters."""
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= limit:
        return text
    cut = f"[... {len(text) - limit:,} characters cut ...]"
    return cut + text[-limit:] if keep_end else text[:limit] + cut


def describe(exc: BaseException, kind: str | None = None) -> AttemptError:
    """A failed run's error as it is stored. Never raises, whatever the
    exception does: ``str()`` that raises gives ``<unprintable ValueError>``."""
    name = type(exc).__name__
    try:
        message = str(exc)
    except BaseException:
        message = f"<unprintable {name}>"
    try:
        trace = "".join(traceback.format_exception(exc))
    except BaseException:
        trace = f"{name}: <the traceback could not be formatted>"
    return AttemptError(
        kind or name,
        _storable(message, MAX_MESSAGE),
        _storable(trace, MAX_TRACEBACK, keep_end=True),
    )


def decide(record: JobRecord, options: RunOptions, error: AttemptError) -> Outcome:
    """A failed run: retried after the backoff while attempts remain, else dead.

    A backoff that raises, or returns something other than a number of
    seconds, cannot say when to run again: the job goes dead with its own
    error, and the message says why it was not retried."""
    if record.attempts >= options.attempts:
        return Outcome(error=error)
    try:
        return Outcome(error=error, retry_in=options.backoff.seconds(record.attempts))
    except BaseException as exc:
        broken = describe(exc)
        why = f" [not retried: the backoff failed: {broken.type}: {broken.message}]"
        note = f"\nThe backoff failed, so the job was not retried:\n{broken.traceback}"
        return Outcome(
            error=AttemptError(
                error.type,
                _storable(error.message + why, MAX_MESSAGE),
                _storable(error.traceback + note, MAX_TRACEBACK, keep_end=True),
            )
        )


def internal_error(
    record: JobRecord, exc: BaseException, options: RunOptions | None = None
) -> Outcome:
    """The outcome of a run whose handling failed in conveyor itself (a bug of
    ours): one attempt spent, the traceback kept, retried by the job's options
    (the default policy when they are not known)."""
    return decide(record, options or resolve(), describe(exc, "InternalError"))


@dataclass(slots=True)
class Prepared:
    """A claimed job made ready to call: its task, arguments and options."""

    task: Task[Any, Any]
    args: list[Any]
    kwargs: dict[str, Any]
    options: RunOptions


def prepare(app: Conveyor, record: JobRecord) -> Prepared | Outcome:
    """What a run needs, or the outcome of a job that cannot run at all: an
    unknown task or a corrupt payload goes dead at once, without retries."""
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
        return Outcome(error=describe(exc, "CorruptJob"))
    return Prepared(task, args, kwargs, options)


def outcome_of(
    app: Conveyor, record: JobRecord, options: RunOptions, ok: bool, value: Any
) -> Outcome:
    """A finished call's outcome: its result as stored, or its failure decided."""
    if not ok:
        return decide(record, options, describe(value))
    try:
        return Outcome(result_json=encode_result(value, app.max_result))
    except ResultTooLarge as exc:
        error = describe(exc, "ResultTooLarge")
    except PayloadError as exc:
        error = describe(exc, "ResultNotSerializable")
    return decide(record, options, error)


def timed_out(record: JobRecord, options: RunOptions, detail: str = "") -> Outcome:
    """A run that passed its timeout: a failure like any other."""
    assert options.timeout is not None
    return decide(
        record, options, describe(JobTimeout(f"timed out after {options.timeout:g} s{detail}"))
    )


async def run_async_job(app: Conveyor, record: JobRecord, prepared: Prepared) -> Outcome:
    """Run an ``async def`` job on this loop to its outcome. Raises only
    ``CancelledError``, when the worker itself cancels the run (a forced
    shutdown)."""
    task, options = prepared.task, prepared.options
    try:
        if options.timeout is None:  # the common case: no timer to arm
            ok, value = True, await task.fn(*prepared.args, **prepared.kwargs)
        else:
            scope = asyncio.timeout(options.timeout)
            try:
                async with scope:
                    ok, value = True, await task.fn(*prepared.args, **prepared.kwargs)
            except TimeoutError:
                if not scope.expired():  # a TimeoutError of the task's own
                    raise
                return timed_out(record, options)
    except asyncio.CancelledError as exc:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the worker is stopping this run
        ok, value = False, exc  # the task's own code raised it
    except BaseException as exc:  # SystemExit and KeyboardInterrupt fail the job, not the worker
        ok, value = False, exc
    return outcome_of(app, record, options, ok, value)


def run_sync_job(app: Conveyor, record: JobRecord, prepared: Prepared) -> Outcome:
    """Run a plain-function job to its outcome, on the calling thread (a
    slot thread: ``slots.py``). Never raises: whatever the function raises,
    ``SystemExit`` and ``KeyboardInterrupt`` included, is the job's failure."""
    try:
        ok, value = True, prepared.task.fn(*prepared.args, **prepared.kwargs)
    except BaseException as exc:
        ok, value = False, exc
    try:
        return outcome_of(app, record, prepared.options, ok, value)
    except Exception as exc:  # a bug of ours: the job still gets an outcome
        return internal_error(record, exc, prepared.options)
