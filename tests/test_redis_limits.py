"""The Redis store's controls, from the inside: which script a claim runs,
where held-back jobs live (bucket lines) and that every reading and moving
operation still finds them, the wake marker while work is held back, and
the wake a completion of a full capped queue sends. The behaviour every
store shares is in tests/conformance/test_limits.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from conveyor.brokers import open_broker
from conveyor.brokers import redis_scripts as scripts
from conveyor.brokers.base import Controls, Lease, NewJob, RateLimit
from conveyor.brokers.redis_store import RedisBroker
from conveyor.clock import FakeClock, SystemClock
from helpers import poll_until_done, sent

START = 1_700_000_000.0
SYNC = "tasks.sync"


@pytest.fixture(params=["redis", "redis-cluster"])
def broker(request: pytest.FixtureRequest) -> Iterator[RedisBroker]:
    prefix = f"conveyor-test-{uuid.uuid4().hex[:12]}"
    if request.param == "redis":
        request.getfixturevalue("default_redis")
        url = f"redis://127.0.0.1:6379/0?prefix={prefix}"
    else:
        url = f"{request.getfixturevalue('redis_cluster').url}&prefix={prefix}"
    broker = open_broker(url, FakeClock(START))
    assert isinstance(broker, RedisBroker)
    yield broker
    if request.param == "redis":
        client = broker.topology.client
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    broker.close()


def job(job_id: str, key: str | None = None, task: str = SYNC, **fields) -> NewJob:
    return NewJob(job_id, task, fields.pop("queue", "default"), "[[],{}]", rate_key=key, **fields)


def ids(jobs) -> list[str]:
    return [j.id for j in jobs]


def claim(broker: RedisBroker, limit: int = 100, queue: str = "default"):
    return broker.claim([queue], limit, 30.0, "w")


def per_key(broker: RedisBroker, n: int = 1, period: float = 60.0) -> None:
    broker.controls = Controls(task_rates={SYNC: RateLimit(n, period)})


def exists(broker: RedisBroker, key: str) -> bool:
    return bool(broker.topology.run([lambda c: c.exists(key)])[0])


def test_queues_without_controls_run_the_plain_claim_script(broker):
    first = broker._claim_command("default", 5, 30.0, "w")
    assert first[1] == scripts.SHAS["claim_limited"] and first[-4:] == ("s", "", "", "")
    plain = broker._claim_command("default", 5, 30.0, "w")  # swept once: plain from now on
    assert (
        plain[1] == scripts.SHAS["claim"] and len(plain) == 3 + 4 + 7
    )  # EVALSHA sha 4, KEYS, ARGV
    broker.controls = Controls(queue_rates={"other": RateLimit(1, 1.0)}, concurrency={"x": 1})
    broker._claim_command("default", 5, 30.0, "w")  # new controls: a sweep first
    assert broker._claim_command("default", 5, 30.0, "w")[1] == scripts.SHAS["claim"]
    limited = broker._claim_command("other", 5, 30.0, "w")
    assert limited[1] == scripts.SHAS["claim_limited"]
    # a sweep; rate limit, period; no cap; no task rates
    assert limited[-4:] == ("s", 1, "1.0", "")
    assert broker._claim_command("other", 5, 30.0, "w")[-4:] == ("", 1, "1.0", "")
    # Completing in a queue without a cap looks at nothing more.
    (done,) = broker._complete_commands([(Lease("j", "0" * 16 + ":default"), "null")])[1]
    assert done[7] == ""


def test_the_rate_key_is_stored_on_the_job_and_read_back(broker):
    (made,) = broker.enqueue([job("a", '{"id":"}\\n"}')])
    assert made.record.rate_key == '{"id":"}\\n"}'
    assert broker.get("a").rate_key == '{"id":"}\\n"}'
    broker.enqueue([job("plain")])
    assert broker.get("plain").rate_key is None
    (claimed, _) = claim(broker)
    assert claimed.rate_key == '{"id":"}\\n"}'


def test_held_jobs_are_moved_once_into_their_bucket_line(broker):
    per_key(broker)
    broker.enqueue([job(f"a{i}", '"acme"') for i in range(5)] + [job("b", '"bolt"')])
    assert ids(claim(broker, limit=1)) == ["a0"]
    assert ids(claim(broker, limit=1)) == ["b"]  # a1..a4 moved aside on the way
    k = broker._keys("default")
    lines = broker.topology.run(
        [lambda c: c.llen(k.waiting), lambda c: c.zcard(k.prioritized), lambda c: c.get(k.held)]
    )
    assert lines == [0, 0, "4"]
    assert broker.counts()["default"]["waiting"] == 4
    assert broker.pending(["default"]) == 4 + 2
    assert sorted(ids(broker.list(state="waiting"))) == ["a1", "a2", "a3", "a4"]
    assert {j.state for j in broker.list(queue="default")} == {"waiting", "active"}


def test_cancel_and_purge_find_held_jobs(broker):
    per_key(broker)
    broker.enqueue(
        [job(f"a{i}", '"acme"') for i in range(4)] + [job(f"n{i}", task="t") for i in range(3)]
    )
    assert len(claim(broker)) == 4  # a0 and the three others; a1..a3 held
    assert broker.cancel("a2")
    assert broker.get("a2").state == "cancelled"
    assert broker.counts()["default"]["waiting"] == 2
    assert broker.purge("default", ["waiting"]) == 2
    assert broker.counts()["default"].get("waiting", 0) == 0
    k = broker._keys("default")
    assert not exists(broker, k.buckets)  # no bucket holds anything
    assert broker.topology.run([lambda c: c.get(k.held)])[0] == "0"


def test_a_held_job_released_or_retried_keeps_its_place_in_its_bucket(broker):
    per_key(broker, n=1, period=10)
    broker.enqueue([job(f"a{i}", '"acme"') for i in range(3)])
    (first,) = claim(broker)
    assert broker.release([Lease(first.id, first.lease_token)]) == 1  # back in the line
    assert claim(broker) == []  # its start counted: the bucket is full
    broker.clock.advance(10)
    assert ids(claim(broker)) == ["a0"]  # the released one first, from the line
    broker.clock.advance(10)
    assert ids(claim(broker)) == ["a1"]


def test_the_marker_goes_while_work_is_held_back(broker):
    """Left set, every idle BZPOPMIN would wake for work nobody may take."""
    k = broker._keys("default")
    broker.controls = Controls(queue_rates={"default": RateLimit(1, 60.0)})
    broker.enqueue([job("x1", task="t"), job("x2", task="t")])
    assert exists(broker, k.marker)
    claim(broker, limit=1)
    assert not exists(broker, k.marker)
    broker.enqueue([job("x3", task="t")])  # an enqueue still announces itself
    assert claim(broker) == [] and not exists(broker, k.marker)
    broker.clock.advance(60)
    assert ids(claim(broker, limit=1)) == ["x2"]
    assert not exists(broker, k.marker)  # the window is full again


def test_claim_limit_reached_with_slots_left_keeps_the_marker(broker):
    k = broker._keys("default")
    broker.controls = Controls(queue_rates={"default": RateLimit(10, 60.0)})
    broker.enqueue([job(f"x{i}", task="t") for i in range(5)])
    claim(broker, limit=2)
    assert exists(broker, k.marker)  # more may start now: the next idle worker wakes


def test_a_full_cap_is_flagged_and_the_completion_wakes(broker):
    k = broker._keys("default")
    broker.controls = Controls(concurrency={"default": 1})
    broker.enqueue([job("c1", task="t"), job("c2", task="t")])
    (running,) = claim(broker)
    assert exists(broker, k.capped) and not exists(broker, k.marker)
    assert broker.complete([(Lease(running.id, running.lease_token), "null")]) == [True]
    assert not exists(broker, k.capped)
    assert exists(broker, k.marker) or broker.topology.wakes_by_pubsub


def test_held_jobs_of_a_task_whose_limit_went_go_back_in_line_in_their_place(broker):
    """The app stopped declaring the task's limit (or a process that never
    declared it claims): the first claim of the queue under those controls
    puts the held jobs back in the ready line, before later jobs."""
    per_key(broker, n=1, period=3600)
    broker.controls = Controls(task_rates={SYNC: RateLimit(1, 3600.0), "t": RateLimit(1, 1.0)})
    broker.enqueue([job(f"a{i}", '"acme"') for i in range(3)] + [job("t1", task="t")])
    assert ids(claim(broker)) == ["a0", "t1"]
    broker.enqueue([job("later", task="t")])
    broker.controls = Controls(task_rates={"t": RateLimit(1, 1.0)})  # SYNC's limit went
    assert ids(claim(broker, limit=2)) == ["a1", "a2"]
    k = broker._keys("default")
    assert not exists(broker, k.buckets) and broker.counts()["default"]["waiting"] == 1
    other = open_broker(broker.url, broker.clock)  # a process without any controls
    try:
        broker.controls = Controls(task_rates={SYNC: RateLimit(1, 3600.0)})
        broker.enqueue([job("b1", '"bolt"'), job("b2", '"bolt"')])
        assert ids(claim(broker)) == ["later", "b1"]  # t has no limit now
        assert ids(claim(other)) == ["b2"]
    finally:
        other.close()


def test_bucket_names_cannot_collide(broker):
    """'<length>:<task><key>': a task whose name ends like another's key is
    another bucket."""
    broker.controls = Controls(task_rates={"t": RateLimit(1, 60.0), "t1": RateLimit(1, 60.0)})
    broker.enqueue([job("a", "1", task="t"), job("b", None, task="t1"), job("c", "1", task="t")])
    assert ids(claim(broker)) == ["a", "b"]


def test_one_claim_moves_at_most_a_batch_and_leaves_the_marker_for_the_rest(broker):
    per_key(broker)
    broker.enqueue([job("first", '"big"')])
    broker.enqueue([job(f"big{i}", '"big"') for i in range(2_100)])
    broker.enqueue([job("small", '"small"')])
    assert ids(claim(broker, limit=1)) == ["first"]
    assert claim(broker, limit=1) == []  # 2,000 moved: the script stops there
    assert ids(claim(broker, limit=1)) == ["small"]
    assert broker.counts()["default"]["waiting"] == 2_100


def test_control_args_hold_hostile_task_names_and_fractions(broker):
    controls = Controls(
        queue_rates={"q": RateLimit(3, 0.5)},
        concurrency={"q": 2},
        task_rates={"a}b\n": RateLimit(1, 1e-3)},
    )
    assert scripts.control_args(controls, "q") == (3, "0.5", 2, "a}b\n", 1, "0.001")
    assert scripts.control_args(Controls(), "q") == ()


def test_the_worker_doors_planned_pipelines_enforce_the_controls(broker):
    """The busy worker's complete-and-claim and the idle worker's wait, as
    the event loop sends them: the same limits as a claim (one server)."""
    if broker.topology.wakes_by_pubsub:
        assert broker.plan_complete_and_claim([], ["default"], 5, 30.0, "w") is None
        return
    broker.controls = Controls(
        queue_rates={"default": RateLimit(3, 60.0)}, concurrency={"default": 2}
    )
    broker.enqueue([job(f"x{i}", task="t") for i in range(6)])
    accepted, first = poll_until_done(
        sent(broker, broker.plan_complete_and_claim([], ["default"], 5, 30.0, "w"))
    )
    assert ids(first) == ["x0", "x1"]  # the cap
    done = [(Lease(j.id, j.lease_token or ""), "null") for j in first]
    accepted, second = poll_until_done(
        sent(broker, broker.plan_complete_and_claim(done, ["default"], 5, 30.0, "w"))
    )
    assert accepted == [True, True] and ids(second) == ["x2"]  # the window: 3 starts
    assert poll_until_done(sent(broker, broker.plan_wait(["default"], 5, 30.0, "w", 0.05))) == []
    broker.clock.advance(60)
    waited = poll_until_done(sent(broker, broker.plan_wait(["default"], 5, 30.0, "w", 0.05)))
    assert ids(waited) == ["x3", "x4"]  # x2's 30 s lease ran out: both slots are free


def test_work_that_opened_since_the_claim_took_the_marker_is_due_at_once(broker):
    """The window moved on after the claim that found it full (and took the
    marker away): no idle wait would wake for that work, so next_due says
    it is due already, and the worker claims at once instead of sleeping a
    whole poll interval (seen as a stall of most of a second at 5,000/s)."""
    broker.controls = Controls(queue_rates={"default": RateLimit(1, 10.0)})
    broker.enqueue([job("x1", task="t"), job("x2", task="t")])
    claim(broker)
    assert broker.next_due(["default"]) == START + 10
    broker.clock.advance(10.5)
    # opened: due now (a Cluster's waits look at what is ready instead)
    opened = None if broker.topology.wakes_by_pubsub else START + 10.5
    assert broker.next_due(["default"]) == opened
    began = time.monotonic()
    broker.wait_for_work(["default"], 5.0)
    assert time.monotonic() - began < 1.0
    assert ids(claim(broker)) == ["x2"]


def test_a_claim_after_an_idle_wait_is_dated_when_it_ran(broker):
    """On the wall clock, the claim queued behind a BZPOPMIN takes the
    server's clock when it runs: the time the caller read before the wait,
    moved on by the wait's length, would be early by the time between that
    read and the wait's start, and a start logged early leaves a rate window
    early (the window would let a start through before its time)."""
    if broker.topology.wakes_by_pubsub:  # a Cluster's waits claim when woken
        return
    wall = open_broker(broker.url, SystemClock())
    try:
        wall.enqueue([job("x", task="t")])
        wall.topology.load_scripts()  # sent by hand below: no NOSCRIPT retry
        command = wall._claim_command(
            "default", 1, 30.0, "w", stamp=f"{wall.target.prefix}:stamp:t"
        )
        time.sleep(0.2)  # between reading the clock and the wait: dated by the server
        ran = wall.topology.run(
            [lambda c: c.execute_command(*scripts.stamp(f"{wall.target.prefix}:stamp:t",
                                                        wall_clock=True)),
             lambda c: c.execute_command(*command)]
        )  # fmt: skip
        (claimed,) = scripts.read_claim("default", ran[1])
        assert abs(claimed.started_at - time.time()) < 0.05
        assert abs(claimed.lease_expires - claimed.started_at - 30.0) < 1e-3
    finally:
        wall.close()


def test_on_the_wall_clock_a_limited_claim_takes_the_servers_time(broker):
    """Under controls, every worker's starts are dated by one clock, the
    server's, when the claim runs (not by the time the caller read before
    sending it)."""
    wall = open_broker(broker.url, SystemClock())
    try:
        wall.controls = Controls(queue_rates={"default": RateLimit(5, 1.0)})
        wall.enqueue([job("x", task="t")])
        wall.topology.load_scripts()  # sent by hand below: no NOSCRIPT retry
        command = wall._claim_command("default", 1, 30.0, "w")
        assert command[-4] == "sw"  # a sweep (the first claim), on the wall clock
        time.sleep(0.2)
        (claimed,) = scripts.read_claim("default", wall.topology.execute([command])[0])
        assert abs(claimed.started_at - time.time()) < 0.05
        assert abs(claimed.lease_expires - claimed.started_at - 30.0) < 1e-3
    finally:
        wall.close()
    assert broker._claim_command("default", 1, 30.0, "w")[-4] == "s"  # a FakeClock's time
