"""Job options and where they come from.

A run's options are resolved in this order, first set wins: the job's own
(``task.options(...)`` or ``app.enqueue(..., attempts=...)``), the task's
(``@app.task(attempts=...)``), the queue's (``app.queue("bulk", ...)``), then
the defaults of the seed's production set-up: 3 attempts, exponential backoff
from 1 second, no timeout, priority 0.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from conveyor.backoff import Backoff, BackoffFunction
from conveyor.errors import ConfigurationError

DEFAULT_QUEUE = "default"


@dataclass(frozen=True, slots=True)
class JobDefaults:
    """Options a task or a queue may set; None means "not set here"."""

    attempts: int | None = None
    timeout: float | None = None
    priority: int | None = None
    backoff: str | BackoffFunction | None = None
    backoff_delay: float | None = None
    backoff_max: float | None = None
    jitter: float | None = None

    def __post_init__(self) -> None:
        if self.attempts is not None and (type(self.attempts) is not int or self.attempts < 1):
            raise ConfigurationError(f"attempts must be a whole number >= 1, not {self.attempts!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, not {self.timeout!r}")
        if self.priority is not None and type(self.priority) is not int:
            raise ConfigurationError(f"priority must be a whole number, not {self.priority!r}")
        # Validate the backoff parts now, so a typo fails at definition time.
        Backoff(
            self.backoff or "exponential",
            self.backoff_delay if self.backoff_delay is not None else 1.0,
            self.backoff_max,
            self.jitter or 0.0,
        )

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


def run_at_from(delay: float | None, run_at: datetime | float | None, now: float) -> float | None:
    """The timestamp a job becomes due, from ``delay=`` seconds or ``run_at=``."""
    if delay is not None and run_at is not None:
        raise ConfigurationError("give delay= or run_at=, not both")
    if delay is not None:
        if delay < 0:
            raise ConfigurationError(f"delay must be >= 0 seconds, not {delay!r}")
        return now + delay if delay > 0 else None
    if run_at is None:
        return None
    if isinstance(run_at, datetime):
        if run_at.tzinfo is None:
            raise ConfigurationError(
                "run_at must be timezone-aware (e.g. datetime.now(timezone.utc)), "
                "so a job is not run hours early or late"
            )
        return run_at.astimezone(UTC).timestamp()
    return float(run_at)
