"""The worker's own timers run on the app's clock, and its errors are told apart.

With a ``FakeClock`` nothing here sleeps for real: lease renewal, the
maintenance that recovers a dead worker's job and the back-off while the store
is unreachable each fire when the test advances the clock, and the test waits
for what they do (a lease pushed back, a job run), never for time to pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor, FakeClock, StoreMisconfigured, StoreUnavailable
from conveyor.worker import EXIT_INTERNAL_ERROR, EXIT_OK, EXIT_STORE_REFUSED, Worker

LEASE = 30.0


async def until(fact: Callable[[], Any], what: str, seconds: float = 10.0) -> Any:
    """Let the loop run until ``fact()`` holds (an observable fact, not a time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not (value := fact()):
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)
    return value


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(clock: FakeClock) -> Conveyor:
    return Conveyor("memory://", clock=clock)


def test_leases_are_renewed_on_the_apps_clock(app, clock):
    release = asyncio.Event()

    @app.task(name="long")
    async def long() -> str:
        await release.wait()
        return "done"

    job = long.enqueue()
    worker = Worker(app, concurrency=1, lease=LEASE, burst=True)

    async def main() -> int:
        run = asyncio.create_task(worker.run_async())
        await until(lambda: job.refresh().state == "active", "the job to start")
        first = job.record.lease_expires
        assert first == clock.now() + LEASE
        clock.advance(LEASE / 3 + 1)  # a renewal is due
        await until(lambda: job.refresh().record.lease_expires != first, "a renewal")
        assert job.record.lease_expires == clock.now() + LEASE
        release.set()
        return await run

    assert asyncio.run(main()) == EXIT_OK
    assert job.result(timeout=0) == "done"


@pytest.mark.parametrize("written_meanwhile", [True, False])
def test_a_lease_is_reported_lost_only_while_its_job_is_still_held(
    app, clock, caplog, monkeypatch, written_meanwhile
):
    """The renewal and the write of a finished job's outcome run side by side:
    a job completed while the renewal was on its way is not news. A lease
    that really went to another worker is."""
    from conveyor.brokers.base import Lease
    from conveyor.worker.control import Control
    from conveyor.worker.leases import LeaseKeeper

    app.enqueue("anything", args=[1])
    [record] = app.broker.claim(["default"], 1, LEASE, "here")
    lease = Lease(record.id, record.lease_token or "")
    held = [lease]
    store = app.broker.async_store()
    extend = store.extend

    async def extend_after_a_race(leases: list[Lease], seconds: float) -> list[str]:
        if written_meanwhile:  # the fetch loop wrote the outcome first
            assert app.broker.complete([(lease, "null")]) == [True]
            held.clear()
        else:  # the lease expired and another worker took the job
            clock.advance(LEASE + 1)
            assert app.broker.recover(max_stalled=5)
            assert app.broker.claim(["default"], 1, LEASE, "elsewhere")
        return await extend(leases, seconds)

    monkeypatch.setattr(store, "extend", extend_after_a_race)
    sleeps = []
    sleep = clock.sleep

    async def counted_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await sleep(seconds)

    monkeypatch.setattr(clock, "sleep", counted_sleep)
    keeper = LeaseKeeper(store, clock, LEASE, lambda: list(held), Control())

    async def main() -> None:
        renewing = asyncio.create_task(keeper.run())
        await until(lambda: sleeps, "the keeper to sleep")
        clock.advance(LEASE / 3 + 1)
        await until(lambda: len(sleeps) == 2, "the renewal to be over (the next sleep)")
        renewing.cancel()

    with caplog.at_level(logging.WARNING, logger="conveyor.worker"):
        asyncio.run(main())
    warned = [r.getMessage() for r in caplog.records if "lost the lease" in r.getMessage()]
    assert warned == (
        []
        if written_meanwhile
        else [f"lost the lease on job {record.id}: another worker may run it"]
    )
    store.close()


def test_a_dead_workers_job_is_recovered_when_the_clock_says_so(app, clock):
    @app.task(name="quick")
    async def quick() -> str:
        return "ran"

    job = quick.enqueue()
    assert len(app.broker.claim(["default"], 1, LEASE, "a-worker-that-died")) == 1
    worker = Worker(app, concurrency=1, lease=LEASE, maintenance_interval=5.0)

    async def main() -> None:
        run = asyncio.create_task(worker.run_async())
        await asyncio.sleep(0.05)  # one maintenance pass has run: nothing expired yet
        assert job.refresh().state == "active" and job.record.worker == "a-worker-that-died"
        clock.advance(LEASE + 1)  # the lease is over; the next pass is due too
        await until(lambda: job.refresh().state == "completed", "the job to be recovered and run")
        worker.stop()
        await run

    asyncio.run(main())
    assert job.record.stalls == 1 and job.result(timeout=0) == "ran"


def test_the_back_off_while_the_store_is_down_runs_on_the_apps_clock(app, clock, monkeypatch):
    @app.task(name="quick")
    async def quick() -> str:
        return "ran"

    job = quick.enqueue()
    calls: list[int] = []
    complete_and_claim = app.broker.complete_and_claim

    def down_at_first(*args: Any) -> Any:
        calls.append(1)
        if len(calls) <= 2:
            raise StoreUnavailable("memory://: down for a moment")
        return complete_and_claim(*args)

    monkeypatch.setattr(app.broker, "complete_and_claim", down_at_first)
    worker = Worker(app, concurrency=1, burst=True)

    async def main() -> int:
        run = asyncio.create_task(worker.run_async())
        await until(lambda: len(calls) == 1, "the first try")
        await asyncio.sleep(0.05)
        assert len(calls) == 1  # backing off: 0.1 s of the app's clock, not of the wall's
        clock.advance(0.1)
        await until(lambda: len(calls) == 2, "the second try")
        clock.advance(0.2)  # the back-off doubled
        return await run

    assert asyncio.run(main()) == EXIT_OK
    assert job.result(timeout=0) == "ran"


@pytest.mark.parametrize(
    ("error", "code", "logged"),
    [
        (RuntimeError("a bug of ours"), EXIT_INTERNAL_ERROR, "Traceback"),
        (
            StoreMisconfigured("memory://: refused"),
            EXIT_STORE_REFUSED,
            "stopping: memory://: refused",
        ),
    ],
)
def test_errors_that_are_not_an_outage_stop_the_worker(
    app, monkeypatch, caplog, error, code, logged
):
    """Not retried as if the store were down: a bug is logged with its
    traceback (exit 1), a refusing store in one line (exit 2)."""

    @app.task(name="quick")
    async def quick() -> str:
        return "ran"

    job = quick.enqueue()

    def broken(*args: Any) -> Any:
        raise error

    monkeypatch.setattr(app.broker, "complete_and_claim", broken)
    with caplog.at_level(logging.ERROR, logger="conveyor.worker"):
        assert Worker(app, concurrency=1).run(install_signals=False) == code
    assert logged in caplog.text
    assert "store unavailable" not in caplog.text
    assert job.refresh().state == "waiting"  # nothing lost
