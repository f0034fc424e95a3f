"""Unique keys (``NewJob.unique_key``, ``options(unique_for=...)``): held while
the job that took the key has not ended and ``unique_for`` seconds after, in
a lock record that outlives the job's deletion by retention."""

from __future__ import annotations

import pytest

from conveyor.brokers.base import (
    CANCELLED,
    COMPLETED,
    DEAD,
    WAITING,
    Broker,
    EnqueueResult,
    NewJob,
)

from .conftest import (
    START,
    add_one,
    boom,
    claim,
    claim_one,
    ids,
    lease_of,
    new_job,
    state_of,
)

HOUR = 3600.0


def unique(job_id: str | None = None, key: str = "k", unique_for: float = HOUR, **fields) -> NewJob:
    job = new_job(job_id, **fields)
    job.unique_key, job.unique_for = key, unique_for
    return job


def put(broker: Broker, job: NewJob) -> EnqueueResult:
    (result,) = broker.enqueue([job])
    return result


def finish(broker: Broker, job_id: str, how: str) -> None:
    """End the (only ready) job ``job_id`` as ``how`` says."""
    if how == CANCELLED:
        assert broker.cancel(job_id)
        return
    job = claim_one(broker)
    assert job.id == job_id
    if how == COMPLETED:
        assert broker.complete([(lease_of(job), '"ok"')]) == [True]
    else:
        assert broker.fail(lease_of(job), boom(), None)


def test_a_held_key_returns_the_job_holding_it(broker):
    first = put(broker, unique("a"))
    assert first.created
    again = put(broker, unique("b"))
    assert not again.created
    assert again.record.id == "a" and again.record.state == WAITING
    assert state_of(broker, "b") is None  # nothing stored
    assert broker.counts()["default"][WAITING] == 1


def test_held_while_the_job_runs_and_unique_for_after_it_ended(broker, clock):
    put(broker, unique("a", unique_for=60))
    job = claim_one(broker)
    clock.advance(500)  # however long it runs
    assert put(broker, unique("b", unique_for=60)).record.id == "a"
    assert broker.complete([(lease_of(job), '"ok"')]) == [True]

    clock.advance(59.5)
    held = put(broker, unique("c", unique_for=60))
    assert not held.created
    assert (held.record.id, held.record.state, held.record.result) == ("a", COMPLETED, '"ok"')

    clock.advance(0.5)  # finished_at + unique_for: the hold has run out
    freed = put(broker, unique("d", unique_for=60))
    assert freed.created and freed.record.id == "d"
    assert put(broker, unique("e", unique_for=60)).record.id == "d"  # d holds it now
    assert state_of(broker, "a") == COMPLETED  # the old job is left as it was


@pytest.mark.parametrize("how", [COMPLETED, DEAD, CANCELLED])
def test_every_end_starts_the_hold(broker, clock, how):
    put(broker, unique("a", unique_for=10))
    clock.advance(5)
    finish(broker, "a", how)
    clock.advance(9)
    assert put(broker, unique("b", unique_for=10)).record.id == "a"
    clock.advance(1)
    assert put(broker, unique("b", unique_for=10)).created


def test_a_job_dead_of_stalls_starts_the_hold(broker, clock):
    put(broker, unique("a", unique_for=10))
    claim_one(broker)
    clock.advance(31)  # past the lease: its worker died
    assert [r.state for r in broker.recover(max_stalled=0)] == [DEAD]
    clock.advance(9)
    assert put(broker, unique("b", unique_for=10)).record.id == "a"
    clock.advance(1)
    assert put(broker, unique("b", unique_for=10)).created


def test_a_retry_waits_without_holding_nothing_more_than_its_end(broker, clock):
    # A failed run that is retried later has not ended: the key stays held.
    put(broker, unique("a", unique_for=10))
    job = claim_one(broker)
    assert broker.fail(lease_of(job), boom(), START + 100)
    clock.advance(50)
    assert put(broker, unique("b", unique_for=10)).record.id == "a"


@pytest.mark.parametrize("state", [COMPLETED, DEAD, CANCELLED])
def test_the_hold_survives_the_deletion_of_the_ended_job(broker, clock, state):
    put(broker, unique("a", unique_for=60))
    clock.advance(2)
    finish(broker, "a", state)
    assert broker.trim("default", state, keep=0) == 1
    assert broker.get("a") is None

    clock.advance(30)
    held = put(broker, unique("b", unique_for=60, payload='{"args":[9]}', priority=4))
    assert not held.created and broker.get("b") is None
    record = held.record  # rebuilt from the lock: the holder's id, state and times
    assert (record.id, record.state, record.queue, record.seq) == ("a", state, "default", 0)
    assert (record.created_at, record.finished_at) == (START, START + 2)
    assert (record.payload, record.priority) == ('{"args":[9]}', 4)  # this call's
    assert broker.counts() == {}

    clock.advance(30)
    assert put(broker, unique("c", unique_for=60)).created


def test_purge_frees_the_key_of_jobs_that_never_ran(broker, clock):
    put(broker, unique("a"))
    put(broker, unique("d", key="later", run_at=START + 60))
    assert broker.purge("default", ["waiting", "delayed"]) == 2
    assert put(broker, unique("b")).created
    assert put(broker, unique("e", key="later")).created


def test_purging_an_ended_job_keeps_its_hold(broker, clock):
    put(broker, unique("a", unique_for=60))
    finish(broker, "a", COMPLETED)
    assert broker.purge("default", ["completed"]) == 1
    assert put(broker, unique("b", unique_for=60)).record.id == "a"


def test_retry_within_the_hold_takes_the_key_again(broker, clock):
    put(broker, unique("a", unique_for=10))
    finish(broker, "a", DEAD)
    clock.advance(5)
    assert broker.retry(["a"]) == 1
    clock.advance(100)  # long after the first end: it runs again, so it holds the key
    assert put(broker, unique("b", unique_for=10)).record.id == "a"
    finish(broker, "a", COMPLETED)
    clock.advance(9)
    assert put(broker, unique("b", unique_for=10)).record.id == "a"
    clock.advance(1)
    assert put(broker, unique("b", unique_for=10)).created


def test_retry_after_the_hold_runs_without_the_key(broker, clock):
    put(broker, unique("a", unique_for=10))
    finish(broker, "a", DEAD)
    clock.advance(10)
    assert broker.retry(["a"]) == 1
    assert put(broker, unique("b", unique_for=10)).created  # the key was free
    assert put(broker, unique("c", unique_for=10)).record.id == "b"
    a, b = claim(broker)
    assert (a.id, b.id) == ("a", "b")
    assert broker.complete([(lease_of(a), '"ok"')]) == [True]  # leaves b's hold alone
    clock.advance(100)
    assert put(broker, unique("c", unique_for=10)).record.id == "b"


def test_duplicates_inside_one_call_store_one_job(broker):
    results = broker.enqueue(
        [unique("a"), new_job("plain"), unique("b"), unique("x", key="other"), unique("c")]
    )
    assert [r.created for r in results] == [True, True, False, True, False]
    assert [r.record.id for r in results] == ["a", "plain", "a", "x", "a"]
    assert ids(claim(broker)) == ["a", "plain", "x"]


def test_keys_are_per_queue(broker):
    assert put(broker, unique("a", queue="one")).created
    assert put(broker, unique("b", queue="two")).created
    assert put(broker, unique("c", queue="one")).record.id == "a"
    assert put(broker, unique("d", queue="two")).record.id == "b"


def test_a_job_id_as_the_key(broker, clock):
    # The app makes the job id the key when the caller chose one.
    assert put(broker, unique("report", key="report", unique_for=60)).created
    finish(broker, "report", COMPLETED)
    clock.advance(30)
    # Without unique_for an ended id is replaced; with it, the hold wins.
    held = put(broker, unique("report", key="report", unique_for=60))
    assert not held.created and held.record.state == COMPLETED
    clock.advance(30)
    again = put(broker, unique("report", key="report", unique_for=60))
    assert again.created and again.record.state == WAITING


def test_an_unended_job_named_by_id_is_returned_and_takes_no_key(broker, clock):
    add_one(broker, "j")  # no key
    found = put(broker, unique("j", key="j", unique_for=60))
    assert not found.created and found.record.id == "j"
    finish(broker, "j", COMPLETED)
    assert put(broker, unique("j", key="j", unique_for=60)).created  # no hold was made


def test_jobs_without_a_key_are_not_held(broker):
    put(broker, unique("a", key="k"))
    assert put(broker, new_job("b")).created
    assert broker.counts()["default"][WAITING] == 2


def test_a_key_with_braces_and_spaces(broker, clock):
    key = "} {odd} key:1 " + "é" * 50
    assert put(broker, unique("a", key=key, unique_for=1)).created
    assert put(broker, unique("b", key=key, unique_for=1)).record.id == "a"
    finish(broker, "a", CANCELLED)
    clock.advance(1)
    assert put(broker, unique("b", key=key, unique_for=1)).created


def test_many_holds_run_out(broker, clock):
    for n in range(50):
        put(broker, unique(f"a{n}", key=f"k{n}", unique_for=1 + n % 3))
        broker.cancel(f"a{n}")
    clock.advance(3)
    broker.trim("default", CANCELLED, keep=0)
    assert all(put(broker, unique(f"b{n}", key=f"k{n}")).created for n in range(50))


def test_a_unique_job_sent_twice_is_stored_once(broker):
    # A retry after a lost connection sends the same call again.
    job = unique("generated")
    job.generated_id = True
    assert put(broker, job).created
    assert put(broker, job).record.id == "generated"
    assert ids(claim(broker)) == ["generated"]
    assert sum(broker.counts()["default"].values()) == 1
