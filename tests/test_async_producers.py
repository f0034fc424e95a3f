"""Producers in async code: enqueue and wait for results without blocking the
event loop (a FastAPI handler's, or an async task's inside a worker)."""

from __future__ import annotations

import asyncio
import time

import pytest

from conveyor import ConfigurationError, JobFailed
from conveyor.testing import inline
from conveyor.worker import Worker


def test_enqueue_async_stores_the_same_jobs_as_enqueue(store_app):
    app = store_app

    @app.task(name="add", queue="maths")
    def add(x: int, y: int) -> int:
        return x + y

    async def produce():
        return [
            await add.enqueue_async(1, 2),
            await add.options(priority=5, job_id="five").enqueue_async(2, 3),
            await app.enqueue_async("add", [3, 4], queue="other", delay=60),
            *await app.enqueue_many_async([add.s(5, 6), add.options(priority=1).s(7, 8)]),
        ]

    jobs = asyncio.run(produce())
    assert [(j.task, j.queue, j.args, j.state, j.priority) for j in jobs] == [
        ("add", "maths", [1, 2], "waiting", 0),
        ("add", "maths", [2, 3], "waiting", 5),
        ("add", "other", [3, 4], "delayed", 0),
        ("add", "maths", [5, 6], "waiting", 0),
        ("add", "maths", [7, 8], "waiting", 1),
    ]
    assert jobs[1].id == "five"
    assert asyncio.run(app.enqueue_async("add", [0, 0], job_id="five")) == jobs[1]  # dedup
    with pytest.raises(ConfigurationError, match="delay must be a number of seconds"):
        asyncio.run(app.enqueue_async("add", [1, 1], delay="soon"))
    assert app.stats()["maths"]["waiting"] == 4


def test_the_loop_runs_while_an_async_enqueue_waits_for_the_store(store_app, monkeypatch):
    app = store_app
    slow = app.broker.enqueue

    def slow_store(jobs):  # a store that takes 0.3 s to answer (a far-away Redis, say)
        time.sleep(0.3)
        return slow(jobs)

    monkeypatch.setattr(app.broker, "enqueue", slow_store)

    async def main() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        await app.enqueue_async("t", [1])
        ticker.cancel()
        return ticks

    assert asyncio.run(main()) >= 10  # the loop went on ticking the whole time


def test_an_async_task_awaits_its_childs_result_inside_the_same_worker(store_app):
    """With ``job.result()`` the parent froze its worker's loop, so the child
    (claimed by the same worker) never ran."""
    app = store_app

    @app.task(name="child")
    async def child(x: int) -> int:
        return x * 10

    @app.task(name="parent")
    async def parent(x: int) -> int:
        job = await child.enqueue_async(x)
        return await job.result_async(timeout=10) + 1

    job = parent.enqueue(4)
    worker = Worker(app, concurrency=2, burst=True, poll_interval=0.05)
    worker.run(install_signals=False)
    assert job.result(timeout=1) == 41


def test_result_async_raises_like_result(store_app):
    app = store_app

    @app.task(name="fails", attempts=1)
    async def fails() -> None:
        raise ValueError("no")

    failing = fails.enqueue()
    Worker(app, concurrency=1, burst=True).run(install_signals=False)

    async def main():
        with pytest.raises(JobFailed, match="ValueError: no"):
            await failing.result_async(timeout=1)
        later = await app.enqueue_async("fails")
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"is still waiting after 0\.2 s"):
            await later.result_async(timeout=0.2)
        return time.monotonic() - started

    assert 0.2 <= asyncio.run(main()) < 2


def test_result_inside_a_running_loop_is_refused_instead_of_freezing_it(store_app):
    app = store_app

    async def main():
        job = await app.enqueue_async("never-run")
        with pytest.raises(ConfigurationError, match=r"use `await job.result_async\(\)`"):
            job.result(timeout=5)

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 2  # refused at once, not after the timeout


def test_inline_runs_jobs_in_async_tests():
    from conveyor import Conveyor

    app = Conveyor("memory://")

    @app.task(name="add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="double")
    def double(x: int) -> int:
        return 2 * x

    async def test_body():
        with inline(app):
            job = await add.enqueue_async(2, 3)
            assert job.state == "completed"
            assert await job.result_async() == 5
            assert job.result() == 5  # ended already: no wait, no refusal
            # a plain enqueue inside async code drains on a thread of its own
            assert double.enqueue(21).result() == 42
            many = await app.enqueue_many_async([add.s(1, 1), double.s(4)])
            assert [await j.result_async() for j in many] == [2, 8]

    asyncio.run(test_body())
