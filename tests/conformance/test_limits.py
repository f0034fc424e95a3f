"""Flow control enforced by the store at claim time (``Broker.controls``):
queue rate limits (a sliding window of job starts), concurrency caps (jobs
active with an unexpired lease), and per-task rate limits per bucket (the
job's ``rate_key``, or one shared bucket for jobs without one).

The window is sliding: a start at ``t`` counts against its window until
``t + period`` exactly, when its slot frees; a fixed window would let
2 x limit through across its edge. Held-back jobs stay waiting in their
place, spend no attempt, and hold up nothing of other queues or buckets.
"""

from __future__ import annotations

import time

from conveyor.brokers.base import NO_CONTROLS, Broker, Controls, JobRecord, RateLimit

from .conftest import (
    LEASE,
    START,
    add,
    add_one,
    boom,
    claim,
    claim_one,
    ids,
    lease_of,
    new_job,
    state_of,
)
from .test_concurrency import LONG_WAIT, ended, in_thread, wait_and_claim_in_thread

SYNC = "tasks.sync_customer"  # the task limited per bucket in these tests


def limit(
    broker: Broker,
    *,
    queue_rates: dict[str, RateLimit] | None = None,
    concurrency: dict[str, int] | None = None,
    task_rates: dict[str, RateLimit] | None = None,
) -> None:
    """Set the store's controls as the app does: one new ``Controls`` at once."""
    broker.controls = Controls(
        queue_rates=queue_rates or {}, concurrency=concurrency or {}, task_rates=task_rates or {}
    )


def fill(broker: Broker, count: int, prefix: str = "j", **fields) -> list[JobRecord]:
    return add(broker, *(new_job(f"{prefix}{i}", **fields) for i in range(count)))


def for_customer(job_id: str, key: str | None, task: str = SYNC, **fields):
    return new_job(job_id, task=task, rate_key=key, **fields)


def complete(broker: Broker, *jobs: JobRecord) -> None:
    assert broker.complete([(lease_of(job), "null") for job in jobs]) == [True] * len(jobs)


def timed_wait(call) -> float:
    began = time.monotonic()
    call()
    return time.monotonic() - began


# -- queue rate limits: a sliding window of starts ----------------------------


def test_a_queue_rate_limit_hands_out_n_starts_per_window(broker, clock):
    limit(broker, queue_rates={"default": RateLimit(3, 10.0)})
    fill(broker, 10)

    assert ids(claim(broker)) == ["j0", "j1", "j2"]
    assert claim(broker) == []
    clock.advance(9.5)
    assert claim(broker) == []  # the first starts still count
    clock.advance(0.5)  # START + 10: a start at t frees its slot at t + period exactly
    assert ids(claim(broker)) == ["j3", "j4", "j5"]
    assert claim(broker) == []


def test_the_window_slides_it_is_not_a_fixed_one(broker, clock):
    """Starts at 0 and 5 with 2 per 10 s: at 10 one slot is free (the start
    at 0 left the window), not two (a fixed window would restart at 10 and
    let 4 through between 5 and 15)."""
    limit(broker, queue_rates={"default": RateLimit(2, 10.0)})
    fill(broker, 10)

    assert len(claim(broker, limit=1)) == 1  # at 0
    clock.advance(5)
    assert len(claim(broker)) == 1  # at 5: the second slot
    clock.advance(4.5)
    assert claim(broker) == []  # at 9.5
    clock.advance(0.5)
    assert len(claim(broker)) == 1  # at 10: the start at 0 has left the window
    clock.advance(4.75)
    assert claim(broker) == []  # at 14.75: starts at 5 and 10 are in it
    clock.advance(0.25)
    assert len(claim(broker)) == 1  # at 15: the start at 5 has left it


def test_every_way_of_claiming_counts_against_one_window(broker, clock):
    """claim, complete_and_claim and wait_and_claim, by several workers: one
    window for the queue, summed; a released job's start counts too."""
    limit(broker, queue_rates={"default": RateLimit(5, 60.0)})
    fill(broker, 20)

    first = claim_one(broker, worker="w1")
    _, second = broker.complete_and_claim([(lease_of(first), "null")], ["default"], 1, LEASE, "w2")
    third = broker.wait_and_claim(["default"], 1, LEASE, "w3", LONG_WAIT)  # ready: at once
    assert broker.release([lease_of(third[0])]) == 1  # its start still counts
    fourth = claim(broker, limit=10, worker="w4")
    assert len(second) == len(third) == 1 and len(fourth) == 2

    assert claim(broker, worker="w5") == []
    assert broker.complete_and_claim([], ["default"], 10, LEASE, "w6") == ([], [])
    assert broker.wait_and_claim(["default"], 10, LEASE, "w7", 0.05) == []
    assert broker.counts()["default"]["active"] == 3
    # A second past the window: Redis's waiting claim dates its start by the
    # server time its wait took, a few real ms after the FakeClock's now.
    clock.advance(61)
    assert len(claim(broker)) == 5


def test_held_back_jobs_stay_waiting_in_place_and_spend_nothing(broker, clock):
    limit(broker, queue_rates={"default": RateLimit(1, 60.0)})
    fill(broker, 3)
    assert ids(claim(broker)) == ["j0"]

    assert claim(broker) == []
    for job_id in ("j1", "j2"):
        held = broker.get(job_id)
        assert (held.state, held.attempts, held.started_at) == ("waiting", 0, None)
    assert broker.pending(["default"]) == 3  # a burst worker still has work to wait for
    add_one(broker, "urgent", priority=5)
    clock.advance(60)
    assert ids(claim(broker)) == ["urgent"]  # the line's order, held back or not
    clock.advance(60)
    (next_one,) = claim(broker)
    assert (next_one.id, next_one.attempts) == ("j1", 1)


def test_a_limited_queue_does_not_hold_back_other_queues(broker, clock):
    limit(broker, queue_rates={"slow": RateLimit(1, 60.0)})
    fill(broker, 3, "s", queue="slow")
    fill(broker, 2, "f", queue="fast")

    assert ids(claim(broker, ["slow", "fast"])) == ["s0", "f0", "f1"]
    assert state_of(broker, "s1") == "waiting"


def test_queues_whose_names_look_alike_keep_their_own_limits(broker, clock):
    """Names that extend each other (as store keys would) share nothing."""
    names = ["q", "q:starts", "q:cap", "q.1", "Q"]
    limit(
        broker,
        queue_rates={name: RateLimit(1, 60.0) for name in names},
        concurrency={name: 1 for name in names},
    )
    for name in names:
        fill(broker, 2, f"{name}-", queue=name)
    assert ids(claim(broker, names)) == [f"{name}-0" for name in names]
    assert claim(broker, names) == []


def test_queues_and_tasks_without_controls_are_unaffected(broker, clock):
    limit(
        broker,
        queue_rates={"other": RateLimit(1, 60.0)},
        concurrency={"other": 1},
        task_rates={"tasks.other": RateLimit(1, 60.0)},
    )
    fill(broker, 300)
    assert len(claim(broker, limit=1_000)) == 300


def test_limits_take_effect_and_end_as_the_controls_change(broker, clock):
    fill(broker, 10)
    assert len(claim(broker, limit=2)) == 2  # no controls: no starts counted
    limit(broker, queue_rates={"default": RateLimit(2, 60.0)})
    assert len(claim(broker)) == 2
    assert claim(broker) == []
    limit(broker, queue_rates={"default": RateLimit(3, 60.0)})  # raised: one more now
    assert len(claim(broker)) == 1
    broker.controls = NO_CONTROLS
    assert len(claim(broker)) == 5


def test_a_fractional_period(broker, clock):
    limit(broker, queue_rates={"default": RateLimit(1, 0.25)})
    fill(broker, 3)
    assert len(claim(broker)) == 1
    assert claim(broker) == []
    assert broker.next_due(["default"]) == START + 0.25
    clock.advance(0.25)
    assert len(claim(broker)) == 1


def test_next_due_says_when_the_window_opens(broker, clock):
    limit(broker, queue_rates={"default": RateLimit(2, 10.0)})
    assert broker.next_due(["default"]) is None
    fill(broker, 5)
    claim(broker, limit=1)
    assert broker.next_due(["default"]) is None  # a slot is free: nothing held back
    clock.advance(2)
    claim(broker, limit=1)
    assert broker.next_due(["default"]) == START + 10  # the oldest start leaves the window
    clock.advance(8)
    claim(broker, limit=1)
    assert broker.next_due(["default"]) == START + 12
    add(broker, new_job("delayed", run_at=START + 11))
    assert broker.next_due(["default"]) == START + 11  # the sooner of the two


def test_next_due_is_none_when_nothing_is_held_back(broker, clock):
    """A full window with no waiting job, or a paused queue: nothing to wake for."""
    limit(broker, queue_rates={"default": RateLimit(1, 60.0)})
    add_one(broker, "only")
    claim_one(broker)
    assert broker.next_due(["default"]) is None
    add_one(broker, "held")
    assert broker.next_due(["default"]) == START + 60
    broker.pause("default")
    assert broker.next_due(["default"]) is None


# -- concurrency caps: jobs active with an unexpired lease --------------------


def test_a_concurrency_cap_counts_active_jobs(broker, clock):
    limit(broker, concurrency={"default": 2})
    fill(broker, 8)

    running = claim(broker)
    assert ids(running) == ["j0", "j1"]
    assert claim(broker) == []
    assert state_of(broker, "j2") == "waiting"

    complete(broker, running[0])  # a completion frees a slot
    assert ids(claim(broker)) == ["j2"]
    assert broker.fail(lease_of(running[1]), boom(), None)  # dead: frees one
    assert ids(claim(broker)) == ["j3"]
    assert claim(broker) == []


def test_a_retry_and_a_release_free_their_slots(broker, clock):
    limit(broker, concurrency={"default": 1})
    fill(broker, 3)
    (first,) = claim(broker)
    assert broker.fail(lease_of(first), boom(), clock.now() + 30)  # retried later
    (second,) = claim(broker)
    assert broker.release([lease_of(second)]) == 1
    assert ids(claim(broker, limit=5)) == ["j1"]  # released: back in its place, one slot


def test_the_cap_holds_across_complete_and_claim_and_several_workers(broker, clock):
    limit(broker, concurrency={"default": 3})
    fill(broker, 10)
    a = claim(broker, limit=2, worker="a")
    b = claim(broker, limit=5, worker="b")
    assert (len(a), len(b)) == (2, 1)
    accepted, more = broker.complete_and_claim(
        [(lease_of(a[0]), "null")], ["default"], 10, LEASE, "a"
    )
    assert accepted == [True] and len(more) == 1  # the slot it freed, no more
    assert broker.wait_and_claim(["default"], 10, LEASE, "c", 0.05) == []


def test_an_expired_lease_frees_its_slot_before_recover_runs(broker, clock):
    """A dead worker's share comes back when its lease runs out."""
    limit(broker, concurrency={"default": 2})
    fill(broker, 5)
    broker.claim(["default"], 1, 10.0, "dies-soon")
    broker.claim(["default"], 1, 30.0, "dies-later")
    assert claim(broker) == []
    assert broker.next_due(["default"]) == START + 10  # the earliest lease's end
    clock.advance(10)
    assert ids(claim(broker)) == ["j2"]  # j0's lease expired; recover has not run
    assert state_of(broker, "j0") == "active"
    assert broker.next_due(["default"]) == START + 30
    assert [r.job_id for r in broker.recover(max_stalled=3)] == ["j0"]
    assert claim(broker) == []  # j0 waits again, the cap is full (j1, j2)


def test_an_extended_lease_keeps_its_slot(broker, clock):
    limit(broker, concurrency={"default": 1})
    fill(broker, 2)
    (job,) = claim(broker)
    clock.advance(LEASE - 1)
    assert broker.extend([lease_of(job)], LEASE) == []
    clock.advance(2)
    assert claim(broker) == []
    assert broker.next_due(["default"]) == START + 2 * LEASE - 1


def test_a_capped_queue_does_not_hold_back_others(broker, clock):
    limit(broker, concurrency={"capped": 1})
    fill(broker, 3, "c", queue="capped")
    fill(broker, 2, "o", queue="open")
    assert ids(claim(broker, ["capped", "open"])) == ["c0", "o0", "o1"]
    assert ids(claim(broker, ["capped", "open"])) == []


def test_a_cap_and_a_rate_together(broker, clock):
    limit(broker, queue_rates={"default": RateLimit(3, 60.0)}, concurrency={"default": 2})
    fill(broker, 6)
    running = claim(broker)
    assert len(running) == 2  # the cap
    complete(broker, *running)
    assert len(claim(broker)) == 1  # the rate: 3 starts in the window
    assert broker.next_due(["default"]) == START + 60


# -- per-task limits per bucket (rate_key) ------------------------------------


def test_each_key_has_its_own_bucket(broker, clock):
    limit(broker, task_rates={SYNC: RateLimit(1, 60.0)})
    add(
        broker,
        for_customer("a1", '"acme"'),
        for_customer("a2", '"acme"'),
        for_customer("b1", '"bolt"'),
        for_customer("b2", '"bolt"'),
        new_job("other"),  # another task: no limit
    )
    assert ids(claim(broker)) == ["a1", "b1", "other"]
    assert claim(broker) == []
    assert broker.next_due(["default"]) == START + 60
    clock.advance(60)
    assert ids(claim(broker)) == ["a2", "b2"]


def test_a_full_key_does_not_hold_up_the_keys_behind_it(broker, clock):
    """A backlog of one key at the head of the line; the claims take one job
    at a time, so a store that looked only at the head would find nothing."""
    limit(broker, task_rates={SYNC: RateLimit(2, 60.0)})
    broker.enqueue([for_customer(f"big{i}", '"big"') for i in range(1_500)])
    add(broker, for_customer("small1", '"small"'), for_customer("small2", '"small"'))
    add(broker, for_customer("small3", '"small"'))

    assert ids(claim(broker, limit=1)) == ["big0"]
    assert ids(claim(broker, limit=1)) == ["big1"]
    assert ids(claim(broker, limit=1)) == ["small1"]
    assert ids(claim(broker, limit=5)) == ["small2"]
    assert claim(broker) == []
    clock.advance(60)
    assert ids(claim(broker)) == ["big2", "big3", "small3"]


def test_jobs_without_a_key_share_one_bucket_and_are_still_limited(broker, clock):
    limit(broker, task_rates={SYNC: RateLimit(2, 60.0)})
    add(
        broker,
        *(for_customer(f"n{i}", None) for i in range(4)),
        for_customer("keyed", '"acme"'),
    )
    assert ids(claim(broker)) == ["n0", "n1", "keyed"]
    assert claim(broker) == []
    clock.advance(60)
    assert ids(claim(broker)) == ["n2", "n3"]


def test_buckets_are_per_task_and_the_key_is_text(broker, clock):
    """The same key for two limited tasks: two buckets. Keys that look
    alike as values but differ as text are different buckets; hostile text
    (a brace, a newline, a 20-digit number) is just a key."""
    other = "tasks.{other}: a}b"  # a hash tag's braces in a task name
    limit(broker, task_rates={SYNC: RateLimit(1, 60.0), other: RateLimit(1, 60.0)})
    keys = ['"1"', "1", '"a}b"', '"a\\nb"', "12345678901234567890", '{"id":{"x":"}"}}']
    add(
        broker,
        *(for_customer(f"k{i}", key) for i, key in enumerate(keys)),
        *(for_customer(f"again{i}", key) for i, key in enumerate(keys)),
        for_customer("other-task", '"1"', task=other),
        for_customer("other-again", '"1"', task=other),
    )
    assert ids(claim(broker)) == [*(f"k{i}" for i in range(len(keys))), "other-task"]
    assert claim(broker) == []
    clock.advance(60)
    assert ids(claim(broker)) == [*(f"again{i}" for i in range(len(keys))), "other-again"]


def test_jobs_held_back_by_their_bucket_are_waiting_to_every_reader(broker, clock):
    """However a store sets them aside, they are waiting jobs: listed, counted
    and pending as such, and they can be cancelled and purged."""
    limit(broker, task_rates={SYNC: RateLimit(1, 60.0)})
    add(broker, *(for_customer(f"a{i}", '"acme"') for i in range(4)))
    assert ids(claim(broker)) == ["a0"]
    assert claim(broker) == []

    assert state_of(broker, "a1") == "waiting"
    assert ids(broker.list(state="waiting")) == ["a1", "a2", "a3"]
    assert broker.counts()["default"]["waiting"] == 3
    assert broker.pending(["default"]) == 4
    assert broker.enqueue([for_customer("a1", '"acme"')])[0].record.state == "waiting"  # dedup
    assert broker.cancel("a2")
    assert broker.purge("default", ["waiting"]) == 2
    assert broker.counts()["default"]["waiting"] == 0
    clock.advance(60)
    assert claim(broker) == []


def test_jobs_held_back_by_a_limit_that_goes_are_claimed_at_once(broker, clock):
    limit(broker, task_rates={SYNC: RateLimit(1, 60.0)})
    add(broker, *(for_customer(f"a{i}", '"acme"') for i in range(3)))
    assert ids(claim(broker)) == ["a0"]
    assert claim(broker) == []
    broker.controls = NO_CONTROLS
    assert ids(claim(broker)) == ["a1", "a2"]


def test_a_key_on_a_task_without_a_limit_is_not_limited(broker, clock):
    add(broker, *(for_customer(f"a{i}", '"acme"') for i in range(5)))
    limit(broker, task_rates={"tasks.other": RateLimit(1, 60.0)})
    assert len(claim(broker)) == 5


def test_per_key_limits_slide_and_say_when_they_open(broker, clock):
    limit(broker, task_rates={SYNC: RateLimit(2, 10.0)})
    add(broker, *(for_customer(f"a{i}", '"acme"') for i in range(5)))
    add(broker, for_customer("b0", '"bolt"'))
    assert ids(claim(broker, limit=1)) == ["a0"]
    clock.advance(4)
    assert ids(claim(broker)) == ["a1", "b0"]
    assert broker.next_due(["default"]) == START + 10
    clock.advance(6)
    assert ids(claim(broker)) == ["a2"]  # a0 left the window, a1 has not
    assert broker.next_due(["default"]) == START + 14
    clock.advance(4)
    assert ids(claim(broker)) == ["a3"]


def test_a_task_rate_inside_a_queue_rate(broker, clock):
    """Both hold: the queue's window counts only the jobs actually started."""
    limit(
        broker,
        queue_rates={"default": RateLimit(3, 60.0)},
        task_rates={SYNC: RateLimit(1, 60.0)},
    )
    add(
        broker,
        for_customer("a1", '"acme"'),
        for_customer("a2", '"acme"'),
        new_job("plain1"),
        new_job("plain2"),
        new_job("plain3"),
    )
    assert ids(claim(broker)) == ["a1", "plain1", "plain2"]
    assert claim(broker) == []


# -- idle waits: held-back work neither wakes nor spins -------------------------

#: A wait must last about this long (real time) when only held-back work is there.
QUIET = 0.3


def test_held_back_work_does_not_end_an_idle_wait(broker, clock):
    """After the claim that hit the limits, nothing is claimable: the wait
    blocks its whole timeout (no wake marker left set, no spin), and so does
    the wait that claims."""
    limit(
        broker,
        queue_rates={"default": RateLimit(1, 3600.0)},
        task_rates={SYNC: RateLimit(1, 3600.0)},
        concurrency={"capped": 1},
    )
    fill(broker, 3)
    add(broker, *(for_customer(f"k{i}", '"acme"', queue="keyed") for i in range(3)))
    fill(broker, 3, "c", queue="capped")
    queues = ["default", "keyed", "capped"]
    assert len(broker.claim(queues, 100, LEASE, "w1")) == 3

    assert timed_wait(lambda: broker.wait_for_work(queues, QUIET)) >= QUIET * 0.9
    waited: list[list[JobRecord]] = []
    elapsed = timed_wait(
        lambda: waited.append(broker.wait_and_claim(queues, 10, LEASE, "w1", QUIET))
    )
    assert waited == [[]] and elapsed >= QUIET * 0.9
    assert broker.waiting() == 0


def test_a_completion_in_a_capped_queue_wakes_an_idle_wait(broker, clock):
    limit(broker, concurrency={"default": 1})
    fill(broker, 2)
    (running,) = claim(broker)
    assert claim(broker) == []

    thread, results = wait_and_claim_in_thread(broker, limit=5)
    complete(broker, running)
    assert ended(thread), "the wait was not woken"
    assert ids(results[0]) == ["j1"]


def test_a_failure_in_a_capped_queue_wakes_an_idle_wait(broker, clock):
    limit(broker, concurrency={"default": 1})
    fill(broker, 2)
    (running,) = claim(broker)
    assert claim(broker) == []

    thread, _ = in_thread(broker, lambda: broker.wait_for_work(["default"], LONG_WAIT))
    assert broker.fail(lease_of(running), boom(), None)
    assert ended(thread), "the wait was not woken"
