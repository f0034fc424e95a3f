"""Job options: one definition, every surface derived from it.

Each option is one line of a ``TypedDict`` below, its type annotated with
the check that normalises it (``conveyor.validate``). ``@app.task``,
``app.queue``, ``app.enqueue``, ``task.options`` and their async twins take
``**options: Unpack[...]`` of these, so type checkers and IDEs see every
keyword; the checks, the lists of known names (for "did you mean")
and what is stored with a job all come from the same lines. Adding an option
is one line here plus its behaviour.

A run's options are resolved in this order, first set wins: the job's own
(``task.options(...)`` or ``app.enqueue(..., attempts=...)``), the task's
(``@app.task(attempts=...)``), the queue's (``app.queue("bulk", ...)``), then
the defaults of the seed's production set-up: 3 attempts, exponential backoff
from 1 second, no timeout, priority 0.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, TypedDict, get_type_hints

from conveyor import validate
from conveyor.backoff import KINDS, Backoff, BackoffFunction
from conveyor.brokers.base import RateLimit
from conveyor.errors import ConfigurationError

DEFAULT_QUEUE = "default"

Check = Callable[[str, Any], Any]


def _backoff(option: str, value: Any) -> Any:
    return validate.backoff(option, value, KINDS, allow_callable=True)


def _positive_seconds(option: str, value: Any) -> float:
    return validate.seconds(option, value, positive=True)


def _run_at(option: str, value: Any) -> Any:
    """Its type here; its range against the clock in ``run_at_from``."""
    if isinstance(value, datetime) or (
        isinstance(value, numbers.Real) and not isinstance(value, bool)
    ):
        return value
    validate.refuse(option, "an aware datetime or seconds since the epoch", value)


class JobOptions(TypedDict, total=False):
    """Options of a run that a job, its task or its queue may set."""

    attempts: Annotated[int | None, validate.attempts]
    timeout: Annotated[float | None, validate.timeout]
    priority: Annotated[int | None, validate.priority]
    backoff: Annotated[str | BackoffFunction | None, _backoff]
    backoff_delay: Annotated[float | None, validate.seconds]
    backoff_max: Annotated[float | None, validate.seconds]
    jitter: Annotated[float | None, validate.jitter]


class TaskOptions(JobOptions, total=False):
    """``@app.task``'s options (besides ``name`` and ``queue``): its jobs'
    defaults, and its rate limit (per value of its ``rate_key`` argument)."""

    rate_limit: Annotated[str | None, validate.rate_limit]
    rate_key: Annotated[str | None, validate.rate_key]


class QueueOptions(JobOptions, total=False):
    """``app.queue``'s options: its jobs' defaults, its retention, and its
    flow control (enforced by the store, across all workers)."""

    rate_limit: Annotated[str | None, validate.rate_limit]
    concurrency: Annotated[int | None, validate.queue_concurrency]
    keep_completed: Annotated[int | None, validate.retention_count]
    keep_completed_for: Annotated[float | None, _positive_seconds]
    keep_dead: Annotated[int | None, validate.retention_count]
    keep_dead_for: Annotated[float | None, _positive_seconds]


class EnqueueOptions(JobOptions, total=False):
    """What ``app.enqueue``, ``task.options`` and their async twins take for
    one job. None, like a missing key, means "not set": the task's, then the
    queue's, then the global default applies."""

    queue: Annotated[str | None, validate.queue_name]
    delay: Annotated[float | None, validate.seconds]
    run_at: Annotated[datetime | float | None, _run_at]
    job_id: Annotated[str | None, validate.job_id]
    unique_for: Annotated[float | None, validate.unique_for]


def _checks(options: type) -> dict[str, Check]:
    hints = get_type_hints(options, include_extras=True)
    return {name: hint.__metadata__[0] for name, hint in hints.items()}


CHECKS: dict[str, Check] = {
    **_checks(EnqueueOptions),
    **_checks(QueueOptions),
    **_checks(TaskOptions),
}
JOB_OPTIONS = tuple(get_type_hints(JobOptions))
TASK_OPTIONS = tuple(get_type_hints(TaskOptions))
#: A task's options that are not its jobs' run defaults.
TASK_LIMITS = tuple(name for name in TASK_OPTIONS if name not in JOB_OPTIONS)
QUEUE_OPTIONS = tuple(get_type_hints(QueueOptions))
ENQUEUE_OPTIONS = tuple(get_type_hints(EnqueueOptions))
#: A job's own run options, stored with it (priority has its own column).
STORED_OPTIONS = tuple(name for name in JOB_OPTIONS if name != "priority")


def check_options(where: str, given: Mapping[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    """The options set in ``given`` (None is "not set"), each checked and
    normalised; an unknown name is refused, naming the nearest known one."""
    checked = {}
    for name, value in given.items():
        if name not in known:
            validate.unknown_option(where, name, known)
        if value is not None:
            checked[name] = CHECKS[name](name, value)
    return checked


def check_names(where: str, given: Iterable[str], known: tuple[str, ...]) -> None:
    """Refuse a keyword that is not an option, naming the nearest one."""
    for name in given:
        if name not in known:
            validate.unknown_option(where, name, known)


class JobDefaults(Mapping[str, Any]):
    """A layer of run options (a task's, a queue's or a job's own), checked
    when it is made; a missing key means "not set here".

    >>> JobDefaults(attempts=5)["attempts"]
    5
    """

    __slots__ = ("_values",)

    def __init__(self, where: str = "options", **options: Any) -> None:
        self._values = check_options(where, options, JOB_OPTIONS)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def get(self, name: str, default: Any = None) -> Any:
        # Mapping's own get goes through a KeyError for every missing key:
        # too slow for enqueue, which asks for a priority on every job.
        return self._values.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"JobDefaults({self._values!r})"

    def stored(self) -> dict[str, Any] | None:
        return stored_options(self)


def stored_options(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """A job's own run options, as stored with it (a callable cannot be)."""
    if callable(options.get("backoff")):
        raise ConfigurationError(
            "a callable backoff cannot be stored with a job: set it on @app.task(backoff=...)"
        )
    kept = {name: options[name] for name in STORED_OPTIONS if name in options}
    return kept or None


GLOBAL_DEFAULTS = JobDefaults(attempts=3, priority=0, backoff="exponential", backoff_delay=1.0)


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Fully resolved options for running one job."""

    attempts: int
    timeout: float | None
    backoff: Backoff


def resolve(*layers: Mapping[str, Any] | None) -> RunOptions:
    """Merge option layers, most specific first."""

    def pick(name: str) -> Any:
        for layer in layers:
            if layer is not None and layer.get(name) is not None:
                return layer[name]
        return GLOBAL_DEFAULTS.get(name)

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

    ``rate_limit`` (at most that many job starts in any window of its
    period) and ``concurrency`` (at most that many jobs active at once) are
    enforced by the store for every worker; None: no limit.
    """

    name: str
    defaults: JobDefaults = field(default_factory=JobDefaults)
    rate_limit: RateLimit | None = None
    concurrency: int | None = None
    keep_completed: int | None = 10_000
    keep_completed_for: float | None = None
    keep_dead: int | None = None
    keep_dead_for: float | None = None

    def __post_init__(self) -> None:
        validate.queue_name("queue name", self.name)

    @classmethod
    def declare(cls, name: str, options: Mapping[str, Any]) -> QueueConfig:
        """``app.queue(name, **options)``: job defaults and retention, checked.
        A retention option given as None means "keep them all"."""
        given = check_options("app.queue", options, QUEUE_OPTIONS)
        defaults = {key: value for key, value in given.items() if key in JOB_OPTIONS}
        retention = {key: given.get(key) for key in options if key not in JOB_OPTIONS}
        return cls(name, JobDefaults("app.queue", **defaults), **retention)


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
    run_at = _run_at("run_at", run_at)
    if isinstance(run_at, datetime):
        if run_at.tzinfo is None:
            raise ConfigurationError(
                "run_at must be timezone-aware (e.g. datetime.now(timezone.utc)), "
                "so a job is not run hours early or late"
            )
        timestamp = run_at.astimezone(UTC).timestamp()
    else:
        timestamp = float(run_at)
    if not 0 <= timestamp <= now + validate.MAX_SECONDS:  # NaN fails too
        validate.refuse(
            "run_at", "a time within 100 years from now (seconds, not milliseconds)", run_at
        )
    return timestamp
