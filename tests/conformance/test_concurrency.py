"""One broker shared by threads: no job is handed out twice, and
wait_for_work wakes a sleeping worker when work arrives."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from conveyor.brokers.base import Broker, JobRecord

from .conftest import LEASE, START, add, add_one, boom, claim_one, lease_of, make_state, new_job

THREADS = 8
JOBS = 10_000
BATCH = 50


def run_threads(target, count: int = THREADS) -> None:
    """Run ``target(i)`` on ``count`` threads started together; re-raise failures."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def guarded(i: int) -> None:
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # surface any thread's failure in the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"
    if errors:
        raise errors[0]


def test_concurrent_claimers_never_share_a_job(broker):
    expected = [f"c{i}" for i in range(JOBS)]
    for start in range(0, JOBS, 1000):
        broker.enqueue([new_job(job_id) for job_id in expected[start : start + 1000]])
    claimed: list[list[str]] = [[] for _ in range(THREADS)]

    def worker(i: int) -> None:
        while jobs := broker.claim(["default"], BATCH, LEASE, f"w{i}"):
            claimed[i].extend(j.id for j in jobs)
            assert broker.complete([(lease_of(j), "null") for j in jobs]) == [True] * len(jobs)

    run_threads(worker)

    everything = [job_id for ids in claimed for job_id in ids]
    assert len(everything) == len(set(everything)), "a job was claimed twice"
    assert sorted(everything) == sorted(expected)
    assert broker.counts()["default"]["completed"] == JOBS
    assert broker.pending(["default"]) == 0


def test_concurrent_enqueues_of_one_id_create_it_once(broker):
    created: list[int] = [0] * THREADS

    def producer(i: int) -> None:
        results = broker.enqueue([new_job(f"same-{n}", payload=str(i)) for n in range(50)])
        created[i] = sum(r.created for r in results)

    run_threads(producer)

    assert sum(created) == 50
    assert sum(broker.counts()["default"].values()) == 50


#: Long enough that a wait which was not woken cannot end by itself before a
#: test gives up on it (JOIN): a test passes only if the wake-up reached it.
LONG_WAIT = 30.0
JOIN = 10.0


def until(fact, what: str) -> None:
    """Wait for an observable fact, never a fixed time; fail after JOIN seconds."""
    deadline = time.monotonic() + JOIN
    while not fact():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def in_thread(broker: Broker, call) -> tuple[threading.Thread, list[Any]]:
    """Start ``call()`` on a thread and return once it is inside its wait
    (``broker.waiting()`` went up): (thread, holder of what it returned)."""
    results: list[Any] = []
    before = broker.waiting()
    thread = threading.Thread(target=lambda: results.append(call()), daemon=True)
    thread.start()
    until(lambda: broker.waiting() > before or not thread.is_alive(), "the call to wait")
    assert thread.is_alive(), f"it returned without waiting: {results}"
    return thread, results


def ended(thread: threading.Thread) -> bool:
    thread.join(JOIN)
    return not thread.is_alive()


def _enqueue(broker: Broker, clock) -> None:
    add_one(broker)


def _release(broker: Broker, clock) -> None:
    assert broker.release([lease_of(job) for job in held(broker)]) == 1


def _fail_with_retry(broker: Broker, clock) -> None:
    assert broker.fail(lease_of(held(broker)[0]), boom(), clock.now())


def _retry(broker: Broker, clock) -> None:
    assert broker.retry(["dead-one"]) == 1


def _promote(broker: Broker, clock) -> None:
    assert broker.promote(["later-one"]) == 1


def _recover(broker: Broker, clock) -> None:
    clock.advance(LEASE + 1)
    assert len(broker.recover(max_stalled=3)) == 1


def _interrupt(broker: Broker, clock) -> None:
    broker.interrupt()  # no work at all: a stopping worker wants its thread back


def held(broker: Broker) -> list[JobRecord]:
    return broker.list(state="active")


#: Every way a job becomes ready, each from the state ``nothing_ready`` leaves.
WORK_ARRIVES = [_enqueue, _release, _fail_with_retry, _retry, _promote, _recover]


def nothing_ready(broker: Broker, clock) -> None:
    """One active, one dead, one far-off job: nothing to claim."""
    add_one(broker, "held-one")
    claim_one(broker)
    make_state(broker, clock, "dead", job_id="dead-one")
    add(broker, new_job("later-one", run_at=START + 3600))


@pytest.mark.parametrize("wake", [*WORK_ARRIVES, _interrupt], ids=lambda f: f.__name__[1:])
def test_wait_for_work_returns_early_when_work_arrives(broker, clock, wake):
    nothing_ready(broker, clock)
    # The contract allows spurious wake-ups (Redis: a marker left set by the
    # moves above): let one happen now, so the wait below blocks.
    broker.wait_for_work(["default"], 0.05)

    thread, _ = in_thread(broker, lambda: broker.wait_for_work(["default"], LONG_WAIT))
    wake(broker, clock)

    assert ended(thread), "the wait was not woken"
    assert broker.waiting() == 0


def test_wait_for_work_times_out_when_nothing_happens(broker):
    thread, results = in_thread(broker, lambda: broker.wait_for_work(["default"], 0.2))
    assert ended(thread) and results == [None]
    assert broker.waiting() == 0


# -- wait_and_claim: the idle worker's wait, which claims what woke it --------


def wait_and_claim_in_thread(
    broker: Broker, limit: int, timeout: float = LONG_WAIT, worker: str = "waiter",
    queues=("default",),
) -> tuple[threading.Thread, list[Any]]:  # fmt: skip
    """``wait_and_claim`` on a thread, once it is inside its wait."""
    return in_thread(
        broker, lambda: broker.wait_and_claim(list(queues), limit, LEASE, worker, timeout)
    )


def assert_claimed_by_the_waiter(broker: Broker, claimed: list[JobRecord]) -> None:
    assert len(claimed) == 1
    stored = broker.get(claimed[0].id)
    assert (stored.state, stored.worker) == ("active", "waiter")
    assert stored == claimed[0]


@pytest.mark.parametrize("wake", WORK_ARRIVES, ids=lambda f: f.__name__[1:])
def test_wait_and_claim_claims_the_job_that_woke_it(broker, clock, wake):
    nothing_ready(broker, clock)

    thread, results = wait_and_claim_in_thread(broker, limit=5)
    wake(broker, clock)

    assert ended(thread), "the wait was not woken"
    assert_claimed_by_the_waiter(broker, results[0])


def test_wait_and_claim_takes_ready_jobs_at_once_up_to_the_limit(broker):
    add(broker, new_job("low"), new_job("high", priority=5), new_job("third"))

    claimed = broker.wait_and_claim(["default"], 2, LEASE, "w1", LONG_WAIT)  # returns at once

    assert [job.id for job in claimed] == ["high", "low"]
    assert broker.get("third").state == "waiting"
    assert broker.waiting() == 0


def test_wait_and_claim_times_out_empty(broker):
    thread, results = wait_and_claim_in_thread(broker, limit=5, timeout=0.2)
    assert ended(thread) and results == [[]]


def test_wait_and_claim_returns_when_interrupted(broker, clock):
    thread, results = wait_and_claim_in_thread(broker, limit=5)
    broker.interrupt()

    assert ended(thread) and results == [[]]


def test_idle_waiters_each_get_a_job(broker):
    """Two jobs arriving together wake two waiters of one slot each: the one
    that wakes first leaves the second job to the other."""
    first, first_results = wait_and_claim_in_thread(broker, limit=1, worker="a")
    second, second_results = wait_and_claim_in_thread(broker, limit=1, worker="b")
    add(broker, new_job("j1"), new_job("j2"))

    assert ended(first) and ended(second), "a waiter was not woken"
    claimed = first_results[0] + second_results[0]
    assert sorted(job.id for job in claimed) == ["j1", "j2"]


def test_wait_and_claim_watches_every_queue_in_order(broker):
    thread, results = wait_and_claim_in_thread(broker, 5, queues=("first", "second"))
    add(broker, new_job("later", queue="second"))

    assert ended(thread), "the wait was not woken"
    assert [job.id for job in results[0]] == ["later"]

    add(broker, new_job("b1", queue="second"), new_job("a1", queue="first"))
    claimed = broker.wait_and_claim(["first", "second"], 5, LEASE, "w1", LONG_WAIT)
    assert [job.id for job in claimed] == ["a1", "b1"]


# -- the same wait through the worker's door (broker.async_store()) -----------


def door_wait(broker: Broker, clock, wake, limit: int = 5, timeout: float = LONG_WAIT) -> Any:
    """The idle worker's wait, as the worker makes it: awaited on an event
    loop through the store's door, after a claim that found nothing; once
    the wait is in the store (``waiting()``), ``wake(broker, clock)`` runs on
    a thread. Returns what the wait claimed."""

    async def main() -> Any:
        store = broker.async_store()
        try:
            assert await store.complete_and_claim([], ["default"], limit, LEASE, "waiter") == (
                [],
                [],
            )
            before = broker.waiting()
            wait = asyncio.ensure_future(
                store.wait_and_claim(["default"], limit, LEASE, "waiter", timeout)
            )
            deadline = time.monotonic() + JOIN
            while broker.waiting() == before and not wait.done():
                assert time.monotonic() < deadline, "the wait never started"
                await asyncio.sleep(0.002)
            if wake is not None:
                assert not wait.done(), "it returned without waiting"
                await asyncio.to_thread(wake, broker, clock)
            return await asyncio.wait_for(wait, JOIN)
        finally:
            store.close()

    return asyncio.run(main())


@pytest.mark.parametrize("wake", WORK_ARRIVES, ids=lambda f: f.__name__[1:])
def test_the_doors_wait_claims_the_job_that_woke_it(broker, clock, wake):
    nothing_ready(broker, clock)
    assert_claimed_by_the_waiter(broker, door_wait(broker, clock, wake))
    assert broker.waiting() == 0


def test_the_doors_wait_times_out_empty(broker, clock):
    assert door_wait(broker, clock, None, timeout=0.2) == []


def test_the_doors_wait_ends_when_interrupted(broker, clock):
    assert door_wait(broker, clock, _interrupt) == []
    assert broker.retry() == 0
