"""Leases: extend, recover expired ones, release, and fencing of lost leases."""

from __future__ import annotations

from dataclasses import replace

import pytest

from conveyor.brokers.base import ACTIVE, DEAD, WAITING, Lease, Recovered

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


def test_extend_pushes_the_expiry_back(broker, clock):
    add_one(broker, "j")
    job = claim_one(broker)
    clock.advance(20)

    assert broker.extend([lease_of(job)], LEASE) == []
    assert broker.get("j").lease_expires == START + 20 + LEASE

    clock.advance(20)  # past the first expiry, not the extended one
    assert broker.recover(max_stalled=3) == []
    assert state_of(broker, "j") == ACTIVE


def test_extend_reports_lost_leases(broker, clock):
    add(broker, new_job("held"), new_job("stolen"), new_job("done"))
    held, stolen, done = claim(broker)
    broker.complete([(lease_of(done), "null")])

    lost = broker.extend(
        [lease_of(held), Lease("stolen", "forged"), lease_of(done), Lease("ghost", "x")], 60
    )

    assert sorted(lost) == ["done", "ghost", "stolen"]
    assert broker.get("held").lease_expires == START + 60
    assert broker.get("stolen").lease_expires == stolen.lease_expires
    assert broker.get("done").lease_expires is None


def test_recover_puts_expired_jobs_back_without_spending_an_attempt(broker, clock):
    add(broker, new_job("crashed"), new_job("alive"))
    _, alive = claim(broker)
    clock.advance(LEASE - 5)
    broker.extend([lease_of(alive)], LEASE)
    clock.advance(6)  # crashed's lease is over; alive's was extended

    assert broker.recover(max_stalled=3) == [Recovered("crashed", WAITING)]

    job = broker.get("crashed")
    assert (job.state, job.attempts, job.stalls) == (WAITING, 0, 1)
    assert job.lease_token is None and job.lease_expires is None
    assert errors_of(broker, "crashed") == []
    assert broker.get("alive") == replace(alive, lease_expires=START + LEASE - 5 + LEASE)
    (again,) = claim(broker)
    assert (again.id, again.attempts, again.stalls) == ("crashed", 1, 1)
    assert broker.recover(max_stalled=3) == []


def test_recover_leaves_unexpired_leases_alone(broker, clock):
    add_one(broker, "j")
    job = claim_one(broker)
    clock.advance(LEASE - 1)

    assert broker.recover(max_stalled=0) == []
    assert broker.get("j") == job


def test_recover_ignores_jobs_that_are_not_active(broker, clock):
    for state in ("waiting", "delayed", "completed", "dead"):
        make_state(broker, clock, state, job_id=state)
    before = {state: broker.get(state) for state in ("waiting", "delayed", "completed", "dead")}
    clock.advance(LEASE * 10)

    assert broker.recover(max_stalled=0) == []
    assert {state: broker.get(state) for state in before} == before


def test_a_job_that_keeps_stalling_goes_dead(broker, clock):
    add_one(broker, "j")
    claim_one(broker)
    clock.advance(LEASE + 1)
    assert broker.recover(max_stalled=1) == [Recovered("j", WAITING)]

    claim_one(broker)
    clock.advance(LEASE + 1)
    assert broker.recover(max_stalled=1) == [Recovered("j", DEAD)]

    dead = broker.get("j")
    assert (dead.state, dead.stalls) == (DEAD, 2)
    assert dead.finished_at == clock.now()
    assert dead.lease_token is None
    (error,) = errors_of(broker, "j")
    assert error["type"] == "Stalled"
    assert error["at"] == clock.now()
    assert claim(broker) == []
    assert broker.retry(["j"]) == 1
    assert (broker.get("j").stalls, broker.get("j").attempts) == (0, 0)


def test_max_stalled_zero_sends_dead_on_first_expiry(broker, clock):
    add_one(broker, "j")
    claim_one(broker)
    clock.advance(LEASE + 1)

    assert broker.recover(max_stalled=0) == [Recovered("j", DEAD)]


@pytest.mark.parametrize("recovered_then_reclaimed", [True, False])
def test_a_lost_lease_cannot_touch_the_job(broker, clock, recovered_then_reclaimed):
    add_one(broker, "j")
    first = claim_one(broker, worker="w1")
    clock.advance(LEASE + 1)
    broker.recover(max_stalled=3)
    if recovered_then_reclaimed:
        second = claim_one(broker, worker="w2")
        assert second.lease_token != first.lease_token
    before = broker.get("j")
    old = lease_of(first)

    assert broker.complete([(old, '"zombie"')]) == [False]
    assert broker.fail(old, boom("zombie"), None) is False
    assert broker.fail(old, boom("zombie"), clock.now() + 5) is False
    assert broker.extend([old], 300) == ["j"]
    assert broker.release([old]) == 0
    assert broker.get("j") == before

    if recovered_then_reclaimed:
        assert (before.worker, before.attempts) == ("w2", 1)
        assert broker.complete([(lease_of(second), '"mine"')]) == [True]
        assert broker.get("j").result == '"mine"'
    else:
        assert before.state == WAITING


def test_release_puts_jobs_back_without_spending_an_attempt(broker, clock):
    add(broker, new_job("a", priority=5), new_job("b"), new_job("c", priority=1))
    a, c = claim(broker, limit=2)

    assert broker.release([lease_of(a), lease_of(c), Lease("b", "not-claimed")]) == 2

    for job_id in ("a", "c"):
        job = broker.get(job_id)
        assert (job.state, job.attempts, job.stalls) == (WAITING, 0, 0)
        assert job.lease_token is None and job.lease_expires is None
    assert ids(claim(broker)) == ["a", "c", "b"]  # back in their place, not at the end
    assert broker.get("a").attempts == 1


def test_release_keeps_stalls(broker, clock):
    add_one(broker, "j")
    claim_one(broker)
    clock.advance(LEASE + 1)
    broker.recover(max_stalled=3)
    job = claim_one(broker)

    assert broker.release([lease_of(job)]) == 1
    assert (broker.get("j").stalls, broker.get("j").attempts) == (1, 0)
    assert broker.release([lease_of(job)]) == 0
