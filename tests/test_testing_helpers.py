"""conveyor.testing: what users unit-test their tasks with."""

import asyncio

import pytest

from conveyor import ConfigurationError, Conveyor, JobFailed
from conveyor.testing import drain, drain_async, inline


@pytest.fixture
def app():
    return Conveyor("memory://")


def test_drain_runs_ready_jobs_in_order_and_leaves_delayed_ones(app):
    ran = []

    @app.task(name="t")
    def t(n):
        ran.append(n)

    t.enqueue(1)
    t.enqueue(2)
    later = t.options(delay=60).enqueue(3)
    assert drain(app) == 2
    assert ran == [1, 2]
    assert later.refresh().state == "delayed"
    assert drain(app, skip_delays=True) == 1
    assert ran == [1, 2, 3]


def test_drain_with_skip_delays_runs_retries_at_once(app):
    calls = []

    @app.task(name="flaky", attempts=3, backoff_delay=3600)
    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("not yet")
        return "ok"

    job = flaky.enqueue()
    assert drain(app, skip_delays=True) == 3
    assert job.result(timeout=1) == "ok"


def test_drain_async_inside_a_running_loop(app):
    @app.task(name="t")
    async def t():
        return "async ok"

    job = t.enqueue()

    async def main():
        with pytest.raises(ConfigurationError, match="await drain_async"):
            drain(app)
        return await drain_async(app)

    assert asyncio.run(main()) == 1
    assert job.result(timeout=1) == "async ok"


def test_inline_runs_each_job_before_enqueue_returns(app):
    @app.task(name="add")
    def add(x, y):
        return x + y

    @app.task(name="boom", attempts=2)
    def boom():
        raise ValueError("nope")

    with inline(app):
        job = add.enqueue(2, 3)
        assert job.state == "completed"
        assert job.result() == 5
        failed = boom.enqueue()
        assert failed.state == "dead" and failed.attempts == 2
        with pytest.raises(JobFailed, match="nope"):
            failed.result()
    assert add.enqueue(1, 1).state == "waiting"  # back to normal outside the block


def test_inline_runs_jobs_enqueued_by_jobs(app):
    seen = []

    @app.task(name="child", queue="other")
    def child(n):
        seen.append(n)

    @app.task(name="parent")
    def parent():
        child.enqueue(7)
        return "parent done"

    with inline(app):
        assert parent.enqueue().result() == "parent done"
    assert seen == [7]
