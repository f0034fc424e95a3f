"""The plain-function path: slot threads, jobs claimed ahead, batched writes.

What the sync path promises beside its speed: outcomes still come back when
a slot thread's run fails in conveyor's own code, a job that never returns
holds one slot and no more, jobs claimed ahead and not started go back on
shutdown without spending an attempt, a job is claimed ahead only while jobs
are short, and a busy worker writes outcomes in batches (fewer store calls
than jobs).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.worker import EXIT_OK, Worker
from conveyor.worker import slots as slots_module
from conveyor.worker.run import SHORT_JOB


def quick_app(url: str = "memory://") -> Conveyor:
    app = Conveyor(url)

    @app.task(name="quick")
    def quick(n: int) -> int:
        return n

    return app


def test_a_slot_run_that_fails_in_conveyors_own_code_still_ends_its_job(store_app, monkeypatch):
    """As if the slot thread's own code broke (or an interrupt meant for
    another job landed in it): the job gets an outcome, the thread lives on,
    the other jobs run."""
    app = store_app

    @app.task(name="quick", attempts=1)
    def quick(n: int) -> int:
        return n

    real = slots_module.run_sync_job
    broken: list[str] = []

    def breaks_once(app_: Conveyor, record: Any, prepared: Any) -> Any:
        if not broken:
            broken.append(record.id)
            raise RuntimeError("a bug in the slot thread")
        return real(app_, record, prepared)

    monkeypatch.setattr(slots_module, "run_sync_job", breaks_once)
    jobs = [quick.enqueue(n) for n in range(20)]
    worker = Worker(app, concurrency=3, burst=True)
    assert worker.run(install_signals=False) == EXIT_OK
    states = {job.id: job.refresh().state for job in jobs}
    assert states.pop(broken[0]) == "dead"
    assert app.get_job(broken[0]).errors[0]["type"] == "InternalError"
    assert set(states.values()) == {"completed"}
    assert (worker.processed, worker.failed) == (19, 1)


def test_a_job_that_never_returns_holds_one_slot_beside_fast_ones(store_app):
    app = store_app
    release = threading.Event()

    @app.task(name="forever")
    def forever() -> None:
        release.wait(30)

    @app.task(name="quick")
    def quick(n: int) -> int:
        return n

    stuck = forever.enqueue()
    fast = [quick.enqueue(n) for n in range(60)]
    worker = Worker(app, concurrency=3, grace=0.1, poll_interval=0.05)
    before = threading.active_count()

    async def main() -> int:
        run = asyncio.create_task(worker.run_async())
        deadline = time.monotonic() + 20
        while not all(j.refresh().state == "completed" for j in fast):
            assert time.monotonic() < deadline, "the fast jobs did not all run"
            await asyncio.sleep(0.02)
        threads = threading.active_count() - before
        worker.stop()
        code = await run
        assert threads <= 3 + 2  # the slots, the store thread and the wait's
        return code

    try:
        assert asyncio.run(main()) == EXIT_OK
    finally:
        release.set()
    stuck.refresh()
    assert (stuck.state, stuck.attempts) == ("waiting", 0)  # given back, no attempt spent


def test_jobs_claimed_ahead_and_not_started_go_back_on_shutdown(tmp_path):
    app = quick_app(f"sqlite:///{tmp_path}/ahead.db")
    gate = threading.Event()

    @app.task(name="gated")
    def gated(n: int) -> int:
        gate.wait(10)
        return n

    warm = [app.enqueue("quick", [n]) for n in range(40)]  # short: claiming ahead starts
    held = [gated.enqueue(n) for n in range(12)]
    worker = Worker(app, concurrency=2, grace=0.1, poll_interval=0.05)

    async def main() -> None:
        run = asyncio.create_task(worker.run_async())
        deadline = time.monotonic() + 10
        while sum(j.refresh().state == "active" for j in held) < 3:  # more than the slots
            assert time.monotonic() < deadline, "nothing was claimed ahead"
            await asyncio.sleep(0.01)
        worker.stop()
        await asyncio.sleep(0.05)
        gate.set()
        await run

    asyncio.run(main())
    assert all(j.refresh().state == "completed" for j in warm)
    states = [j.refresh().state for j in held]
    assert set(states) <= {"completed", "waiting"}, states
    assert all(j.attempts == 0 for j in held if j.state == "waiting")
    assert states.count("waiting") >= 1  # those claimed ahead went back unstarted
    app.close()


def test_jobs_are_claimed_ahead_only_while_they_are_short():
    app = Conveyor("memory://")

    @app.task(name="slow")
    def slow(n: int) -> int:
        time.sleep(SHORT_JOB * 3)
        return n

    jobs = [slow.enqueue(n) for n in range(4)]
    Worker(app, concurrency=1, burst=True).run(install_signals=False)
    runs = sorted((j.refresh().record.started_at, j.record.finished_at) for j in jobs)
    for (_, finished), (started, _) in itertools.pairwise(runs):
        assert started >= finished  # each claimed only once the slot was free


def test_a_busy_worker_writes_outcomes_in_batches(monkeypatch):
    """Short plain-function jobs: fewer store calls than jobs, each one
    acknowledging several jobs and claiming several more."""
    app = quick_app()
    calls: list[tuple[int, int]] = []
    complete_and_claim = app.broker.complete_and_claim

    def counted(done: Any, queues: Any, limit: int, *rest: Any) -> Any:
        calls.append((len(done), limit))
        return complete_and_claim(done, queues, limit, *rest)

    monkeypatch.setattr(app.broker, "complete_and_claim", counted)
    jobs = app.enqueue_many(app.tasks["quick"].s(n) for n in range(400))
    Worker(app, concurrency=10, burst=True).run(install_signals=False)
    assert all(j.refresh().state == "completed" for j in jobs)
    assert sum(done for done, _ in calls) == 400
    assert len(calls) < 400 / 3, f"{len(calls)} store calls for 400 jobs"


@pytest.mark.parametrize("concurrency", [1, 4])
def test_plain_and_async_jobs_share_the_slots(store_app, concurrency):
    app = store_app
    running = {"now": 0, "most": 0}
    lock = threading.Lock()

    def enter() -> None:
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])

    def leave() -> None:
        with lock:
            running["now"] -= 1

    @app.task(name="plain")
    def plain(n: int) -> int:
        enter()
        time.sleep(0.01)
        leave()
        return n

    @app.task(name="coroutine")
    async def coroutine(n: int) -> int:
        enter()
        await asyncio.sleep(0.01)
        leave()
        return n

    jobs = [plain.enqueue(n) if n % 2 else coroutine.enqueue(n) for n in range(40)]
    Worker(app, concurrency=concurrency, burst=True).run(install_signals=False)
    assert [j.result(timeout=1) for j in jobs] == list(range(40))
    assert running["most"] <= concurrency
