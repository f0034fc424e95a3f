"""The controls of issue 13 meeting each other: a unique job held back by its
rate-limit bucket, a scheduled tick of a keyed task, a paused queue under a
concurrency cap. Each was built on its own; these are the seams."""

from __future__ import annotations

from conveyor.brokers.base import NewJob, RateLimit, Tick

from .conftest import START, add, claim, ids, lease_of, new_job
from .test_limits import limit

TASK = "tasks.sync_customer"


def unique(job_id: str, key: str, rate_key: str | None) -> NewJob:
    job = new_job(job_id, task=TASK, rate_key=rate_key)
    job.unique_key, job.unique_for = key, 3600.0
    return job


def test_a_unique_job_held_back_by_its_bucket_still_holds_its_key(broker, clock):
    limit(broker, task_rates={TASK: RateLimit(1, 60.0)})
    add(broker, unique("first", "k1", '"acme"'))
    add(broker, unique("second", "k2", '"acme"'))
    assert ids(claim(broker)) == ["first"]  # "second" is held back by its full bucket
    assert claim(broker) == []

    again = broker.enqueue([unique("again", "k2", '"acme"')])[0]
    assert not again.created
    assert again.record.id == "second"
    assert again.record.state == "waiting"  # held back is waiting, to every reader


def test_purging_a_held_back_unique_job_frees_its_key(broker, clock):
    limit(broker, task_rates={TASK: RateLimit(1, 60.0)})
    add(broker, unique("first", "k1", '"acme"'), unique("second", "k2", '"acme"'))
    assert ids(claim(broker)) == ["first"]
    assert claim(broker) == []  # "second" set aside now, where a store parks it

    assert broker.purge("default", ["waiting"]) == 1
    fresh = broker.enqueue([unique("fresh", "k2", '"acme"')])[0]
    assert fresh.created  # the purged job never ran: its key is free


def test_cancelling_a_held_back_unique_job_ends_its_key_and_frees_its_line(broker, clock):
    limit(broker, task_rates={TASK: RateLimit(1, 60.0)})
    add(broker, unique("first", "k1", '"acme"'), unique("second", "k2", '"acme"'))
    assert ids(claim(broker)) == ["first"]
    assert claim(broker) == []
    assert broker.cancel("second")
    assert broker.counts()["default"]["waiting"] == 0
    # cancelled: the key is held unique_for more, as for any ended job
    assert broker.enqueue([unique("later", "k2", '"acme"')])[0].record.id == "second"
    clock.advance(61)
    assert claim(broker) == []  # nothing left in the bucket's line


def test_a_tick_of_a_keyed_task_lands_in_its_bucket(broker, clock):
    limit(broker, task_rates={TASK: RateLimit(1, 60.0)})
    job = new_job("periodic:feed:x", task=TASK, rate_key='"acme"')
    assert broker.fire([Tick("feed", int(START), job)]) == [True]
    assert broker.get("periodic:feed:x").rate_key == '"acme"'
    add(broker, new_job("same-key", task=TASK, rate_key='"acme"'))
    add(broker, new_job("other-key", task=TASK, rate_key='"globex"'))
    assert ids(claim(broker)) == ["periodic:feed:x", "other-key"]  # one start per key


def test_a_paused_capped_queue_hands_out_nothing_and_resumes_within_its_cap(broker, clock):
    limit(broker, concurrency={"default": 2})
    add(broker, *(new_job(f"j{i}") for i in range(4)))
    broker.pause("default")
    assert claim(broker) == []
    broker.resume("default")
    running = claim(broker)
    assert ids(running) == ["j0", "j1"]
    assert broker.complete([(lease_of(running[0]), "null")]) == [True]
    assert ids(claim(broker)) == ["j2"]
