"""Helpers for unit-testing code that uses conveyor.

Two ways to run your tasks in a test, both through the real worker code:

``drain(app)`` runs every ready job now, in order, and returns when none is
left (with ``skip_delays=True`` delayed jobs and retries run at once instead
of waiting, and so do jobs a rate limit or a concurrency cap would hold
back: the app's limits are lifted while it runs)::

    app = Conveyor("memory://")
    signup(user)                      # your code enqueues a welcome email
    assert drain(app, skip_delays=True) == 1
    assert outbox == ["welcome"]

``inline(app)`` makes every enqueue run its job before returning, like
Celery's eager mode, so ``job.result()`` is there at once::

    with inline(app):
        job = add.enqueue(2, 3)
    assert job.result() == 5

and in async tests::

    with inline(app):
        job = await add.enqueue_async(2, 3)
    assert await job.result_async() == 5
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from conveyor.brokers.base import NO_CONTROLS
from conveyor.errors import ConfigurationError
from conveyor.worker import Worker

if TYPE_CHECKING:
    from conveyor.app import Conveyor


async def drain_async(
    app: Conveyor, queues: Sequence[str] | None = None, *, skip_delays: bool = False
) -> int:
    """``drain`` for tests that already run an event loop. Returns jobs run."""
    names = list(queues) if queues else app.queue_names()
    ran = 0
    app._draining = True
    if skip_delays:  # nor wait for rate windows and caps: the limits are lifted
        app.broker.controls = NO_CONTROLS
    try:
        while True:
            worker = Worker(app, names, concurrency=1, burst=True, poll_interval=0.01)
            await worker.run_async()
            ran += worker.processed + worker.failed
            if not skip_delays:
                return ran
            promoted = sum(app.broker.promote(None, queue=name) for name in names)
            if not promoted:
                return ran
    finally:
        app._draining = False
        app.broker.controls = app.controls


def drain(app: Conveyor, queues: Sequence[str] | None = None, *, skip_delays: bool = False) -> int:
    """Run every ready job of ``queues`` (default: all the app's) until none is
    left, one at a time in claim order. Returns how many runs it made."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(drain_async(app, queues, skip_delays=skip_delays))
    raise ConfigurationError(
        "drain() was called inside a running event loop: use `await drain_async(app)`"
    )


@contextlib.contextmanager
def inline(app: Conveyor) -> Iterator[Conveyor]:
    """Within the block, every enqueue runs its job (and any job it enqueues)
    before returning; retries run at once, and rate limits and concurrency
    caps do not hold jobs back (as Celery's eager mode). Works in sync and async tests:
    ``await task.enqueue_async(...)`` drains on the caller's loop, and a
    plain ``enqueue`` called inside a running loop drains on a thread of its
    own (the loop cannot be re-entered)."""
    previous = app._after_enqueue, app._after_enqueue_async

    def queues_with(queue: str) -> list[str]:
        names = app.queue_names()
        return names if queue in names else [*names, queue]

    def run_now(queue: str) -> None:
        if app._draining:  # a job enqueued by a running job joins the running drain
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            drain(app, queues_with(queue), skip_delays=True)
            return
        failure: list[BaseException] = []

        def drain_here() -> None:
            try:
                drain(app, queues_with(queue), skip_delays=True)
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=drain_here, name="conveyor-inline")
        thread.start()
        thread.join()
        if failure:
            raise failure[0]

    async def run_now_async(queue: str) -> None:
        if not app._draining:
            await drain_async(app, queues_with(queue), skip_delays=True)

    app._after_enqueue, app._after_enqueue_async = run_now, run_now_async
    logging.getLogger("conveyor.worker").disabled = True
    try:
        yield app
    finally:
        app._after_enqueue, app._after_enqueue_async = previous
        logging.getLogger("conveyor.worker").disabled = False
