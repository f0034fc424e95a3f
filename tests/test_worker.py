"""The worker in-process, on the stores a single process can share."""

import asyncio
import logging
import threading
import time

import pytest

from conveyor import ConfigurationError, Conveyor, FakeClock, StoreUnavailable
from conveyor.brokers.base import NewJob
from conveyor.testing import drain
from conveyor.worker import Worker
from helpers import jobs_reach_an_idle_worker, wait_until
from servers import isolated_redis_url


@pytest.fixture(params=["memory", "sqlite"])
def app(request, tmp_path):
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/worker.db"
    app = Conveyor(url)
    yield app
    app.close()


def run_worker(app, **options):
    options.setdefault("burst", True)
    options.setdefault("concurrency", 1)
    worker = Worker(app, **options)
    worker.run(install_signals=False)
    return worker


def test_priority_then_fifo_then_queue_order(app):
    ran = []

    @app.task(name="record")
    def record(label):
        ran.append(label)

    app.enqueue("record", ["low-1"], queue="default", priority=1)
    app.enqueue("record", ["high"], queue="default", priority=9)
    app.enqueue("record", ["low-2"], queue="default", priority=1)
    app.enqueue("record", ["critical"], queue="critical")
    run_worker(app, queues=["critical", "default"])
    assert ran == ["critical", "high", "low-1", "low-2"]


@pytest.mark.parametrize(
    ("backoff", "waits"),
    [("fixed", [2, 2]), ("linear", [2, 4]), ("exponential", [2, 4]), ("fibonacci", [2, 2])],
)
def test_each_backoff_kind_schedules_the_retry(backoff, waits, tmp_path):
    clock = FakeClock()
    app = Conveyor(f"sqlite:///{tmp_path}/b.db", clock=clock)
    runs = []

    @app.task(name="flaky", attempts=3, backoff=backoff, backoff_delay=2)
    def flaky():
        runs.append(clock.now())
        if len(runs) < 3:
            raise RuntimeError(f"run {len(runs)} fails")
        return "finally"

    job = flaky.enqueue()
    for wait in waits:
        run_worker(app)  # fails once, then the retry is not due
        job.refresh()
        assert job.state == "delayed"
        assert job.record.run_at == clock.now() + wait
        clock.advance(wait)
    run_worker(app)
    assert job.result(timeout=1) == "finally"
    assert job.refresh().attempts == 3
    assert [e["attempt"] for e in job.errors] == [1, 2]


def test_callable_backoff_and_backoff_max(tmp_path):
    clock = FakeClock()
    app = Conveyor("memory://", clock=clock)

    @app.task(name="t", attempts=2, backoff=lambda n: 100 * n, backoff_max=30)
    def t():
        raise RuntimeError("x")

    job = t.enqueue()
    run_worker(app)
    assert job.refresh().record.run_at == clock.now() + 30


def test_dead_letter_keeps_every_attempt(app):
    @app.task(name="broken", attempts=3, backoff="fixed", backoff_delay=0.01)
    def broken():
        raise ValueError("still broken")

    job = broken.enqueue()
    deadline = time.monotonic() + 5
    while job.refresh().state != "dead" and time.monotonic() < deadline:
        run_worker(app)
    assert job.state == "dead" and job.attempts == 3
    assert [(e["attempt"], e["type"], e["message"]) for e in job.errors] == [
        (n, "ValueError", "still broken") for n in (1, 2, 3)
    ]
    assert all("Traceback" in e["traceback"] for e in job.errors)


def test_async_timeout_frees_the_slot(app):
    @app.task(name="slow", timeout=0.1, attempts=1)
    async def slow():
        await asyncio.sleep(30)

    @app.task(name="quick")
    async def quick():
        return "quick"

    hung, after = slow.enqueue(), quick.enqueue()
    run_worker(app)
    assert after.result(timeout=1) == "quick"
    assert hung.refresh().state == "dead"
    assert hung.errors[-1]["type"] == "JobTimeout"


def test_a_tasks_own_timeout_error_is_not_taken_for_the_deadline(app):
    @app.task(name="own", timeout=30, attempts=1)
    async def own():
        raise TimeoutError("upstream API timed out")

    job = own.enqueue()
    run_worker(app)
    assert job.refresh().errors[-1]["type"] == "TimeoutError"


def test_corrupt_payload_goes_dead_and_the_worker_goes_on(app):
    @app.task(name="fine")
    def fine():
        return 1

    now = app.clock.now()
    app.broker.enqueue([NewJob(id="corrupt", task="fine", queue="default", payload="{nope")])
    good = fine.enqueue()
    run_worker(app)
    bad = app.get_job("corrupt")
    assert bad.state == "dead" and bad.errors[-1]["type"] == "CorruptJob"
    assert bad.record.created_at >= now
    assert good.result(timeout=1) == 1


def test_unserialisable_result_fails_the_run_clearly(app):
    @app.task(name="sets", attempts=1)
    def sets():
        return {1, 2}

    job = sets.enqueue()
    run_worker(app)
    error = job.refresh().errors[-1]
    assert error["type"] == "ResultNotSerializable"
    assert "the return value has type set" in error["message"]


def test_graceful_stop_lets_the_active_job_finish(app):
    started = threading.Event()

    @app.task(name="work")
    def work():
        started.set()
        time.sleep(0.3)
        return "done"

    job = work.enqueue()
    worker = Worker(app, concurrency=1, grace=5)

    async def main():
        run = asyncio.create_task(worker.run_async())
        await asyncio.to_thread(started.wait, 5)
        worker.stop()
        return await run

    assert asyncio.run(main()) == 0
    assert job.result(timeout=1) == "done"


def test_stop_after_grace_releases_without_spending_an_attempt(app):
    started = threading.Event()

    @app.task(name="long")
    async def long():
        started.set()
        await asyncio.sleep(30)

    job = long.enqueue()
    worker = Worker(app, concurrency=1, grace=0.1)

    async def main():
        run = asyncio.create_task(worker.run_async())
        await asyncio.to_thread(started.wait, 5)
        worker.stop()
        return await run

    assert asyncio.run(main()) == 0
    job.refresh()
    assert (job.state, job.attempts) == ("waiting", 0)


def test_leases_are_renewed_while_a_long_job_runs(app):
    runs = []

    @app.task(name="long")
    async def long():
        runs.append(1)
        await asyncio.sleep(1.0)
        return "once"

    job = long.enqueue()
    worker = Worker(app, concurrency=1, lease=0.3, burst=True)

    async def main():
        run = asyncio.create_task(worker.run_async())
        for _ in range(10):  # another worker's maintenance, rescuing stalled jobs meanwhile
            await asyncio.sleep(0.1)
            assert await asyncio.to_thread(app.broker.recover, 3) == []
        await run

    asyncio.run(main())
    assert job.result(timeout=1) == "once"
    assert runs == [1]


def test_retention_trims_completed_jobs_by_count(app):
    app.queue("default", keep_completed=2)

    @app.task(name="t")
    def t(n):
        return n

    jobs = [t.enqueue(n) for n in range(5)]
    worker = run_worker(app)
    asyncio.run(worker.maintain())
    assert app.stats()["default"]["completed"] == 2
    assert [j.id for j in app.jobs(state="completed")] == [jobs[3].id, jobs[4].id]


def test_drain_helper_counts_runs(app):
    @app.task(name="t")
    def t():
        return 1

    for _ in range(3):
        t.enqueue()
    assert drain(app) == 3


@pytest.fixture(params=["memory", "sqlite", "redis"])
def any_app(request, tmp_path):
    if request.param == "redis":
        with isolated_redis_url() as url:
            app = Conveyor(url)
            yield app
            app.close()
        return
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/worker.db"
    app = Conveyor(url)
    yield app
    app.close()


@pytest.mark.parametrize("concurrency", [1, 2])
def test_an_idle_worker_takes_jobs_arriving_one_by_one(any_app, concurrency):
    """Each job reaches an idle worker through its idle wait (every free slot
    reserved for it), including right after a job ended inside that path."""
    worker = jobs_reach_an_idle_worker(any_app, concurrency)
    assert (worker.processed, worker.failed) == (6, 2)


@pytest.mark.parametrize(("loop", "module"), [("auto", "uvloop"), ("asyncio", "asyncio")])
def test_the_worker_runs_on_uvloop_unless_told_otherwise(app, loop, module):
    @app.task(name="which")
    async def which():
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    job = which.enqueue()
    Worker(app, concurrency=1, burst=True).run(install_signals=False, loop=loop)
    assert job.result(timeout=1) == module


def test_an_unknown_event_loop_is_a_clear_error(app):
    with pytest.raises(ConfigurationError, match="loop must be one of auto, asyncio, uvloop"):
        Worker(app, burst=True).run(install_signals=False, loop="trio")


def test_an_idle_wait_that_could_not_start_holds_no_slot(app, monkeypatch):
    """The store failing as the idle wait is sent (it went away between two
    calls) must leave every slot free: the worker goes on once it is back."""
    failures = []
    wait_and_claim = app.broker.wait_and_claim

    def flaky(*args):
        if not failures:
            failures.append(1)
            raise StoreUnavailable("the store went away")
        return wait_and_claim(*args)

    monkeypatch.setattr(app.broker, "wait_and_claim", flaky)

    @app.task(name="later")
    async def later():
        return "ran"

    worker = Worker(app, concurrency=1, poll_interval=0.2)

    async def main():
        run = asyncio.create_task(worker.run_async())
        try:
            await asyncio.to_thread(wait_until, lambda: failures, 5, "the failed send")
            job = later.enqueue()
            return await asyncio.to_thread(job.result, 5)
        finally:
            worker.stop()
            await run

    assert asyncio.run(main()) == "ran"


def test_a_running_worker_leaves_a_paused_queue_alone_until_it_is_resumed(store_app):
    """Paused while the worker idles: the other queue's jobs still run, the
    paused one's wait (nothing lost); resumed, they run at once, without
    the worker polling for them (its poll interval is far longer than the test)."""
    ran: list[str] = []

    @store_app.task(name="note")
    def note(label: str) -> None:
        ran.append(label)

    store_app.pause("bulk")
    worker = Worker(store_app, queues=["bulk", "default"], concurrency=2, poll_interval=60.0)

    async def main() -> None:
        run = asyncio.create_task(worker.run_async())
        try:
            held = [note.options(queue="bulk").enqueue(f"bulk-{i}") for i in range(3)]
            other = note.enqueue("default-0")
            await asyncio.to_thread(other.result, 10)
            assert [job.refresh().state for job in held] == ["waiting"] * 3
            assert store_app.resume("bulk")
            for job in held:
                await asyncio.to_thread(job.result, 10)
        finally:
            worker.stop()
            await run

    asyncio.run(main())
    assert ran == ["default-0", "bulk-0", "bulk-1", "bulk-2"]


def test_a_burst_worker_on_a_paused_queue_stops_and_says_why(store_app, caplog):
    @store_app.task(name="noop")
    def noop() -> None:
        pass

    job = noop.enqueue()
    store_app.pause("default")
    store_app.pause("elsewhere")  # not served here: not mentioned
    with caplog.at_level(logging.WARNING, logger="conveyor.worker"):
        assert drain(store_app) == 0
    assert job.refresh().state == "waiting"
    warned = [r.getMessage() for r in caplog.records if "paused" in r.getMessage()]
    assert warned == ["queue(s) default paused: their jobs wait until `conveyor resume`"]
    store_app.resume("default")
    caplog.clear()
    assert drain(store_app) == 1
    assert not [r for r in caplog.records if "paused" in r.getMessage()]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda app: app.pause(""), "queue must be a queue name"),
        (lambda app: app.resume(5), "queue must be a queue name"),
        (lambda app: app.purge("default", states=["active"]), "never active"),
        (lambda app: app.purge("default", states="finished"), "not 'finished'"),
        (lambda app: app.purge("default", states=[]), "no state at all"),
    ],
)
def test_pause_resume_and_purge_refuse_bad_input(call, message):
    app = Conveyor("memory://")
    job = app.enqueue("anything")
    with pytest.raises(ConfigurationError, match=message):
        call(app)
    assert app.get_job(job.id).state == "waiting" and app.paused() == set()
