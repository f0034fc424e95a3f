"""``Conveyor``: the app object users define tasks on and enqueue through."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, overload

from conveyor.backoff import BackoffFunction
from conveyor.brokers import check_url, open_broker
from conveyor.brokers.base import STATES, Broker, NewJob
from conveyor.clock import Clock, SystemClock
from conveyor.errors import ConfigurationError
from conveyor.job import Job, new_job_id
from conveyor.options import (
    DEFAULT_QUEUE,
    JobDefaults,
    QueueConfig,
    RunOptions,
    resolve,
    run_at_from,
)
from conveyor.serialization import DEFAULT_MAX_PAYLOAD, dumps, encode_payload, loads
from conveyor.task import Signature, Task

DEFAULT_URL = "sqlite:///conveyor.db"
#: options stored with a job when given (the worker resolves the rest)
STORED_OPTIONS = ("attempts", "timeout", "backoff", "backoff_delay", "backoff_max", "jitter")


class Conveyor:
    """A job system: its tasks, its queues and the store they share.

    >>> app = Conveyor("memory://")
    >>> @app.task
    ... def add(x, y):
    ...     return x + y
    >>> add.enqueue(2, 3).state
    'waiting'

    ``url`` defaults to the ``CONVEYOR_URL`` environment variable, else
    ``sqlite:///conveyor.db`` in the current folder. The store is opened on
    first use, so importing a module that defines an app touches nothing.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        clock: Clock | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_stalled: int = 3,
    ) -> None:
        self.url = url or os.environ.get("CONVEYOR_URL") or DEFAULT_URL
        check_url(self.url)  # a malformed URL fails here; the store opens on first use
        self.clock = clock or SystemClock()
        self.max_payload = max_payload
        self.max_stalled = max_stalled
        self.tasks: dict[str, Task] = {}
        self.queues: dict[str, QueueConfig] = {}
        self._undeclared: dict[str, QueueConfig] = {}
        self._broker: Broker | None = None
        self._open_lock = threading.Lock()
        self._run_options: dict[tuple[str, str | None], RunOptions] = {}
        # set by conveyor.testing: run jobs as they are enqueued
        self._after_enqueue: Callable[[str], None] | None = None
        self._draining = False

    def __repr__(self) -> str:
        return f"<Conveyor {self.url}>"

    @property
    def broker(self) -> Broker:
        """The store, opened on first use."""
        if self._broker is None:
            with self._open_lock:
                if self._broker is None:
                    self._broker = open_broker(self.url, self.clock)
        return self._broker

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
            self._broker = None

    # -- defining -------------------------------------------------------

    @overload
    def task(self, fn: Callable[..., Any], /) -> Task: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str | None = None,
        attempts: int | None = None,
        timeout: float | None = None,
        priority: int | None = None,
        backoff: str | BackoffFunction | None = None,
        backoff_delay: float | None = None,
        backoff_max: float | None = None,
        jitter: float | None = None,
    ) -> Callable[[Callable[..., Any]], Task]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        **defaults: Any,
    ) -> Any:
        """Register a function (sync or ``async def``) as a task.

        >>> @app.task(name="send-email", queue="critical", attempts=5, timeout=30)  # doctest: +SKIP
        ... async def send_email(to, subject): ...

        ``name`` defaults to ``module.qualname``. Options not given fall back
        to the queue's, then to 3 attempts with exponential backoff from 1 s.
        """

        def register(function: Callable[..., Any]) -> Task:
            task_name = name or f"{function.__module__}.{function.__qualname__}"
            if task_name in self.tasks and self.tasks[task_name].fn is not function:
                raise ConfigurationError(f"a task named {task_name!r} is already registered")
            task = Task(self, function, task_name, queue, JobDefaults(**defaults))
            self.tasks[task_name] = task
            self._run_options.clear()
            return task

        return register(fn) if fn is not None else register

    def queue(
        self,
        name: str,
        *,
        attempts: int | None = None,
        timeout: float | None = None,
        priority: int | None = None,
        backoff: str | BackoffFunction | None = None,
        backoff_delay: float | None = None,
        backoff_max: float | None = None,
        jitter: float | None = None,
        keep_completed: int | None = 10_000,
        keep_completed_for: float | None = None,
        keep_dead: int | None = None,
        keep_dead_for: float | None = None,
    ) -> QueueConfig:
        """Declare a queue with defaults for its jobs and its retention.

        The seed's production set-up::

            app.queue("critical", priority=10, attempts=5)
            app.queue("default", priority=5, attempts=3)
            app.queue("bulk", priority=1, attempts=1, timeout=300, keep_completed=100)
        """
        config = QueueConfig(
            name,
            JobDefaults(attempts, timeout, priority, backoff, backoff_delay, backoff_max, jitter),
            keep_completed,
            keep_completed_for,
            keep_dead,
            keep_dead_for,
        )
        self.queues[name] = config
        self._run_options.clear()
        return config

    def queue_config(self, name: str) -> QueueConfig:
        config = self.queues.get(name)
        if config is None:  # undeclared: the defaults, built once per name
            config = self._undeclared.get(name) or self._undeclared.setdefault(
                name, QueueConfig(name)
            )
        return config

    def queue_names(self) -> list[str]:
        """Every queue the app's tasks and declarations name, declared first."""
        names = list(self.queues)
        for task in self.tasks.values():
            queue = task.queue or DEFAULT_QUEUE
            if queue not in names:
                names.append(queue)
        return names or [DEFAULT_QUEUE]

    # -- producing ------------------------------------------------------

    def enqueue(
        self,
        task: str | Task,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        delay: float | None = None,
        run_at: datetime | float | None = None,
        priority: int | None = None,
        job_id: str | None = None,
        attempts: int | None = None,
        timeout: float | None = None,
        backoff: str | None = None,
        backoff_delay: float | None = None,
        backoff_max: float | None = None,
        jitter: float | None = None,
    ) -> Job:
        """Store a job for the task named ``task``; no import of the task needed.

        >>> app.enqueue("send-email", kwargs={"to": "a@b.c"}, queue="critical", delay=5)  # doctest: +SKIP

        A ``job_id`` naming a job that has not ended returns that job instead
        of storing a second one.
        """
        options = {
            "queue": queue, "delay": delay, "run_at": run_at, "priority": priority,
            "job_id": job_id, "attempts": attempts, "timeout": timeout, "backoff": backoff,
            "backoff_delay": backoff_delay, "backoff_max": backoff_max, "jitter": jitter,
        }  # fmt: skip
        new = self._new_job(task, args, kwargs, options)
        result = self.broker.enqueue([new])[0]
        if self._after_enqueue is not None and result.created:
            self._after_enqueue(new.queue)
            return Job(self, self.broker.get(new.id) or result.record)
        return Job(self, result.record)

    def enqueue_many(self, calls: Iterable[Signature]) -> list[Job]:
        """Store many jobs in one store call per batch: the fast way to add
        thousands. Each call is ``task.s(*args, **kwargs)``, optionally with
        options (``task.options(priority=9).s(...)``).

        >>> app.enqueue_many(resize.s(path) for path in paths)  # doctest: +SKIP

        Every argument is checked before anything is stored: one bad call
        stores none of them.
        """
        new = [self._new_job(c.task, c.args, c.kwargs, c.options) for c in calls]
        results = self.broker.enqueue(new) if new else []
        if self._after_enqueue is not None and any(r.created for r in results):
            for queue in dict.fromkeys(job.queue for job in new):
                self._after_enqueue(queue)
            return [Job(self, self.broker.get(r.record.id) or r.record) for r in results]
        return [Job(self, r.record) for r in results]

    def _new_job(
        self,
        task: str | Task,
        args: Iterable[Any],
        kwargs: dict[str, Any] | None,
        opts: dict[str, Any],
    ) -> NewJob:
        """Validate one call and its options into the record to store."""
        job_id = opts.get("job_id")
        if job_id is not None and (not isinstance(job_id, str) or not job_id):
            raise ConfigurationError(f"job_id must be a non-empty string, not {job_id!r}")
        name = task.name if isinstance(task, Task) else task
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a task name must be a non-empty string, not {name!r}")
        known = self.tasks.get(name)
        queue = opts.get("queue") or (known.queue if known else None) or DEFAULT_QUEUE
        priority = opts.get("priority")
        if priority is None:
            priority = known.defaults.priority if known else None
        if priority is None:
            priority = self.queue_config(queue).defaults.priority or 0
        elif type(priority) is not int:
            raise ConfigurationError(f"priority must be a whole number, not {priority!r}")
        stored = None  # most jobs carry no overrides: skip building and validating them
        overrides = {k: opts.get(k) for k in STORED_OPTIONS} if opts else {}
        if any(v is not None for v in overrides.values()):
            stored = JobDefaults(priority=priority, **overrides).stored()
        return NewJob(
            id=job_id if job_id is not None else new_job_id(),
            task=name,
            queue=queue,
            payload=encode_payload(name, tuple(args), kwargs or {}, self.max_payload),
            priority=priority,
            run_at=run_at_from(opts.get("delay"), opts.get("run_at"), self.clock.now()),
            options=dumps(stored) if stored else None,
            generated_id=job_id is None,
        )

    # -- reading and controlling ----------------------------------------

    def get_job(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        record = self.broker.get(job_id)
        return Job(self, record) if record is not None else None

    def jobs(
        self, queue: str | None = None, state: str | None = None, limit: int = 100
    ) -> list[Job]:
        """Stored jobs, oldest first, optionally of one queue and state."""
        if state is not None and state not in STATES:
            raise ConfigurationError(f"unknown state {state!r}: use one of {', '.join(STATES)}")
        return [Job(self, r) for r in self.broker.list(queue=queue, state=state, limit=limit)]

    def stats(self) -> dict[str, dict[str, int]]:
        """``{queue: {state: count}}`` for every queue holding jobs; every state key present."""
        return self.broker.counts()

    def retry_dead(self, queue: str | None = None) -> int:
        """Send every dead job (of ``queue``) back to waiting with fresh attempts."""
        return self.broker.retry(None, queue=queue)

    # -- used by the worker ---------------------------------------------

    def run_options(self, task: str, queue: str, options_json: str | None) -> RunOptions:
        """Resolved options for running a job: job, task, queue, then defaults."""
        key = (f"{queue}\0{task}", options_json)
        cached = self._run_options.get(key)
        if cached is None:
            job_layer = JobDefaults(**loads(options_json)) if options_json else None
            known = self.tasks.get(task)
            cached = resolve(
                job_layer,
                known.defaults if known else None,
                self.queue_config(queue).defaults,
            )
            self._run_options[key] = cached
        return cached
