"""Job options and where they come from.

A run's options are resolved in this order, first set wins: the job's own
(``task.options(...)`` or ``app.enqueue(..., attempts=...)``), the task's
(``@app.task(attempts=...)``), the queue's (``app.queue("bulk", ...)``), then
the defaults of the seed's production set-up: 3 attempts, exponential backoff
from 1 second, no timeout, priority 0.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, TypedDict

from conveyor import validate
from conveyor.backoff import KINDS, Backoff, BackoffFunction
from conveyor.errors import ConfigurationError

DEFAULT_QUEUE = "default"


class TaskOptions(TypedDict, total=False):
    """The defaults ``@app.task`` and ``app.queue`` may set for their jobs
    (the fields of ``JobDefaults``)."""

    attempts: int | None
    timeout: float | None
    priority: int | None
    backoff: str | BackoffFunction | None
    backoff_delay: float | None
    backoff_max: float | None
    jitter: float | None


class QueueOptions(TaskOptions, total=False):
    """``app.queue``'s options: its jobs' defaults and its retention."""

    keep_completed: int | None
    keep_completed_for: float | None
    keep_dead: int | None
    keep_dead_for: float | None


class EnqueueOptions(TypedDict, total=False):
    """What ``app.enqueue``, ``task.options`` and their async twins take for
    one job. None, like a missing key, means "not set": the task's, then the
    queue's, then the global default applies."""

    queue: str | None
    delay: float | None
    run_at: datetime | float | None
    priority: int | None
    job_id: str | None
    attempts: int | None
    timeout: float | None
    backoff: str | None
    backoff_delay: float | None
    backoff_max: float | None
    jitter: float | None


TASK_OPTIONS = tuple(TaskOptions.__annotations__)
QUEUE_OPTIONS = tuple(QueueOptions.__annotations__)
ENQUEUE_OPTIONS = tuple(EnqueueOptions.__annotations__)
#: A job's own options that are stored with it (priority has its own column;
#: queue, delay, run_at and job_id shape the stored record itself).
STORED_OPTIONS = tuple(name for name in TASK_OPTIONS if name != "priority")


def check_names(where: str, given: Iterable[str], known: tuple[str, ...]) -> None:
    """Refuse a keyword that is not an option, naming the nearest one."""
    for name in given:
        if name not in known:
            validate.unknown_option(where, name, known)


@dataclass(frozen=True, slots=True)
class JobDefaults:
    """Options a task or a queue may set; None means "not set here".

    Every value is checked (``conveyor.validate``) when the layer is built:
    at ``@app.task`` or ``app.queue`` time, or at enqueue for a job's own.
    """

    attempts: int | None = None
    timeout: float | None = None
    priority: int | None = None
    backoff: str | BackoffFunction | None = None
    backoff_delay: float | None = None
    backoff_max: float | None = None
    jitter: float | None = None

    def __post_init__(self) -> None:
        checks = {
            "attempts": validate.attempts,
            "timeout": validate.timeout,
            "priority": validate.priority,
            "backoff": lambda name, value: validate.backoff(name, value, KINDS, True),
            "backoff_delay": validate.seconds,
            "backoff_max": validate.seconds,
            "jitter": validate.jitter,
        }
        for name, check in checks.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check(name, value))

    def stored(self) -> dict[str, Any] | None:
        """The options worth storing with a job (a callable cannot be stored)."""
        if callable(self.backoff):
            raise ConfigurationError(
                "a callable backoff cannot be stored with a job: set it on @app.task(backoff=...)"
            )
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.pop("priority")  # priority lives in its own column
        kept = {k: v for k, v in values.items() if v is not None}
        return kept or None


assert tuple(f.name for f in fields(JobDefaults)) == TASK_OPTIONS, "one list of task options"

GLOBAL_DEFAULTS = JobDefaults(attempts=3, priority=0, backoff="exponential", backoff_delay=1.0)


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Fully resolved options for running one job."""

    attempts: int
    timeout: float | None
    backoff: Backoff


def resolve(*layers: JobDefaults | None) -> RunOptions:
    """Merge option layers, most specific first."""

    def pick(name: str) -> Any:
        for layer in layers:
            if layer is not None and getattr(layer, name) is not None:
                return getattr(layer, name)
        return getattr(GLOBAL_DEFAULTS, name)

    return RunOptions(
        attempts=pick("attempts"),
        timeout=pick("timeout"),
        backoff=Backoff(
            pick("backoff"), pick("backoff_delay"), pick("backoff_max"), pick("jitter") or 0.0
        ),
    )


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """A named queue: its job defaults and how long ended jobs are kept.

    ``keep_completed`` / ``keep_dead`` keep that many most recent jobs of the
    state (None keeps all); ``keep_completed_for`` / ``keep_dead_for`` remove
    those older than that many seconds. These are the seed's removeOnComplete
    and removeOnFail. By default the last 10,000 completed jobs are kept and
    dead jobs are kept until someone retries or removes them.
    """

    name: str
    defaults: JobDefaults = JobDefaults()
    keep_completed: int | None = 10_000
    keep_completed_for: float | None = None
    keep_dead: int | None = None
    keep_dead_for: float | None = None

    def __post_init__(self) -> None:
        validate.queue_name("queue name", self.name)
        for name in ("keep_completed", "keep_dead"):
            value = validate.optional(validate.retention_count, name, getattr(self, name))
            object.__setattr__(self, name, value)
        for name in ("keep_completed_for", "keep_dead_for"):
            value = validate.optional(validate.seconds, name, getattr(self, name), positive=True)
            object.__setattr__(self, name, value)


def run_at_from(delay: Any, run_at: Any, now: float) -> float | None:
    """The timestamp a job becomes due, from ``delay=`` seconds or ``run_at=``
    (an aware datetime, or seconds since the epoch)."""
    if delay is not None and run_at is not None:
        raise ConfigurationError("give delay= or run_at=, not both")
    if delay is not None:
        delay = validate.seconds("delay", delay)
        return now + delay if delay > 0 else None
    if run_at is None:
        return None
    if isinstance(run_at, datetime):
        if run_at.tzinfo is None:
            raise ConfigurationError(
                "run_at must be timezone-aware (e.g. datetime.now(timezone.utc)), "
                "so a job is not run hours early or late"
            )
        timestamp = run_at.astimezone(UTC).timestamp()
    elif isinstance(run_at, numbers.Real) and not isinstance(run_at, bool):
        timestamp = float(run_at)
    else:
        validate.refuse("run_at", "an aware datetime or seconds since the epoch", run_at)
    if not 0 <= timestamp <= now + validate.MAX_SECONDS:  # NaN fails too
        validate.refuse(
            "run_at", "a time within 100 years from now (seconds, not milliseconds)", run_at
        )
    return timestamp
