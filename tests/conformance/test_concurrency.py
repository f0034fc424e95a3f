"""One broker shared by threads: no job is handed out twice, and
wait_for_work wakes a sleeping worker when work arrives."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from conveyor.brokers.base import Broker, JobRecord
from helpers import poll_until_done

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


def in_thread(call):
    """Start ``call()`` on a thread and give it time to get into its wait;
    return (thread, holder of (seconds it took, what it returned))."""
    results: list[tuple[float, Any]] = []
    started = threading.Event()

    def run() -> None:
        started.set()
        t0 = time.monotonic()
        returned = call()
        results.append((time.monotonic() - t0, returned))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait()
    time.sleep(0.05)  # let it get into its wait
    return thread, results


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
    timeout = 2.0

    thread, results = in_thread(lambda: broker.wait_for_work(["default"], timeout))
    wake(broker, clock)
    thread.join(timeout + 2)

    assert not thread.is_alive()
    assert results and results[0][0] < timeout / 2 + 0.25


def test_wait_for_work_times_out_when_nothing_happens(broker):
    timeout = 0.2

    t0 = time.monotonic()
    broker.wait_for_work(["default"], timeout)
    elapsed = time.monotonic() - t0

    assert timeout / 2 <= elapsed < timeout + 1.0


# -- wait_and_claim: the idle worker's wait, which claims what woke it --------


def wait_and_claim_in_thread(
    broker: Broker, limit: int, timeout: float, worker: str = "waiter", queues=("default",)
):
    """Start ``wait_and_claim`` on a thread; return (thread, results-holder)."""
    return in_thread(lambda: broker.wait_and_claim(list(queues), limit, LEASE, worker, timeout))


@pytest.mark.parametrize("wake", WORK_ARRIVES, ids=lambda f: f.__name__[1:])
def test_wait_and_claim_claims_the_job_that_woke_it(broker, clock, wake):
    nothing_ready(broker, clock)
    timeout = 2.0

    thread, results = wait_and_claim_in_thread(broker, limit=5, timeout=timeout)
    wake(broker, clock)
    thread.join(timeout + 2)

    assert not thread.is_alive()
    elapsed, claimed = results[0]
    assert elapsed < timeout / 2 + 0.25
    assert len(claimed) == 1
    stored = broker.get(claimed[0].id)
    assert (stored.state, stored.worker) == ("active", "waiter")
    assert stored == claimed[0]


def test_wait_and_claim_takes_ready_jobs_at_once_up_to_the_limit(broker):
    add(broker, new_job("low"), new_job("high", priority=5), new_job("third"))

    t0 = time.monotonic()
    claimed = broker.wait_and_claim(["default"], 2, LEASE, "w1", 5.0)

    assert time.monotonic() - t0 < 1.0
    assert [job.id for job in claimed] == ["high", "low"]
    assert broker.get("third").state == "waiting"


def test_wait_and_claim_times_out_empty(broker):
    timeout = 0.2

    t0 = time.monotonic()
    claimed = broker.wait_and_claim(["default"], 5, LEASE, "w1", timeout)

    assert claimed == []
    assert timeout / 2 <= time.monotonic() - t0 < timeout + 1.0


def test_wait_and_claim_returns_when_interrupted(broker, clock):
    thread, results = wait_and_claim_in_thread(broker, limit=5, timeout=5.0)
    broker.interrupt()
    thread.join(3)

    assert not thread.is_alive()
    assert results[0][0] < 2.5 and results[0][1] == []


def test_idle_waiters_each_get_a_job(broker):
    """Two jobs arriving together wake two waiters of one slot each: the one
    that wakes first leaves the second job to the other."""
    first, first_results = wait_and_claim_in_thread(broker, limit=1, timeout=3.0, worker="a")
    second, second_results = wait_and_claim_in_thread(broker, limit=1, timeout=3.0, worker="b")
    add(broker, new_job("j1"), new_job("j2"))
    first.join(5)
    second.join(5)

    claimed = first_results[0][1] + second_results[0][1]
    assert sorted(job.id for job in claimed) == ["j1", "j2"]
    assert first_results[0][0] < 2.0 and second_results[0][0] < 2.0


def test_wait_and_claim_watches_every_queue_in_order(broker):
    thread, results = wait_and_claim_in_thread(broker, 5, 3.0, queues=("first", "second"))
    add(broker, new_job("later", queue="second"))
    thread.join(5)

    assert [job.id for job in results[0][1]] == ["later"]
    assert results[0][0] < 2.0

    add(broker, new_job("b1", queue="second"), new_job("a1", queue="first"))
    claimed = broker.wait_and_claim(["first", "second"], 5, LEASE, "w1", 3.0)
    assert [job.id for job in claimed] == ["a1", "b1"]


# -- send_wait: the same wait, read by an event loop instead of a thread -------


def sent_wait(broker: Broker, limit: int, timeout: float, queues=("default",)) -> Any:
    """``send_wait`` after a claim that found nothing (as the worker calls it)."""
    assert broker.claim(list(queues), limit, LEASE, "waiter") == []
    pending = broker.send_wait(list(queues), limit, LEASE, "waiter", timeout)
    if pending is None:
        pytest.skip("this store's idle wait blocks a thread: wait_and_claim covers it")
    return pending


@pytest.mark.parametrize("wake", WORK_ARRIVES, ids=lambda f: f.__name__[1:])
def test_send_wait_claims_the_job_that_woke_it(broker, clock, wake):
    nothing_ready(broker, clock)
    pending = sent_wait(broker, limit=5, timeout=3.0)
    assert pending.poll() is None  # nothing yet, and polling did not block

    t0 = time.monotonic()
    wake(broker, clock)
    claimed = poll_until_done(pending, 3.0)

    assert time.monotonic() - t0 < 1.75
    assert len(claimed) == 1
    stored = broker.get(claimed[0].id)
    assert (stored.state, stored.worker) == ("active", "waiter")
    assert stored == claimed[0]


def test_send_wait_times_out_empty(broker):
    pending = sent_wait(broker, limit=5, timeout=0.2)

    t0 = time.monotonic()
    assert poll_until_done(pending, 3.0) == []
    assert time.monotonic() - t0 < 1.2


def test_send_wait_ends_when_interrupted(broker):
    pending = sent_wait(broker, limit=5, timeout=5.0)
    broker.interrupt()

    assert poll_until_done(pending, 2.5) == []
