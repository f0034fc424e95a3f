"""Daemon threads that report back to an asyncio loop.

The store's door (``brokers/async_store.py``) runs the idle wait for work,
a blocking store call, on such a thread, so the event loop never blocks.
Threads are daemons: a wait still inside the store when the interpreter
exits never keeps the process alive. (Plain-function jobs have threads of
their own: ``worker/slots.py``.)
"""

from __future__ import annotations

import asyncio
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
    # Always a result, never set_exception: what a call raises (even
    # SystemExit or StopIteration) must not travel through asyncio's own
    # machinery, which lets some of them stop the whole loop.
    if not future.done():  # not cancelled meanwhile
        future.set_result(outcome)


class _Thread:
    def __init__(self, runner: ThreadRunner, name: str) -> None:
        self.runner = runner
        self.inbox: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        while (item := self.inbox.get()) is not None:
            fn, args, future, loop = item
            try:
                outcome: Outcome = (True, fn(*args))
            except BaseException as exc:  # reported to the loop, raised there
                outcome = (False, exc)
            loop.call_soon_threadsafe(_settle, future, outcome)
            if not self.runner._park(self):
                return


class ThreadRunner:
    """Run blocking calls on daemon threads, awaiting them from asyncio.

    >>> runner = ThreadRunner("wait")                          # doctest: +SKIP
    >>> claimed = await runner.run(broker.wait_and_claim, ...)  # doctest: +SKIP
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

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a thread; its value, or what it raised, raised here.
        Cancelling the await lets the thread finish the call on its own."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        with self._lock:
            thread = self._idle.pop() if self._idle else None
            if thread is None:
                self._count += 1
                thread = _Thread(self, f"conveyor-{self.name}-{self._count}")
        thread.inbox.put((fn, args, future, loop))
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
