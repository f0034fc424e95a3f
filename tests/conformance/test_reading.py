"""Reading and housekeeping: counts, pending, list, and trim."""

from __future__ import annotations

import pytest

from conveyor.brokers.base import STATES

from .conftest import START, add, add_one, claim, ids, lease_of, make_state, new_job


def zeros(**counts: int) -> dict[str, int]:
    return {state: counts.get(state, 0) for state in STATES}


def test_counts_of_an_empty_store(broker):
    assert broker.counts() == {}


def test_counts_has_every_state_for_every_queue(broker, clock):
    for state in ("waiting", "waiting", "delayed", "active", "completed", "dead"):
        make_state(broker, clock, state, queue="a")
    make_state(broker, clock, "cancelled", queue="b")

    assert broker.counts() == {
        "a": zeros(waiting=2, delayed=1, active=1, completed=1, dead=1),
        "b": zeros(cancelled=1),
    }


def test_a_queue_whose_jobs_are_all_trimmed_leaves_counts(broker, clock):
    make_state(broker, clock, "completed", queue="gone")
    make_state(broker, clock, "completed", queue="stays")

    assert broker.trim("gone", "completed", keep=0) == 1
    assert list(broker.counts()) == ["stays"]


def test_pending_counts_what_a_worker_could_still_run(broker, clock):
    make_state(broker, clock, "waiting", queue="q")
    make_state(broker, clock, "active", queue="q")
    add(
        broker,
        new_job(queue="q", run_at=START + 10),  # due once the clock moves
        new_job(queue="q", run_at=START + 1000),  # not due: a burst worker may stop
    )
    for state in ("completed", "dead", "cancelled"):
        make_state(broker, clock, state, queue="q")
    make_state(broker, clock, "waiting", queue="other")

    assert broker.pending(["q"]) == 2
    clock.advance(10)
    assert broker.pending(["q"]) == 3
    assert broker.pending(["q", "other"]) == 4
    assert broker.pending(["other"]) == 1
    assert broker.pending(["nothing-here"]) == 0
    assert broker.pending([]) == 0


def test_pending_is_zero_when_only_future_jobs_remain(broker):
    add_one(broker, run_at=START + 60)
    assert broker.pending(["default"]) == 0


def test_list_is_in_seq_order_and_filters(broker, clock):
    add(broker, new_job("a1", queue="a"), new_job("b1", queue="b"), new_job("a2", queue="a"))
    add_one(broker, "a3", queue="a", run_at=START + 60)
    claim(broker, ["a"], limit=1)  # a1 becomes active

    assert ids(broker.list()) == ["a1", "b1", "a2", "a3"]
    assert ids(broker.list(queue="a")) == ["a1", "a2", "a3"]
    assert ids(broker.list(state="waiting")) == ["b1", "a2"]
    assert ids(broker.list(queue="a", state="waiting")) == ["a2"]
    assert ids(broker.list(queue="a", state="delayed")) == ["a3"]
    assert ids(broker.list(state="active")) == ["a1"]
    assert broker.list(queue="nope") == []
    assert broker.list(state="dead") == []
    assert ids(broker.list(limit=2)) == ["a1", "b1"]
    assert broker.list()[0] == broker.get("a1")


def test_list_pages_with_a_cursor(broker):
    add(broker, *(new_job(f"j{i}", queue="a" if i % 3 else "b") for i in range(10)))
    expected = ids(broker.list(queue="a"))
    assert len(expected) == 6

    pages, after = [], None
    for _ in range(5):  # bounded, so a cursor that never moves fails instead of hanging
        page = broker.list(queue="a", limit=4, after=after)
        if not page:
            break
        pages.append(ids(page))
        after = page[-1].seq
    assert pages == [expected[:4], expected[4:]]

    seqs = [j.seq for j in broker.list()]
    assert seqs == sorted(seqs)
    assert ids(broker.list(after=seqs[-1])) == []
    assert ids(broker.list(after=seqs[4], limit=2)) == ["j5", "j6"]


def finish_at(broker, clock, times: list[float], state: str = "completed", queue: str = "q"):
    """One job per time, each finished (completed or dead) at that clock time."""
    made = []
    for at in times:
        clock.set(at)
        made.append(make_state(broker, clock, state, queue=queue).id)
    return made


def test_trim_keeps_the_most_recently_finished(broker, clock):
    # Finish them out of enqueue order so "recent" cannot be confused with seq.
    old, newest, middle, oldest = finish_at(
        broker, clock, [START + 2, START + 9, START + 5, START + 1]
    )
    others = [
        make_state(broker, clock, "dead", queue="q").id,
        make_state(broker, clock, "waiting", queue="q").id,
        make_state(broker, clock, "completed", queue="other").id,
    ]

    assert broker.trim("q", "completed", keep=2) == 2

    assert ids(broker.list(queue="q", state="completed")) == [newest, middle]
    assert broker.get(old) is None and broker.get(oldest) is None
    assert all(broker.get(i) is not None for i in others)
    assert broker.trim("q", "completed", keep=2) == 0


def test_trim_older_than(broker, clock):
    jobs = finish_at(broker, clock, [START + 1, START + 2, START + 3, START + 4])

    assert broker.trim("q", "completed", older_than=START + 2.5) == 2
    assert ids(broker.list(queue="q")) == jobs[2:]


def test_trim_with_both_limits_deletes_either(broker, clock):
    jobs = finish_at(broker, clock, [START + 1, START + 2, START + 3, START + 4, START + 5])

    # keep=3 would delete the two oldest; older_than also deletes the third.
    assert broker.trim("q", "completed", keep=3, older_than=START + 3.5) == 3
    assert ids(broker.list(queue="q")) == jobs[3:]


@pytest.mark.parametrize("state", ["dead", "cancelled"])
def test_trim_per_state(broker, clock, state):
    finish_at(broker, clock, [START + 1, START + 2], state=state)
    kept = finish_at(broker, clock, [START + 1], state="completed")

    assert broker.trim("q", state, keep=0) == 2
    assert ids(broker.list(queue="q")) == kept
    assert broker.counts()["q"] == zeros(completed=1)


def test_trim_of_a_large_backlog_deletes_it_all(broker, clock):
    # More than any store's per-call batch: trim must keep going until done.
    add(broker, *(new_job(f"big{i}") for i in range(2_500)))
    while claimed := claim(broker, limit=500):
        for start in range(0, len(claimed), 10):  # ten at a time, each later than the last
            clock.advance(1)
            assert all(
                broker.complete([(lease_of(j), "null") for j in claimed[start : start + 10]])
            )
    assert broker.trim("default", "completed", keep=10) == 2_490
    assert broker.counts()["default"]["completed"] == 10
    assert {j.id for j in broker.list(state="completed", limit=100)} == {
        f"big{i}" for i in range(2_490, 2_500)
    }
