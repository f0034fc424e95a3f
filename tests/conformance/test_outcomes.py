"""How a run ends: complete, fail (retry later or dead), and the controls
that move jobs by hand: retry from dead, cancel."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conveyor.brokers.base import (
    ACTIVE,
    CANCELLED,
    COMPLETED,
    DEAD,
    DELAYED,
    WAITING,
    AttemptError,
    Broker,
    Lease,
)

from .conftest import (
    LEASE,
    START,
    add,
    add_one,
    boom,
    claim,
    claim_one,
    errors_of,
    ids,
    lease_of,
    make_state,
    new_job,
    state_of,
)


def test_complete_stores_the_result(broker, clock):
    add_one(broker, "j")
    job = claim_one(broker)
    clock.advance(3)

    assert broker.complete([(lease_of(job), '{"sum":3}')]) == [True]

    done = broker.get("j")
    assert (done.state, done.result) == (COMPLETED, '{"sum":3}')
    assert done.finished_at == START + 3
    assert done.lease_token is None and done.lease_expires is None
    assert done.attempts == 1 and done.errors == "[]"
    assert claim(broker) == []


def test_batch_complete_answers_per_item(broker):
    add(broker, new_job("a"), new_job("b"), new_job("c"))
    a, b, c = claim(broker)

    outcome = broker.complete(
        [
            (lease_of(a), "1"),
            (Lease("b", "not-the-token"), "2"),
            (lease_of(c), "3"),
            (Lease("ghost", "whatever"), "4"),
        ]
    )

    assert outcome == [True, False, True, False]
    assert (state_of(broker, "a"), broker.get("a").result) == (COMPLETED, "1")
    assert (state_of(broker, "b"), broker.get("b").result) == (ACTIVE, None)
    assert broker.get("b").lease_token == b.lease_token
    assert state_of(broker, "c") == COMPLETED
    assert broker.get("ghost") is None


def test_complete_twice_is_refused(broker):
    add_one(broker, "j")
    job = claim_one(broker)

    assert broker.complete([(lease_of(job), "1")]) == [True]
    assert broker.complete([(lease_of(job), "2")]) == [False]
    assert broker.get("j").result == "1"


def test_fail_with_retry_at_delays_the_job(broker, clock):
    add_one(broker, "j")
    job = claim_one(broker)
    clock.advance(2)

    assert broker.fail(lease_of(job), AttemptError("KeyError", "'x'", "tb text"), START + 12)

    failed = broker.get("j")
    assert (failed.state, failed.run_at) == (DELAYED, START + 12)
    assert failed.lease_token is None and failed.lease_expires is None
    assert failed.finished_at is None
    assert errors_of(broker, "j") == [
        {
            "attempt": 1,
            "type": "KeyError",
            "message": "'x'",
            "traceback": "tb text",
            "at": START + 2,
        }
    ]
    assert claim(broker) == []
    assert broker.next_due(["default"]) == START + 12
    clock.advance(11)
    (again,) = claim(broker)
    assert (again.id, again.attempts) == ("j", 2)


@pytest.mark.parametrize("offset", [0, -5])
def test_fail_with_retry_at_not_in_the_future_is_waiting(broker, clock, offset):
    add_one(broker, "j")
    job = claim_one(broker)

    assert broker.fail(lease_of(job), boom(), clock.now() + offset)

    assert state_of(broker, "j") == WAITING
    assert ids(claim(broker)) == ["j"]


def test_fail_without_retry_sends_the_job_dead(broker, clock):
    add_one(broker, "j")
    job = claim_one(broker)
    clock.advance(4)

    assert broker.fail(lease_of(job), boom("no more"), None)

    dead = broker.get("j")
    assert dead.state == DEAD
    assert dead.finished_at == START + 4
    assert dead.lease_token is None
    assert [e["message"] for e in errors_of(broker, "j")] == ["no more"]
    assert claim(broker) == []


def test_errors_accumulate_one_per_failed_run(broker, clock):
    add_one(broker, "j")
    for n in (1, 2):
        job = claim_one(broker)
        assert broker.fail(lease_of(job), boom(f"run {n}", "IOError"), clock.now())
        clock.advance(1)
    job = claim_one(broker)
    assert broker.fail(lease_of(job), boom("run 3", "KeyError"), None)

    errors = errors_of(broker, "j")
    assert [e["attempt"] for e in errors] == [1, 2, 3]
    assert [e["type"] for e in errors] == ["IOError", "IOError", "KeyError"]
    assert [e["message"] for e in errors] == ["run 1", "run 2", "run 3"]
    assert [e["at"] for e in errors] == [START, START + 1, START + 2]
    assert all("Traceback" in e["traceback"] for e in errors)


def test_fail_with_a_lost_lease_changes_nothing(broker):
    add_one(broker, "j")
    job = claim_one(broker)
    before = broker.get("j")

    assert not broker.fail(Lease("j", "stale"), boom(), None)
    assert not broker.fail(Lease("ghost", "stale"), boom(), None)

    assert broker.get("j") == before
    assert broker.complete([(lease_of(job), "1")]) == [True]


def test_retry_dead_job_by_id(broker, clock):
    dead = make_state(broker, clock, "dead", job_id="d")
    history = errors_of(broker, "d")

    assert broker.retry(["d"]) == 1

    back = broker.get("d")
    assert (back.id, back.state, back.attempts, back.stalls) == ("d", WAITING, 0, 0)
    assert back.payload == dead.payload
    assert errors_of(broker, "d") == history and len(history) == 1
    (again,) = claim(broker)
    assert (again.id, again.attempts) == ("d", 1)


def test_retry_all_dead_optionally_per_queue(broker, clock):
    for job_id, queue in [("a1", "a"), ("a2", "a"), ("b1", "b")]:
        make_state(broker, clock, "dead", job_id=job_id, queue=queue)
    make_state(broker, clock, "completed", job_id="a-done", queue="a")
    make_state(broker, clock, "cancelled", job_id="a-cancelled", queue="a")

    assert broker.retry(queue="a") == 2
    assert [state_of(broker, i) for i in ("a1", "a2", "b1")] == [WAITING, WAITING, DEAD]
    assert state_of(broker, "a-done") == COMPLETED
    assert state_of(broker, "a-cancelled") == CANCELLED  # "all" means every dead job
    assert broker.retry() == 1
    assert state_of(broker, "b1") == WAITING
    assert broker.retry() == 0


@pytest.mark.parametrize("state", ["waiting", "delayed", "active", "completed"])
def test_retry_of_a_job_that_is_not_dead_does_nothing(broker, clock, state):
    before = make_state(broker, clock, state, job_id="j")

    assert broker.retry(["j"]) == 0
    assert broker.retry() == 0
    assert broker.get("j") == before


def test_retry_unknown_id_does_nothing(broker):
    assert broker.retry(["ghost"]) == 0
    assert broker.get("ghost") is None


def test_retry_cancelled_job_by_id(broker, clock):
    make_state(broker, clock, "cancelled", job_id="c")

    assert broker.retry(["c"]) == 1
    assert ids(claim(broker)) == ["c"]


@pytest.mark.parametrize("state", ["waiting", "delayed"])
def test_cancel_a_job_that_has_not_started(broker, clock, state):
    make_state(broker, clock, state, job_id="j")

    assert broker.cancel("j")

    assert state_of(broker, "j") == CANCELLED
    clock.advance(7200)
    assert claim(broker) == []
    assert broker.cancel("j") is False


@pytest.mark.parametrize("state", ["active", "completed", "dead"])
def test_cancel_refuses_a_started_or_ended_job(broker, clock, state):
    before = make_state(broker, clock, state, job_id="j")

    assert broker.cancel("j") is False
    assert broker.get("j") == before


def test_cancel_unknown_id(broker):
    assert broker.cancel("ghost") is False


def complete_and_claim(broker: Broker, how: str, done: list, limit: int) -> Any:
    """``complete_and_claim`` as called (``call``), or as the worker makes it
    (``door``: awaited through ``broker.async_store()``, which on one Redis
    server sends it as a pipeline the event loop reads), on ``default``."""
    if how == "call":
        return broker.complete_and_claim(done, ["default"], limit, LEASE, "w1")

    async def through_the_door() -> Any:
        store = broker.async_store()
        try:
            return await store.complete_and_claim(done, ["default"], limit, LEASE, "w1")
        finally:
            store.close()

    return asyncio.run(through_the_door())


@pytest.mark.parametrize("how", ["call", "door"])
def test_complete_and_claim_finishes_a_batch_and_takes_the_next(broker, clock, how):
    add(broker, *(new_job(f"cc{i}") for i in range(5)))
    first = claim(broker, limit=2)
    stale = Lease(first[1].id, "not-the-token")
    accepted, nxt = complete_and_claim(
        broker, how, [(lease_of(first[0]), '"one"'), (stale, '"two"')], limit=2
    )
    assert accepted == [True, False]  # fenced per item
    assert ids(nxt) == ["cc2", "cc3"]
    assert all(j.state == "active" for j in nxt)
    assert nxt == [broker.get("cc2"), broker.get("cc3")]  # the records as stored
    assert broker.get("cc0").result == '"one"' and broker.get("cc0").state == "completed"
    assert broker.get("cc1").state == "active" and broker.get("cc1").result is None
    # limit 0 only completes; nothing done only claims
    assert complete_and_claim(broker, how, [(lease_of(nxt[0]), "1")], limit=0) == ([True], [])
    assert ids(complete_and_claim(broker, how, [], limit=5)[1]) == ["cc4"]
    assert complete_and_claim(broker, how, [], limit=5) == ([], [])


@pytest.mark.parametrize("how", ["call", "door"])
def test_complete_and_claim_takes_due_delayed_jobs_by_priority(broker, clock, how):
    add(broker, new_job("low"), new_job("later", run_at=START + 5), new_job("high", priority=5))
    clock.advance(6)

    accepted, claimed = complete_and_claim(broker, how, [], limit=5)
    assert accepted == [] and ids(claimed) == ["high", "low", "later"]
