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


def _settle(future: asyncio.Future, ok: bool, value: Any) -> None:
    if future.done():  # timed out and abandoned already
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class _Thread:
    def __init__(self, runner: ThreadRunner, name: str) -> None:
        self.runner = runner
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.current: asyncio.Future | None = None
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
                    outcome = (True, fn(*args))
                except BaseException as exc:  # the task's own error, reported to the loop
                    outcome = (False, exc)
                with self.lock:
                    self.current = None
                loop.call_soon_threadsafe(_settle, future, *outcome)
                if not self.runner._park(self):
                    return
            except BaseException:
                continue

    def interrupt(self, future: asyncio.Future, exc_type: type[BaseException]) -> None:
        """Raise ``exc_type`` inside this thread if it still runs ``future``'s call.

        Works for Python code; a call blocked in C (a socket read, a sleep)
        only sees it when it returns to Python.
        """
        with self.lock:
            if self.current is future and self.thread.ident is not None:
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
        self._closed = False

    def _park(self, thread: _Thread) -> bool:
        """Back to the idle set; False tells a surplus thread to end."""
        with self._lock:
            if self._closed or len(self._idle) >= self.max_idle:
                return False
            self._idle.append(thread)
            return True

    def submit(self, fn: Callable[..., T], *args: Any) -> tuple[asyncio.Future, _Thread]:
        """Start ``fn(*args)`` on an idle thread (or a new one)."""
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
        future, _ = self.submit(fn, *args)
        return await future

    def close(self) -> None:
        """Let idle threads end; busy ones end when their call returns."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for thread in idle:
            thread.inbox.put(None)
