"""Daemon threads that report back to an asyncio loop.

The worker runs two kinds of blocking work off its event loop: store
operations, and the bodies of plain (non-async) tasks. A plain task that
passes its timeout cannot be stopped from outside in Python, so the pool
grows instead of waiting: a stuck thread keeps its place, a new thread takes
the next job, and the stuck one rejoins the idle set if it ever returns.
Threads are daemons so a hung job never keeps the process alive at exit.
"""

from __future__ import annotations

import asyncio
import ctypes
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


Outcome = tuple[bool, Any]  # (True, the call's value) or (False, what it raised)
Call = tuple[
    Callable[..., Any], tuple[Any, ...], "asyncio.Future[Outcome]", asyncio.AbstractEventLoop
]


def _settle(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    # Always a result, never set_exception: a task may raise anything
    # (SystemExit, KeyboardInterrupt, StopIteration...), and some of those
    # must not travel through asyncio's machinery, which lets SystemExit and
    # KeyboardInterrupt stop the whole loop and refuses StopIteration.
    if not future.done():  # not abandoned at its timeout
        future.set_result(outcome)


class _Thread:
    def __init__(self, runner: ThreadRunner, name: str) -> None:
        self.runner = runner
        self.inbox: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.current: asyncio.Future[Outcome] | None = None
        self.abandoned = False  # its call passed its timeout and still runs
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                item = self.inbox.get()
                if item is None:
                    return
                fn, args, future, loop = item
                try:
                    outcome: Outcome = (True, fn(*args))
                except BaseException as exc:  # the task's own error, reported to the loop
                    outcome = (False, exc)
                self._call_ended()
                loop.call_soon_threadsafe(_settle, future, outcome)
                if not self.runner._park(self):
                    return
            except BaseException:
                # An interrupt meant for a call that has just returned landed
                # here instead: this thread is free all the same.
                self._call_ended()
                if not self.runner._park(self):
                    return

    def _call_ended(self) -> None:
        with self.lock:
            self.current = None
            if self.abandoned:
                self.abandoned = False
                self.runner._rejoined()

    def abandon(self, future: asyncio.Future[Outcome], exc_type: type[BaseException]) -> None:
        """Give up on ``future``'s call, which passed its timeout: raise
        ``exc_type`` inside this thread if it still runs it, and count the
        thread as abandoned until the call returns.

        The exception stops Python code; a call blocked in C (a socket read,
        a sleep) only sees it when it returns to Python, and may never.
        """
        with self.lock:
            if self.current is future and self.thread.ident is not None:
                if not self.abandoned:
                    self.abandoned = True
                    self.runner._abandoned_one()
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.thread.ident), ctypes.py_object(exc_type)
                )


class ThreadRunner:
    """Run blocking calls on daemon threads, awaiting them from asyncio.

    >>> runner = ThreadRunner("jobs")                         # doctest: +SKIP
    >>> result = await runner.run(sum, [1, 2, 3])              # doctest: +SKIP
    """

    def __init__(self, name: str, max_idle: int = 8) -> None:
        self.name = name
        self.max_idle = max_idle
        self._idle: list[_Thread] = []
        self._lock = threading.Lock()
        self._count = 0
        self._abandoned = 0
        self._closed = False

    @property
    def abandoned(self) -> int:
        """Threads still running a call that passed its timeout."""
        return self._abandoned

    def _abandoned_one(self) -> None:
        with self._lock:
            self._abandoned += 1

    def _rejoined(self) -> None:
        with self._lock:
            self._abandoned -= 1

    def _park(self, thread: _Thread) -> bool:
        """Back to the idle set; False tells a surplus thread to end."""
        with self._lock:
            if thread in self._idle:
                return True
            if self._closed or len(self._idle) >= self.max_idle:
                return False
            self._idle.append(thread)
            return True

    def submit(self, fn: Callable[..., T], *args: Any) -> tuple[asyncio.Future[Outcome], _Thread]:
        """Start ``fn(*args)`` on an idle thread (or a new one). The future's
        result is ``(True, value)`` or ``(False, exception)``, never an
        exception of its own."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            thread = self._idle.pop() if self._idle else None
            if thread is None:
                self._count += 1
                thread = _Thread(self, f"conveyor-{self.name}-{self._count}")
        with thread.lock:
            thread.current = future
        thread.inbox.put((fn, args, future, loop))
        return future, thread

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a thread; its value, or what it raised, raised here."""
        future, _ = self.submit(fn, *args)
        ok, value = await future
        if not ok:
            raise value
        result: T = value
        return result

    def close(self) -> None:
        """Let idle threads end; busy ones end when their call returns."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for thread in idle:
            thread.inbox.put(None)
