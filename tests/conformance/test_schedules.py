"""Schedule ticks: ``fire`` claims each tick once, whoever fires it and
however often; a tick not later than the schedule's last one never fires,
even after its job is gone; ``last_ticks`` reads what was claimed."""

from __future__ import annotations

import asyncio
import threading

from conveyor.brokers import open_broker
from conveyor.brokers.base import Broker, Tick
from conveyor.schedules import tick_job_id

from .conftest import START, claim, claim_one, ids, lease_of, new_job, state_of
from .test_concurrency import THREADS, run_threads

T0 = int(START)  # a tick, whole seconds


def tick(at: int, name: str = "poll", queue: str = "default", priority: int = 0) -> Tick:
    job = new_job(tick_job_id(name, at), queue=queue, task="tasks.poll", priority=priority)
    return Tick(name, at, job)


def test_a_tick_fires_once_and_its_job_is_waiting(broker: Broker):
    assert broker.last_ticks([("default", "poll")]) == [None]
    assert broker.fire([tick(T0)]) == [True]
    assert broker.fire([tick(T0)]) == [False]  # the same tick again: nothing
    assert broker.last_ticks([("default", "poll")]) == [T0]
    job = broker.get("periodic:poll:2023-11-14T22:13:20Z")
    assert job is not None
    assert (job.state, job.task, job.queue, job.payload) == (
        "waiting",
        "tasks.poll",
        "default",
        '{"args":[1,2]}',
    )
    assert ids(claim(broker)) == [job.id]


def test_a_later_tick_fires_an_earlier_or_equal_one_never(broker: Broker):
    assert broker.fire([tick(T0 + 60)]) == [True]
    assert broker.fire([tick(T0)]) == [False]  # earlier: a late worker's old tick
    assert broker.fire([tick(T0 + 60)]) == [False]  # equal
    assert broker.fire([tick(T0 + 120)]) == [True]  # later
    assert broker.last_ticks([("default", "poll")]) == [T0 + 120]
    assert state_of(broker, tick_job_id("poll", T0)) is None
    assert broker.counts()["default"]["waiting"] == 2


def test_the_record_guards_a_tick_whose_job_has_ended_and_gone(broker: Broker):
    # Dedup by job id alone would fire the tick again once its job ended
    # (the id may then be reused) or was trimmed or purged.
    broker.fire([tick(T0)])
    job = claim_one(broker)
    broker.complete([(lease_of(job), "null")])
    assert broker.fire([tick(T0)]) == [False]
    broker.trim("default", "completed", keep=0)
    assert broker.get(job.id) is None
    assert broker.fire([tick(T0)]) == [False]
    assert broker.counts() == {}


def test_schedules_are_told_apart_by_queue_and_name(broker: Broker):
    fired = broker.fire([tick(T0, "a"), tick(T0, "b"), tick(T0 + 1, "a", queue="other")])
    assert fired == [True, True, True]
    found = broker.last_ticks([("default", "a"), ("default", "b"), ("other", "a"), ("x", "a")])
    assert found == [T0, T0, T0 + 1, None]


def test_several_ticks_in_one_call_each_judged_in_order(broker: Broker):
    fired = broker.fire(
        [tick(T0, "a"), tick(T0, "a"), tick(T0 + 1, "a"), tick(T0 - 1, "a"), tick(T0, "b")]
    )
    assert fired == [True, False, True, False, True]
    assert broker.last_ticks([("default", "a"), ("default", "b")]) == [T0 + 1, T0]
    assert broker.fire([]) == []


def test_fired_jobs_keep_their_priority_and_are_claimed_in_order(broker: Broker):
    broker.fire([tick(T0, "low"), tick(T0, "high", priority=5)])
    assert ids(claim(broker)) == [tick_job_id("high", T0), tick_job_id("low", T0)]


def test_a_job_holding_the_id_that_has_not_ended_is_left_alone(broker: Broker):
    held = new_job(tick_job_id("poll", T0), payload='{"args":["mine"]}')
    broker.enqueue([held])
    assert broker.fire([tick(T0)]) == [False]  # the tick is claimed, the job kept
    assert broker.last_ticks([("default", "poll")]) == [T0]
    job = broker.get(held.id)
    assert job is not None and job.payload == '{"args":["mine"]}'


def test_hostile_schedule_names(broker: Broker):
    names = ["}", "{default}", "a b", "poll/x", "schedule:x", "é 漢字", "x" * 200, "0", "1e3"]
    assert broker.fire([tick(T0, name) for name in names]) == [True] * len(names)
    assert broker.last_ticks([("default", name) for name in names]) == [T0] * len(names)
    assert broker.last_ticks([("default", "x" * 199)]) == [None]
    assert len(claim(broker)) == len(names)


def test_a_tick_fired_by_many_threads_at_once_fires_once(broker: Broker):
    results: list[bool] = []
    lock = threading.Lock()

    def fire(i: int) -> None:
        for at in range(T0, T0 + 20):
            outcome = broker.fire([tick(at)])
            with lock:
                results.extend(outcome)

    run_threads(fire)
    assert results.count(True) == 20
    assert len(results) == 20 * THREADS
    assert broker.counts()["default"]["waiting"] == 20


def test_a_tick_fired_through_separate_connections_fires_once(broker: Broker, clock):
    # Separate brokers to one store (other processes, as far as the store
    # can tell); memory:// is one process's own store, so it shares one.
    others = (
        [broker]
        if broker.url == "memory://"
        else [open_broker(broker.url, clock) for _ in range(3)]
    )
    try:
        results: list[bool] = []
        lock = threading.Lock()

        def fire(i: int) -> None:
            mine = others[i % len(others)]
            for at in range(T0, T0 + 10):
                outcome = mine.fire([tick(at, "shared")])
                with lock:
                    results.extend(outcome)

        run_threads(fire, count=6)
        assert results.count(True) == 10
    finally:
        for other in others:
            if other is not broker:
                other.close()
    assert broker.last_ticks([("default", "shared")]) == [T0 + 9]


def test_the_worker_door_fires_and_reads(broker: Broker):
    async def through_the_door() -> tuple[list[bool], list[int | None]]:
        store = broker.async_store()
        try:
            return await store.fire([tick(T0)]), await store.last_ticks([("default", "poll")])
        finally:
            store.close()

    assert asyncio.run(through_the_door()) == ([True], [T0])
