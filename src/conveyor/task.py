"""Tasks: plain functions (sync or async) the app knows by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, Unpack

from conveyor.options import ENQUEUE_OPTIONS, EnqueueOptions, JobDefaults, check_names

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.job import Job

P = ParamSpec("P")
R = TypeVar("R")


class Task(Generic[P, R]):
    """A registered function. Calling it runs it here and now; ``enqueue``
    sends it to a worker.

    >>> job = add.enqueue(2, 3)                       # doctest: +SKIP
    >>> job = add.options(delay=10, priority=9).enqueue(2, 3)  # doctest: +SKIP
    """

    def __init__(
        self,
        app: Conveyor,
        fn: Callable[P, R],
        name: str,
        queue: str | None,
        defaults: JobDefaults,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = queue
        self.defaults = defaults
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name!r} queue={self.queue or 'default'!r}>"

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Store a job that calls this task with these arguments; returns at once."""
        return self.app.enqueue(self.name, args, kwargs)

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """``enqueue`` for async code: the event loop never blocks on the store.

        >>> job = await add.enqueue_async(2, 3)  # doctest: +SKIP
        """
        return await self.app.enqueue_async(self.name, args, kwargs)

    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        """This call, to enqueue later: ``app.enqueue_many([add.s(1, 2), ...])``."""
        return Signature(self.name, args, kwargs, {})

    def options(self, **options: Unpack[EnqueueOptions]) -> BoundOptions[P]:
        """The same task with options for the next enqueue (the options of
        ``app.enqueue``), checked now:

        >>> add.options(delay=10, priority=9, job_id="add-2-3").enqueue(2, 3)  # doctest: +SKIP
        """
        check_names("task.options", options, ENQUEUE_OPTIONS)
        return BoundOptions(self, {k: v for k, v in options.items() if v is not None})


class BoundOptions(Generic[P]):
    """``task.options(...)``: holds the options until ``enqueue`` is called."""

    def __init__(self, task: Task[P, Any], options: dict[str, Any]) -> None:
        self.task = task
        self.opts = options

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        return self.task.app.enqueue(self.task.name, args, kwargs, **self.opts)

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        return await self.task.app.enqueue_async(self.task.name, args, kwargs, **self.opts)

    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        return Signature(self.task.name, args, kwargs, self.opts)


@dataclass(frozen=True, slots=True)
class Signature:
    """A task call with its options, not yet enqueued."""

    task: str
    args: tuple
    kwargs: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
