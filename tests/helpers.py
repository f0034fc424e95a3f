"""Small helpers the end-to-end tests share."""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import Callable
from typing import Any

from conveyor import Conveyor
from conveyor.worker import Worker


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str = "", interval: float = 0.02
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(interval)


def sent(broker: Any, plan: Any) -> Any:
    """A pipeline a Redis broker planned for an event loop (``plan_wait``,
    ``plan_complete_and_claim``), sent now on a connection of its own, as
    the worker's door does over TLS: a ``SentPipeline``; None where the
    broker planned none."""
    return None if plan is None else broker.topology.send_pipeline(plan)


def poll_until_done(pending: Any, seconds: float = 3.0) -> Any:
    """What an event loop does with a sent ``SentPipeline``: poll whenever its
    socket is readable, until the wait is over; fail after ``seconds``."""
    poller = select.poll()
    poller.register(pending.fileno(), select.POLLIN)
    deadline = time.monotonic() + seconds
    while (claimed := pending.poll()) is None:
        if time.monotonic() >= deadline:
            raise AssertionError(f"the wait did not end within {seconds:g}s")
        poller.poll(100)
    return claimed


def jobs_reach_an_idle_worker(app: Conveyor, concurrency: int) -> Worker:
    """Run a worker on ``app`` and hand it jobs one at a time, each once it is
    idle again (so each goes through its idle wait), with a failing job
    beside every third; every job must end. Returns the stopped worker."""

    @app.task(name="echo")
    async def echo(n: int) -> int:
        return n

    @app.task(name="boom", attempts=1)
    async def boom() -> None:
        raise ValueError("no")

    worker = Worker(app, concurrency=concurrency, poll_interval=5.0)

    async def main() -> None:
        run = asyncio.create_task(worker.run_async())
        try:
            for n in range(6):
                await asyncio.sleep(0.05)  # the worker is idle again
                failing = boom.enqueue() if n % 3 == 2 else None
                job = echo.enqueue(n)
                assert await asyncio.to_thread(job.result, 5) == n
                if failing is not None:
                    dead = lambda f=failing: f.refresh() or f.state == "dead"  # noqa: E731
                    await asyncio.to_thread(wait_until, dead, 5, "the failing job")
        finally:
            worker.stop()
            await run

    asyncio.run(main())
    return worker
