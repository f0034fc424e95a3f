"""enqueue and claim: what is stored, dedup by id, and the order jobs come out in."""

from __future__ import annotations

import dataclasses

import pytest

from conveyor.brokers.base import ACTIVE, WAITING

from .conftest import (
    LEASE,
    START,
    add,
    add_one,
    claim,
    claim_one,
    ids,
    lease_of,
    make_state,
    new_job,
)


def test_enqueue_stores_a_waiting_job(broker):
    new = new_job(
        "j1", queue="mail", task="send", payload='{"to":"a"}', priority=3, options='{"attempts":5}'
    )
    (result,) = broker.enqueue([new])

    assert result.created
    for record in (result.record, broker.get("j1")):
        assert record.id == "j1"
        assert (record.queue, record.task, record.state) == ("mail", "send", WAITING)
        assert (record.payload, record.options, record.priority) == (
            '{"to":"a"}',
            '{"attempts":5}',
            3,
        )
        assert (record.attempts, record.stalls) == (0, 0)
        assert record.created_at == START
        assert record.started_at is None and record.finished_at is None
        assert record.lease_token is None and record.lease_expires is None
        assert record.result is None
        assert record.errors == "[]"


def test_bulk_enqueue_keeps_order(broker):
    jobs = [new_job(f"b{i}") for i in range(5)]
    records = add(broker, *jobs)

    assert ids(records) == [f"b{i}" for i in range(5)]
    seqs = [r.seq for r in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert ids(broker.list()) == ids(records)
    assert ids(claim(broker)) == ids(records)


def test_get_unknown_id_is_none(broker):
    assert broker.get("no-such-job") is None


@pytest.mark.parametrize("queue", ["default", "other"])
@pytest.mark.parametrize("state", ["waiting", "delayed", "active"])
def test_enqueue_same_id_as_unended_job_returns_it_untouched(broker, clock, state, queue):
    before = make_state(broker, clock, state, job_id="dup", payload='{"v":1}', priority=1)
    clock.advance(5)

    (result,) = broker.enqueue([new_job("dup", payload='{"v":2}', priority=9, queue=queue)])

    if queue == "other" and not broker.ids_unique_across_queues:
        # The documented exception (Redis Cluster): an id is unique within its
        # queue, so the other queue gets its own job and this one is untouched.
        assert result.created and result.record.queue == "other"
        assert broker.list(queue="default") == [before]
        return
    assert not result.created
    assert result.record == before
    assert broker.get("dup") == before
    assert "other" not in broker.counts()
    assert sum(broker.counts()["default"].values()) == 1


def test_same_id_twice_in_one_call_creates_once(broker):
    first, second = broker.enqueue([new_job("x", payload="1"), new_job("x", payload="2")])

    assert first.created and not second.created
    assert second.record.payload == "1"
    assert broker.get("x").payload == "1"


@pytest.mark.parametrize("state", ["completed", "dead", "cancelled"])
def test_enqueue_same_id_as_ended_job_replaces_it(broker, clock, state):
    old = make_state(broker, clock, state, job_id="again", payload='{"v":1}')
    clock.advance(5)

    (result,) = broker.enqueue([new_job("again", payload='{"v":2}')])

    assert result.created
    new = broker.get("again")
    assert new == result.record
    assert new.seq > old.seq
    assert (new.state, new.payload, new.attempts, new.errors) == (WAITING, '{"v":2}', 0, "[]")
    assert new.created_at == START + 5 and new.result is None and new.finished_at is None
    assert sum(broker.counts()["default"].values()) == 1
    assert ids(broker.list()) == ["again"]
    assert ids(claim(broker)) == ["again"]


def test_priority_first_then_enqueue_order(broker):
    add(
        broker,
        new_job("a", priority=0),
        new_job("b", priority=5),
        new_job("c", priority=0),
        new_job("d", priority=5),
        new_job("e", priority=1),
        new_job("f", priority=-2),
    )
    add_one(broker, "g", priority=5)  # a later call, same priority as b and d

    assert ids(claim(broker, limit=3)) == ["b", "d", "g"]
    assert ids(claim(broker, limit=1)) == ["e"]
    assert ids(claim(broker)) == ["a", "c", "f"]


def test_queues_are_claimed_in_the_order_given(broker):
    add(
        broker,
        new_job("low-1", queue="low", priority=9),
        new_job("high-1", queue="high"),
        new_job("low-2", queue="low", priority=9),
        new_job("high-2", queue="high"),
        new_job("elsewhere", queue="other", priority=100),
    )

    assert ids(claim(broker, ["high", "low"], limit=3)) == ["high-1", "high-2", "low-1"]
    assert ids(claim(broker, ["low", "high"])) == ["low-2"]
    assert broker.get("elsewhere").state == WAITING


def test_claim_respects_limit(broker):
    add(broker, *(new_job() for _ in range(5)))

    assert [len(claim(broker, limit=n)) for n in (2, 2, 2, 2)] == [2, 2, 1, 0]


def test_claim_of_nothing_returns_empty(broker):
    assert claim(broker) == []
    assert claim(broker, ["no-such-queue"]) == []
    add_one(broker, queue="a")
    assert claim(broker, ["b"]) == []


def test_claim_leases_the_job(broker, clock):
    add_one(broker, "j")
    clock.advance(7)

    (job,) = claim(broker, lease=12.5, worker="host:42")

    assert job.state == ACTIVE
    assert job.attempts == 1
    assert job.started_at == START + 7
    assert job.lease_expires == START + 7 + 12.5
    assert job.worker == "host:42"
    assert isinstance(job.lease_token, str) and job.lease_token
    assert broker.get("j") == job


def test_each_claim_hands_out_a_new_token(broker):
    add_one(broker, "j")
    first = claim_one(broker)
    assert broker.release([lease_of(first)]) == 1
    second = claim_one(broker)

    assert second.attempts == 1
    assert second.lease_token != first.lease_token


def test_records_are_snapshots(broker):
    (job,) = add(broker, new_job("j"))
    job.state = "completed"
    job.payload = "tampered"
    claimed = claim_one(broker)
    claimed.lease_token = "forged"

    stored = broker.get("j")
    assert (stored.state, stored.payload) == (ACTIVE, '{"args":[1,2]}')
    assert stored.lease_token != "forged"
    listed = broker.list()[0]
    listed.attempts = 99
    assert broker.get("j").attempts == 1


def test_lease_seconds_is_per_claim(broker):
    add(broker, new_job("a"), new_job("b"))
    a = claim_one(broker)
    b = claim(broker, lease=LEASE * 2)[0]
    assert b.lease_expires - a.lease_expires == LEASE


def test_a_generated_id_sent_twice_is_stored_once(broker):
    """A store may skip the dedup look-up for generated ids, but a call sent
    again (a retry after a lost connection) must not store the job twice."""
    job = dataclasses.replace(new_job("generated"), generated_id=True)
    broker.enqueue([job])
    broker.enqueue([job])

    assert ids(claim(broker)) == ["generated"]
    assert claim(broker) == []
    counts = broker.counts()["default"]
    assert (counts["active"], sum(counts.values())) == (1, 1)
