"""``Conveyor``: the app object users define tasks on and enqueue through."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar, Unpack, cast, overload

from conveyor import validate
from conveyor.brokers import check_url, mask, open_broker
from conveyor.brokers.base import (
    BACKLOG,
    NO_CONTROLS,
    STATES,
    Broker,
    Controls,
    EnqueueResult,
    NewJob,
    purge_states,
)
from conveyor.clock import Clock, SystemClock
from conveyor.errors import ConfigurationError
from conveyor.job import Job, new_job_id
from conveyor.options import (
    DEFAULT_QUEUE,
    ENQUEUE_OPTIONS,
    TASK_LIMITS,
    TASK_OPTIONS,
    EnqueueOptions,
    JobDefaults,
    QueueConfig,
    QueueOptions,
    RunOptions,
    TaskOptions,
    check_options,
    resolve,
    run_at_from,
    stored_options,
)
from conveyor.schedules import Schedule, iso, tick_job_id
from conveyor.serialization import DEFAULT_MAX_PAYLOAD, dumps, encode_payload, loads
from conveyor.task import AsyncTask, P, R, Signature, SyncTask, Task
from conveyor.unique import unique_key

DEFAULT_URL = "sqlite:///conveyor.db"


class TaskDecorator(Protocol):
    """What ``@app.task(...)`` with options returns: the decorator itself."""

    # An async function matches both: the first wins, as intended (mypy
    # calls such overloads overlapping; typeshed uses the same pattern).
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> AsyncTask[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> SyncTask[P, R]: ...


TaskT = TypeVar("TaskT", bound=Task[Any, Any])


class PeriodicDecorator(Protocol):
    """What ``@app.periodic(...)`` returns: a decorator that keeps the type of
    the task it makes (or is given)."""

    @overload
    def __call__(self, fn: TaskT, /) -> TaskT: ...

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> AsyncTask[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> SyncTask[P, R]: ...


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
        max_result: int = DEFAULT_MAX_PAYLOAD,
        max_stalled: int = 3,
    ) -> None:
        self.url = url or os.environ.get("CONVEYOR_URL") or DEFAULT_URL
        if type(self.url) is not str:
            validate.refuse("url", "a store URL", self.url)
        check_url(self.url)  # a malformed URL fails here; the store opens on first use
        self.clock = clock or SystemClock()
        self.max_payload = validate.whole_number("max_payload", max_payload, 64, 2**31)
        self.max_result = validate.whole_number("max_result", max_result, 64, 2**31)
        self.max_stalled = validate.max_stalled("max_stalled", max_stalled)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.queues: dict[str, QueueConfig] = {}
        self.schedules: dict[str, Schedule] = {}  # @app.periodic, by name
        self._undeclared: dict[str, QueueConfig] = {}
        self._broker: Broker | None = None
        #: What the store enforces for this app's definitions (``_declared``).
        self.controls: Controls = NO_CONTROLS
        self._open_lock = threading.Lock()
        self._run_options: dict[tuple[str, str, str | None], RunOptions] = {}
        # set by conveyor.testing.inline: run jobs as they are enqueued
        self._after_enqueue: Callable[[str], None] | None = None
        self._after_enqueue_async: Callable[[str], Awaitable[None]] | None = None
        self._draining = False

    def __repr__(self) -> str:
        return f"<Conveyor {mask(self.url)}>"

    @property
    def broker(self) -> Broker:
        """The store, opened on first use."""
        if self._broker is None:
            with self._open_lock:
                if self._broker is None:
                    broker = open_broker(self.url, self.clock)
                    broker.controls = self.controls
                    self._broker = broker
        return self._broker

    def open(self, *, create: bool = True) -> Broker:
        """Open the store now (it opens on first use otherwise). With
        ``create=False`` a store that does not exist yet is an error instead
        of being created: what read-only commands use, so a mistyped path
        never leaves an empty database behind."""
        with self._open_lock:
            if self._broker is None:
                broker = open_broker(self.url, self.clock, create=create)
                broker.controls = self.controls
                self._broker = broker
        return self._broker

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
            self._broker = None

    # -- defining -------------------------------------------------------

    @overload
    def task(  # type: ignore[overload-overlap]  # async functions: the first wins
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> AsyncTask[P, R]: ...

    @overload
    def task(self, fn: Callable[P, R]) -> SyncTask[P, R]: ...

    @overload
    def task(
        self, *, name: str | None = None, queue: str | None = None, **defaults: Unpack[TaskOptions]
    ) -> TaskDecorator: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
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
        Every option is checked here, so a typo fails at import, not at run.

        ``rate_limit="100/s"`` caps the task's job starts across all workers
        (a sliding window); with ``rate_key="customer"`` the cap holds per
        value of the function's ``customer`` argument.
        """
        if name is not None:
            validate.task_name("name", name)
        if queue is not None:
            validate.queue_name("queue", queue)
        limits = check_options(
            "@app.task", {key: defaults.pop(key) for key in TASK_LIMITS if key in defaults},
            TASK_OPTIONS,
        )  # fmt: skip
        if "rate_key" in limits and "rate_limit" not in limits:
            raise ConfigurationError(
                f"rate_key={limits['rate_key']!r} needs a rate_limit= to hold for each of its values"
            )
        job_defaults = JobDefaults("@app.task", **defaults)

        def register(function: Callable[..., Any]) -> Task[Any, Any]:
            if not callable(function):
                validate.refuse("@app.task", "used on a function", function)
            task_name = name or validate.task_name(
                "task name", f"{function.__module__}.{function.__qualname__}"
            )
            if task_name in self.tasks and self.tasks[task_name].fn is not function:
                raise ConfigurationError(f"a task named {task_name!r} is already registered")
            kind = AsyncTask if inspect.iscoroutinefunction(function) else SyncTask
            task: Task[Any, Any] = kind(
                self, function, task_name, queue, job_defaults,
                limits.get("rate_limit"), limits.get("rate_key"),
            )  # fmt: skip
            self.tasks[task_name] = task
            self._run_options.clear()
            self._declared()
            return task

        return register(fn) if fn is not None else register

    def periodic(
        self,
        cron: str | None = None,
        *,
        every: float | None = None,
        name: str | None = None,
        queue: str | None = None,
        tz: str | None = None,
        missed: str = "skip",
    ) -> PeriodicDecorator:
        """Enqueue a task's job at every tick of a schedule, from whichever
        worker runs: exactly one job per tick, however many workers do.

        >>> @app.periodic("*/5 * * * *", tz="Europe/Paris")  # doctest: +SKIP
        ... def nightly_report(): ...
        >>> @app.periodic(every=30, name="poll-feeds", queue="default")  # doctest: +SKIP
        ... def poll_feeds(): ...

        ``cron``: 5 fields, or 6 with seconds first, in ``tz`` (default UTC);
        or ``every`` seconds, ticking at multiples of it since the epoch.
        ``name`` (the schedule's, and the task's when the function is not a
        task yet) defaults to the task name. Ticks missed while no worker ran
        are skipped (``missed="skip"``) or run once (``"run_once"``). The
        function is called without arguments; decorate a task
        (``@app.periodic(...)`` above ``@app.task(...)``) to give it options.
        Every mistake is a ConfigurationError here, and nothing is registered.
        """
        checked = Schedule.declare(
            name, "", queue or DEFAULT_QUEUE, cron,
            every=every, tz=tz, missed=missed,
        )  # fmt: skip
        if queue is not None:
            validate.queue_name("queue", queue)

        def register(function: Callable[..., Any]) -> Task[Any, Any]:
            if isinstance(function, Task):
                if function.app is not self:
                    validate.refuse("@app.periodic", "used on a task of this app", function)
                task_name = function.name
            elif callable(function):
                task_name = name or validate.task_name(
                    "task name", f"{function.__module__}.{function.__qualname__}"
                )
            else:
                validate.refuse("@app.periodic", "used on a function or task", function)
            schedule_name = name or task_name
            if schedule_name in self.schedules:
                raise ConfigurationError(f"a schedule named {schedule_name!r} is already declared")
            task: Task[Any, Any] = (
                function if isinstance(function, Task) else self.task(name=task_name)(function)
            )
            if (why := task.call_check.fits((), {})) is not None:
                if not isinstance(function, Task):
                    del self.tasks[task.name]  # nothing registered
                raise ConfigurationError(
                    f"schedule {schedule_name!r}: its task {task.name!r} is called without "
                    f"arguments and cannot be ({why})"
                )
            self.schedules[schedule_name] = dataclasses.replace(
                checked,
                name=schedule_name,
                task=task.name,
                queue=queue or task.queue or DEFAULT_QUEUE,
            )
            return task

        return cast(PeriodicDecorator, register)

    def schedule_status(self) -> list[dict[str, Any]]:
        """Each schedule's name, schedule, time zone, next run (computed
        here) and last run (the last tick claimed, read from the store),
        times as ISO-8601 UTC or None: ``conveyor schedules`` and the
        dashboard show this.

        >>> app.schedule_status()  # doctest: +SKIP
        [{'name': 'poll-feeds', 'schedule': 'every 30s', 'tz': 'UTC', 'queue': 'default',
          'task': 'app.poll_feeds', 'missed': 'skip', 'next_run': '2026-12-03T12:00:30Z',
          'last_run': '2026-12-03T12:00:00Z'}]
        """
        schedules = list(self.schedules.values())
        last = self.broker.last_ticks([(s.queue, s.name) for s in schedules]) if schedules else []
        now = self.clock.now()
        status = []
        for schedule, last_tick in zip(schedules, last, strict=True):
            next_tick = schedule.next_after(now)
            status.append(
                {
                    "name": schedule.name,
                    "schedule": schedule.description,
                    "tz": schedule.tz,
                    "queue": schedule.queue,
                    "task": schedule.task,
                    "missed": schedule.missed,
                    "next_run": None if next_tick is None else iso(next_tick),
                    "last_run": None if last_tick is None else iso(last_tick),
                }
            )
        return status

    def tick_job(self, schedule: Schedule, at: int) -> NewJob:
        """The job of ``schedule``'s tick ``at`` (what the worker's scheduler fires)."""
        options: EnqueueOptions = {
            "job_id": tick_job_id(schedule.name, at),
            "queue": schedule.queue,
        }
        return self._new_job(schedule.task, (), {}, options)

    def queue(self, name: str, **options: Unpack[QueueOptions]) -> QueueConfig:
        """Declare a queue with defaults for its jobs and its retention.

        The seed's production set-up::

            app.queue("critical", priority=10, attempts=5)
            app.queue("default", priority=5, attempts=3)
            app.queue("bulk", priority=1, attempts=1, timeout=300, keep_completed=100)

        Job defaults: ``attempts``, ``timeout``, ``priority``, ``backoff``,
        ``backoff_delay``, ``backoff_max``, ``jitter``. Retention (the seed's
        removeOnComplete / removeOnFail): ``keep_completed`` (default 10,000),
        ``keep_completed_for`` (seconds), ``keep_dead``, ``keep_dead_for``.
        Flow control, held by the store across all workers: ``rate_limit``
        (``"10/s"``: at most 10 job starts in any 1-second window) and
        ``concurrency`` (at most that many of its jobs active at once)::

            app.queue("bulk", rate_limit="10/m", concurrency=4)
        """
        config = QueueConfig.declare(name, options)
        self.queues[name] = config
        self._run_options.clear()
        self._declared()
        return config

    def _declared(self) -> None:
        """Hand the store the limits of the definitions made so far: one new
        ``Controls`` at once, so a claim never sees half of a change."""
        self.controls = Controls(
            queue_rates={n: q.rate_limit for n, q in self.queues.items() if q.rate_limit},
            concurrency={n: q.concurrency for n, q in self.queues.items() if q.concurrency},
            task_rates={n: t.rate_limit for n, t in self.tasks.items() if t.rate_limit},
        )
        if self._broker is not None:
            self._broker.controls = self.controls

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
        task: str | Task[Any, Any],
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> Job[Any]:
        """Store a job for the task named ``task``; no import of the task needed.

        >>> app.enqueue("send-email", kwargs={"to": "a@b.c"}, queue="critical", delay=5)  # doctest: +SKIP

        Options: ``queue``, ``delay`` (seconds) or ``run_at`` (an aware
        datetime or epoch seconds), ``priority``, ``job_id``, ``unique_for``
        (seconds), and the run options ``attempts``, ``timeout``,
        ``backoff``, ``backoff_delay``, ``backoff_max``, ``jitter``. A
        ``job_id`` naming a job that has not ended returns that job instead
        of storing a second one. ``unique_for``: one job per key (the
        ``job_id``, else a hash of the task and arguments) while it has not
        ended and for that many seconds after; another enqueue of the key
        meanwhile returns that job (``conveyor.unique``).

        A job for a task this app does not know goes to ``queue`` or to
        ``default``: the producer cannot know the queue a task declares in
        code it does not import.
        """
        new = self._new_job(task, args, kwargs, options)
        result = self.broker.enqueue([new])[0]
        if self._after_enqueue is not None and result.created:
            self._after_enqueue(new.queue)
            return Job(self, self.broker.get(new.id) or result.record)
        return Job(self, result.record)

    async def enqueue_async(
        self,
        task: str | Task[Any, Any],
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> Job[Any]:
        """``enqueue`` for async code: the store call runs on a thread, so the
        event loop (a FastAPI handler's, an async task's) never blocks.

        >>> job = await app.enqueue_async("send-email", kwargs={"to": "a@b.c"})  # doctest: +SKIP
        """
        new = self._new_job(task, args, kwargs, options)
        result = (await asyncio.to_thread(self._store, [new]))[0]
        if self._after_enqueue_async is not None and result.created:
            await self._after_enqueue_async(new.queue)
            stored = await asyncio.to_thread(self.broker.get, new.id)
            return Job(self, stored or result.record)
        return Job(self, result.record)

    def enqueue_many(self, calls: Iterable[Signature]) -> list[Job[Any]]:
        """Store many jobs in one store call per batch: the fast way to add
        thousands. Each call is ``task.s(*args, **kwargs)``, optionally with
        options (``task.options(priority=9).s(...)``).

        >>> app.enqueue_many(resize.s(path) for path in paths)  # doctest: +SKIP

        Every argument is checked before anything is stored: one bad call
        stores none of them.
        """
        new = self._new_jobs(calls)
        results = self._store(new)
        if self._after_enqueue is not None and any(r.created for r in results):
            for queue in dict.fromkeys(job.queue for job in new):
                self._after_enqueue(queue)
            return [Job(self, self.broker.get(r.record.id) or r.record) for r in results]
        return [Job(self, r.record) for r in results]

    async def enqueue_many_async(self, calls: Iterable[Signature]) -> list[Job[Any]]:
        """``enqueue_many`` without blocking the event loop."""
        new = self._new_jobs(calls)
        results = await asyncio.to_thread(self._store, new)
        if self._after_enqueue_async is not None and any(r.created for r in results):
            for queue in dict.fromkeys(job.queue for job in new):
                await self._after_enqueue_async(queue)
            records = [await asyncio.to_thread(self.broker.get, r.record.id) for r in results]
            return [Job(self, rec or r.record) for rec, r in zip(records, results, strict=True)]
        return [Job(self, r.record) for r in results]

    def _store(self, jobs: list[NewJob]) -> list[EnqueueResult]:
        return self.broker.enqueue(jobs) if jobs else []

    def _new_jobs(self, calls: Iterable[Signature]) -> list[NewJob]:
        if isinstance(calls, Signature):
            validate.refuse("enqueue_many()", "given an iterable of signatures", calls)
        new = []
        for call in calls:
            if not isinstance(call, Signature):
                validate.refuse("each call", "a signature such as task.s(1, 2)", call)
            new.append(self._new_job(call.task, call.args, call.kwargs, call.options))
        return new

    def _new_job(
        self, task: Any, args: Any, kwargs: Any, options: EnqueueOptions | dict[str, Any]
    ) -> NewJob:
        """Check one call and its options, and build the record to store.

        The common call (``task.enqueue(...)``, no options) costs a couple of
        type checks here; options are checked only when given."""
        name = task.name if isinstance(task, Task) else validate.task_name("task", task)
        args, kwargs = validate.arguments(args, kwargs)
        known = self.tasks.get(name)
        if known is not None and (why := known.call_check.fits(args, kwargs)) is not None:
            raise ConfigurationError(
                f"task {name!r} cannot take these arguments ({why}): "
                f"{getattr(known.fn, '__name__', name)}{known.call_check.signature}"
            )
        queue = (known.queue if known else None) or DEFAULT_QUEUE
        priority = None
        job_id = stored = run_at = unique_for = None
        if options:
            given = check_options("enqueue", options, ENQUEUE_OPTIONS)
            queue = given.get("queue", queue)
            priority = given.get("priority")
            job_id = given.get("job_id")
            unique_for = given.get("unique_for")
            stored = stored_options(given)
            run_at = run_at_from(given.get("delay"), given.get("run_at"), self.clock.now())
        if priority is None:
            priority = known.defaults.get("priority") if known else None
            if priority is None:
                priority = self.queue_config(queue).defaults.get("priority") or 0
        payload = encode_payload(name, args, kwargs, self.max_payload)
        key = None
        if unique_for is not None:  # after encode_payload: the arguments are JSON
            key = job_id if job_id is not None else unique_key(name, args, kwargs)
        return NewJob(
            id=job_id if job_id is not None else new_job_id(),
            task=name,
            queue=queue,
            payload=payload,
            priority=priority,
            run_at=run_at,
            options=dumps(stored) if stored else None,
            generated_id=job_id is None,
            unique_key=key,
            unique_for=unique_for,
            # A producer that does not know the task leaves it None: the
            # job then goes to the task's shared bucket, still limited.
            rate_key=known.rate_key.of(args, kwargs) if known and known.rate_key else None,
        )

    # -- reading and controlling ----------------------------------------

    def get_job(self, job_id: str) -> Job[Any] | None:
        """The job with this id, or None."""
        record = self.broker.get(job_id)
        return Job(self, record) if record is not None else None

    def jobs(
        self, queue: str | None = None, state: str | None = None, limit: int = 100
    ) -> list[Job[Any]]:
        """Stored jobs, oldest first, optionally of one queue and state."""
        if state is not None and state not in STATES:
            raise ConfigurationError(f"unknown state {state!r}: use one of {', '.join(STATES)}")
        validate.optional(validate.queue_name, "queue", queue)
        limit = validate.whole_number("limit", limit, 0, 10**9)
        return [Job(self, r) for r in self.broker.list(queue=queue, state=state, limit=limit)]

    def stats(self) -> dict[str, dict[str, int]]:
        """``{queue: {state: count}}`` for every queue holding jobs; every state key present."""
        return self.broker.counts()

    def pause(self, queue: str) -> bool:
        """Stop workers everywhere from starting ``queue``'s jobs (enqueue
        still works; jobs already running finish). True if it was running.

        >>> app.pause("bulk"); app.paused()
        {'bulk'}
        """
        return self.broker.pause(validate.queue_name("queue", queue))

    def resume(self, queue: str) -> bool:
        """Let workers start ``queue``'s jobs again. True if it was paused."""
        return self.broker.resume(validate.queue_name("queue", queue))

    def paused(self) -> set[str]:
        """The queues paused now."""
        return self.broker.paused()

    def purge(self, queue: str, states: Iterable[str] = BACKLOG) -> int:
        """Delete ``queue``'s jobs in ``states`` (waiting, delayed, completed,
        dead, cancelled: never active ones, which belong to their worker);
        how many went. By default its backlog: the waiting and delayed jobs.

        >>> app.purge("bulk", states=("waiting", "delayed", "dead"))
        1200
        """
        validate.queue_name("queue", queue)
        if isinstance(states, str):
            states = (states,)
        try:
            chosen = purge_states(list(states))
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        return self.broker.purge(queue, chosen)

    def retry_dead(self, queue: str | None = None) -> int:
        """Send every dead job (of ``queue``) back to waiting with fresh attempts."""
        validate.optional(validate.queue_name, "queue", queue)
        return self.broker.retry(None, queue=queue)

    # -- used by the worker ---------------------------------------------

    def run_options(self, task: str, queue: str, options_json: str | None) -> RunOptions:
        """Resolved options for running a job: job, task, queue, then defaults."""
        key = (queue, task, options_json)
        cached = self._run_options.get(key)
        if cached is None:
            job_layer = (
                JobDefaults("stored options", **loads(options_json)) if options_json else None
            )
            known = self.tasks.get(task)
            cached = resolve(
                job_layer,
                known.defaults if known else None,
                self.queue_config(queue).defaults,
            )
            self._run_options[key] = cached
        return cached
