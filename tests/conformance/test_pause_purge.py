"""Pause, resume and purge: a paused queue hands out nothing, everywhere, and
loses nothing; purge deletes exactly the states asked for, never active jobs."""

from __future__ import annotations

import pytest

from conveyor.brokers.base import PURGEABLE_STATES, Broker

from .conftest import (
    START,
    add,
    add_one,
    claim,
    claim_one,
    ids,
    lease_of,
    make_state,
    new_job,
    state_of,
)
from .test_concurrency import door_wait, ended, in_thread, wait_and_claim_in_thread


def test_a_paused_queue_hands_out_nothing_and_still_takes_jobs(broker):
    first = add_one(broker)
    assert broker.pause("default") is True
    assert broker.pause("default") is False  # already paused
    assert broker.paused() == {"default"}
    assert claim(broker) == []
    assert broker.complete_and_claim([], ["default"], 10, 30.0, "w1") == ([], [])
    second = add_one(broker)  # enqueue goes on
    assert broker.counts()["default"]["waiting"] == 2

    assert broker.resume("default") is True
    assert broker.resume("default") is False  # not paused any more
    assert broker.paused() == set()
    assert ids(claim(broker)) == [first.id, second.id]  # in their order, none lost


def test_a_queue_that_never_held_a_job_can_be_paused(broker):
    assert broker.pause("quiet") is True
    assert broker.paused() == {"quiet"}
    add_one(broker, queue="quiet")
    assert claim(broker, ["quiet"]) == []
    assert broker.resume("quiet") is True


def test_a_paused_queue_does_not_hold_up_the_others(broker):
    add_one(broker, "first", queue="urgent")
    add_one(broker, "second", queue="default")
    broker.pause("urgent")
    assert ids(claim(broker, ["urgent", "default"])) == ["second"]
    assert broker.paused() == {"urgent"}
    assert state_of(broker, "first") == "waiting"


def test_jobs_running_when_a_queue_is_paused_end_as_usual(broker, clock):
    add_one(broker, "done")
    add_one(broker, "retried")
    done, retried = claim(broker, limit=2)
    broker.pause("default")
    assert broker.complete([(lease_of(done), '"ok"')]) == [True]
    assert broker.extend([lease_of(retried)], 30.0) == []
    assert broker.fail(lease_of(retried), _error(), clock.now())  # retry at once
    assert state_of(broker, "done") == "completed"
    assert state_of(broker, "retried") == "waiting"
    assert claim(broker) == []  # the retry waits for the resume
    broker.resume("default")
    assert ids(claim(broker)) == ["retried"]


def test_delayed_jobs_come_due_while_paused_and_run_after_the_resume(broker, clock):
    add(broker, new_job("later", run_at=START + 60))
    broker.pause("default")
    clock.advance(120)
    assert claim(broker) == []
    broker.resume("default")
    assert ids(claim(broker)) == ["later"]


def test_a_paused_queue_is_neither_pending_nor_due(broker, clock):
    """A burst worker on a paused queue stops (only its active jobs count), and
    an idle worker does not wake for a delayed job it may not claim."""
    add_one(broker, "running")
    claim_one(broker)
    add_one(broker, "ready")
    add(broker, new_job("later", run_at=START + 60))
    clock.advance(120)  # "later" is due too
    assert broker.pending(["default"]) == 3
    broker.pause("default")
    assert broker.pending(["default"]) == 1
    assert broker.next_due(["default"]) is None
    broker.resume("default")
    assert broker.pending(["default"]) == 3
    assert broker.next_due(["default"]) == START + 60


def test_resume_wakes_an_idle_wait(broker):
    add_one(broker, "paused-one")
    broker.pause("default")
    assert claim(broker) == []  # as a worker would, before it waits
    thread, _ = in_thread(broker, lambda: broker.wait_for_work(["default"], 30.0))
    broker.resume("default")
    assert ended(thread), "the wait was not woken"


def test_resume_wakes_a_wait_that_then_claims(broker):
    add_one(broker, "paused-one")
    broker.pause("default")
    assert claim(broker) == []
    thread, results = wait_and_claim_in_thread(broker, limit=5)
    broker.resume("default")
    assert ended(thread), "the wait was not woken"
    assert ids(results[0]) == ["paused-one"]


def test_resume_wakes_the_doors_wait(broker, clock):
    add_one(broker, "paused-one")
    broker.pause("default")

    def resume(broker: Broker, clock) -> None:
        assert broker.resume("default")

    assert ids(door_wait(broker, clock, resume)) == ["paused-one"]


# -- purge -------------------------------------------------------------------


def test_purge_deletes_the_states_asked_for_and_says_how_many(broker, clock):
    made = {state: make_state(broker, clock, state, job_id=state) for state in PURGEABLE_STATES}
    make_state(broker, clock, "active", job_id="active")
    add_one(broker, "elsewhere", queue="other")

    assert broker.purge("default", ["waiting", "delayed"]) == 2
    assert state_of(broker, "waiting") is None and state_of(broker, "delayed") is None
    assert broker.purge("default", ["waiting", "delayed"]) == 0
    assert broker.purge("default", ["completed", "dead", "cancelled"]) == 3
    assert all(state_of(broker, job.id) is None for job in made.values())
    assert state_of(broker, "active") == "active"  # never
    assert state_of(broker, "elsewhere") == "waiting"  # another queue: untouched
    assert broker.counts() == {
        "default": {**dict.fromkeys(broker.counts()["default"], 0), "active": 1},
        "other": {**dict.fromkeys(broker.counts()["other"], 0), "waiting": 1},
    }


def test_purge_takes_every_kind_of_ready_job_and_frees_their_ids(broker, clock):
    """New jobs, prioritized ones, and jobs ready again after a release: all
    waiting, all purged (Redis keeps them in different keys); more than one
    batch of them; the ids may be used again, and nothing stale is claimed."""
    broker.enqueue([new_job(f"plain-{i}") for i in range(2_100)])
    add_one(broker, "urgent", priority=5)
    add_one(broker, "released")
    released = next(j for j in claim(broker, limit=3_000) if j.id == "released")
    others = [lease_of(j) for j in broker.list(state="active", limit=3_000) if j.id != "released"]
    assert broker.release([*others, lease_of(released)]) == 2_102
    assert broker.purge("default", ["waiting"]) == 2_102
    assert claim(broker) == []
    assert broker.counts() == {}
    again = add_one(broker, "urgent")
    assert ids(claim(broker)) == [again.id]


def test_purge_refuses_active_and_unknown_states(broker, clock):
    make_state(broker, clock, "active", job_id="running")
    for states in (["active"], ["waiting", "active"], ["finished"], []):
        with pytest.raises(ValueError, match="never active"):
            broker.purge("default", states)
    assert state_of(broker, "running") == "active"


def test_a_purged_paused_queue_stays_paused(broker):
    add_one(broker)
    broker.pause("default")
    assert broker.purge("default", ["waiting"]) == 1
    assert broker.paused() == {"default"}


def _error():
    from .conftest import boom

    return boom()
