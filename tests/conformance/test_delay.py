"""Delayed jobs: run_at in the future, next_due, and promote."""

from __future__ import annotations

from conveyor.brokers.base import ACTIVE, DELAYED, WAITING

from .conftest import START, add, add_one, claim, claim_one, ids, make_state, new_job


def test_future_run_at_is_delayed_until_the_clock_passes_it(broker, clock):
    job = add_one(broker, "later", run_at=START + 60)

    assert job.state == DELAYED
    assert job.run_at == START + 60
    assert claim(broker) == []
    clock.advance(59)
    assert claim(broker) == []
    assert broker.get("later").state == DELAYED
    clock.advance(2)
    (claimed,) = claim(broker)
    assert (claimed.id, claimed.state, claimed.attempts) == ("later", ACTIVE, 1)


def test_run_at_now_or_past_is_waiting(broker):
    past, now = add(broker, new_job("past", run_at=START - 10), new_job("now", run_at=START))

    assert (past.state, now.state) == (WAITING, WAITING)
    assert ids(claim(broker)) == ["past", "now"]


def test_due_delayed_jobs_join_by_priority_and_seq(broker, clock):
    add(
        broker,
        new_job("delayed-first", run_at=START + 10),
        new_job("waiting-second"),
        new_job("delayed-urgent", run_at=START + 5, priority=1),
    )
    clock.advance(10)

    assert ids(claim(broker)) == ["delayed-urgent", "delayed-first", "waiting-second"]


def test_claim_moves_every_due_delayed_job_to_waiting(broker, clock):
    add(
        broker,
        new_job("mine", queue="q1", run_at=START + 5),
        new_job("theirs", queue="q2", run_at=START + 5),
        new_job("not-yet", queue="q2", run_at=START + 50),
    )
    clock.advance(6)

    assert ids(claim(broker, ["q1"])) == ["mine"]
    assert broker.get("theirs").state == WAITING
    assert broker.get("not-yet").state == DELAYED


def test_next_due(broker, clock):
    assert broker.next_due(["q1"]) is None
    add(
        broker,
        new_job(queue="q1", run_at=START + 30),
        new_job(queue="q1", run_at=START + 10),
        new_job(queue="q2", run_at=START + 5),
        new_job(queue="q1"),  # waiting: not a due time
        new_job(queue="q3", run_at=START + 1),
    )

    assert broker.next_due(["q1"]) == START + 10
    assert broker.next_due(["q1", "q2"]) == START + 5
    assert broker.next_due(["q2", "q1"]) == START + 5
    assert broker.next_due(["empty"]) is None

    clock.advance(10)
    claim(broker, ["q1"])  # promotes the due ones and takes them
    assert broker.next_due(["q1"]) == START + 30
    clock.advance(30)
    claim(broker, ["q1"])
    assert broker.next_due(["q1"]) is None


def test_next_due_ignores_cancelled_and_promoted_jobs(broker):
    add(broker, new_job("soon", run_at=START + 5), new_job("sooner", run_at=START + 2))
    add_one(broker, "latest", run_at=START + 9)

    assert broker.cancel("sooner")
    assert broker.next_due(["default"]) == START + 5
    assert broker.promote(["soon"]) == 1
    assert broker.next_due(["default"]) == START + 9


def test_promote_by_ids(broker, clock):
    add(broker, new_job("a", run_at=START + 60), new_job("b", run_at=START + 60))
    make_state(broker, clock, "waiting", job_id="w")

    assert broker.promote(["a", "w", "unknown"]) == 1
    assert broker.get("a").state == WAITING
    assert broker.get("b").state == DELAYED
    assert broker.get("w").state == WAITING
    assert ids(claim(broker)) == ["a", "w"]


def test_promote_a_whole_queue(broker):
    add(
        broker,
        new_job("a1", queue="a", run_at=START + 60),
        new_job("a2", queue="a", run_at=START + 90),
        new_job("b1", queue="b", run_at=START + 60),
    )

    assert broker.promote(queue="a") == 2
    assert ids(claim(broker, ["a", "b"])) == ["a1", "a2"]
    assert broker.get("b1").state == DELAYED
    assert broker.promote(queue="a") == 0


def test_promote_everything(broker):
    add(broker, new_job(queue="a", run_at=START + 60), new_job(queue="b", run_at=START + 60))

    assert broker.promote() == 2
    assert len(claim(broker, ["a", "b"])) == 2


def test_promoted_job_is_not_claimed_twice_when_its_time_comes(broker, clock):
    add_one(broker, "p", run_at=START + 10)
    broker.promote(["p"])
    job = claim_one(broker)
    clock.advance(20)

    assert claim(broker) == []
    assert broker.get("p").lease_token == job.lease_token
