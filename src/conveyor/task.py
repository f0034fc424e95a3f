"""Tasks: plain functions (sync or async) the app knows by name.

A task keeps its function's signature for type checkers: ``Task[P, R]``
takes the parameters ``P`` of the function and ``R``, what a job of it
returns (for an ``async def``, what its coroutine returns), so
``add.enqueue("a", "b", "c")`` on ``def add(x: int, y: int) -> int`` is an
error in mypy and pyright, and ``add.enqueue(2, 3).result()`` is an ``int``.
``SyncTask`` and ``AsyncTask`` differ only in what calling the task here
and now returns: the value, or a coroutine.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, Unpack

import orjson

from conveyor.brokers.base import RateLimit
from conveyor.errors import ConfigurationError
from conveyor.options import ENQUEUE_OPTIONS, EnqueueOptions, JobDefaults, check_options

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.job import Job

P = ParamSpec("P")
R = TypeVar("R")

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class CallCheck:
    """Whether arguments fit a task's function, asked at enqueue: a call the
    function cannot take is refused before it is stored, rather than found
    by the worker as a dead job. The common call (positional arguments only,
    to a function without ``*args``, ``**kwargs`` or keyword-only
    parameters) is two comparisons; anything else is ``Signature.bind``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        try:
            self.signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # a callable Python cannot describe: not checked
            self.signature = None
            self._counts: tuple[int, int] | None = None
            return
        params = list(self.signature.parameters.values())
        if all(p.kind in _POSITIONAL for p in params):
            required = sum(p.default is inspect.Parameter.empty for p in params)
            self._counts = (required, len(params))
        else:
            self._counts = None

    def fits(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> str | None:
        """None when ``fn(*args, **kwargs)`` would bind; else why not."""
        counts = self._counts
        if not kwargs and counts is not None and counts[0] <= len(args) <= counts[1]:
            return None
        if self.signature is None:
            return None
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            return str(exc)
        return None


#: A rate key's JSON text longer than this is stored as its SHA-256 instead:
#: one customer's 1 MB argument must not become a 1 MB store key.
MAX_RATE_KEY = 200


class RateKey:
    """Where a task's ``rate_key`` argument is in a call, and its bucket:
    the argument's value as canonical JSON text (keys sorted, no spaces),
    whether it was passed by position, by keyword, or left to its default.

    >>> def sync_customer(customer, payload=None): ...
    >>> RateKey(sync_customer, "customer").of(("acme",), {})
    '"acme"'
    """

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        try:
            parameters = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            parameters = {}  # type: ignore[assignment]  # a callable Python cannot describe
        param = parameters.get(name)
        if param is None or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            shown = f"{getattr(fn, '__name__', fn)}{inspect.signature(fn) if parameters else ''}"
            raise ConfigurationError(f"rate_key={name!r} names no argument of {shown}")
        self.name = name
        self.index = list(parameters).index(name) if param.kind in _POSITIONAL else None
        self.by_keyword = param.kind is not param.POSITIONAL_ONLY
        self.default = param.default

    def of(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> str:
        """The bucket of a call that fits the function (checked before)."""
        if self.index is not None and self.index < len(args):
            value = args[self.index]
        elif self.by_keyword and self.name in kwargs:
            value = kwargs[self.name]
        else:
            value = None if self.default is inspect.Parameter.empty else self.default
        try:
            text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except TypeError as exc:  # a default JSON cannot carry (the arguments passed)
            raise ConfigurationError(
                f"rate_key {self.name!r}: its value {value!r} cannot be a bucket ({exc})"
            ) from None
        if len(text) > MAX_RATE_KEY:
            text = "sha256:" + hashlib.sha256(text.encode()).hexdigest()  # never valid JSON
        return text


class Task(Generic[P, R]):
    """A registered function: ``enqueue`` sends it to a worker.

    >>> job = add.enqueue(2, 3)                       # doctest: +SKIP
    >>> job = add.options(delay=10, priority=9).enqueue(2, 3)  # doctest: +SKIP
    """

    def __init__(
        self,
        app: Conveyor,
        fn: Callable[..., Any],
        name: str,
        queue: str | None,
        defaults: JobDefaults,
        rate_limit: RateLimit | None = None,
        rate_key: str | None = None,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = queue
        self.defaults = defaults
        self.is_async = inspect.iscoroutinefunction(fn)
        self.call_check = CallCheck(fn)
        #: At most this many starts of the task in any window, per bucket.
        self.rate_limit = rate_limit
        #: Picks each job's bucket (None: one bucket for all its jobs).
        self.rate_key = RateKey(fn, rate_key) if rate_key is not None else None
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name!r} queue={self.queue or 'default'!r}>"

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Store a job that calls this task with these arguments; returns at once."""
        return self.app.enqueue(self.name, args, kwargs)

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """``enqueue`` for async code: the event loop never blocks on the store.

        >>> job = await add.enqueue_async(2, 3)  # doctest: +SKIP
        """
        return await self.app.enqueue_async(self.name, args, kwargs)

    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        """This call, to enqueue later: ``app.enqueue_many([add.s(1, 2), ...])``."""
        return Signature(self.name, args, kwargs, {})

    def options(self, **options: Unpack[EnqueueOptions]) -> BoundOptions[P, R]:
        """The same task with options for the next enqueue (the options of
        ``app.enqueue``), checked now:

        >>> add.options(delay=10, priority=9, job_id="add-2-3").enqueue(2, 3)  # doctest: +SKIP
        """
        return BoundOptions(self, check_options("task.options", options, ENQUEUE_OPTIONS))


class SyncTask(Task[P, R]):
    """A task of a plain function; calling it runs it here and now."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = self.fn(*args, **kwargs)
        return result


class AsyncTask(Task[P, R]):
    """A task of an ``async def``; calling it returns its coroutine."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        coroutine: Coroutine[Any, Any, R] = self.fn(*args, **kwargs)
        return coroutine


class BoundOptions(Generic[P, R]):
    """``task.options(...)``: holds the options until ``enqueue`` is called."""

    def __init__(self, task: Task[P, R], options: dict[str, Any]) -> None:
        self.task = task
        self.opts = options

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        return self.task.app.enqueue(self.task.name, args, kwargs, **self.opts)

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        return await self.task.app.enqueue_async(self.task.name, args, kwargs, **self.opts)

    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        return Signature(self.task.name, args, kwargs, self.opts)


@dataclass(frozen=True, slots=True)
class Signature:
    """A task call with its options, not yet enqueued."""

    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
