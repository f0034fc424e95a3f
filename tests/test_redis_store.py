"""Redis-only behaviour the conformance suite cannot reach from outside."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from conveyor.brokers import open_broker
from conveyor.brokers.base import STATES, Lease, NewJob
from conveyor.clock import FakeClock, SystemClock
from conveyor.errors import StoreMisconfigured, StoreUnavailable
from helpers import poll_until_done, sent


@pytest.fixture
def broker(default_redis):
    prefix = f"conveyor-test-{uuid.uuid4().hex[:12]}"
    broker = open_broker(f"redis://127.0.0.1:6379/0?prefix={prefix}", SystemClock())
    yield broker
    client = broker.topology.client
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    broker.close()


def test_a_claim_behind_an_interrupted_wait_takes_nothing(broker):
    """interrupt() deletes the stamp of the waits in progress; the claim queued
    behind such a wait then takes nothing, so a stopping worker is not handed
    jobs it would only give back."""
    broker.enqueue([NewJob("ready", "t", "default", "[[],{}]")])

    claim = broker._claim_command("default", 5, 30.0, "w", stamp="conveyor:stamp:deleted")
    broker.topology.load_scripts()  # sent by hand below: no NOSCRIPT retry

    assert broker.topology.client.execute_command(*claim) == []
    assert broker.get("ready").state == "waiting"
    assert [job.id for job in broker.claim(["default"], 5, 30.0, "w")] == ["ready"]


def test_interrupt_ends_a_wait_and_leaves_ready_work_alone(broker):
    results = []
    thread = threading.Thread(
        target=lambda: results.append(broker.wait_and_claim(["default"], 5, 30.0, "w", 5.0))
    )
    thread.start()
    time.sleep(0.2)
    broker.interrupt()
    thread.join(3)

    assert not thread.is_alive() and results == [[]]
    assert broker.waiting() == 0
    assert broker.topology.client.keys(f"{broker.target.prefix}:stamp:*") == []


def test_a_stamped_claim_moves_the_callers_clock_on_by_the_wait(broker):
    """The claim queued behind a BZPOPMIN records the time it ran, not the
    time the wait was sent."""
    thread = threading.Thread(
        target=lambda: broker.enqueue([NewJob("late", "t", "default", "[[],{}]")])
    )
    sent = time.time()
    timer = threading.Timer(0.3, thread.start)
    timer.start()
    claimed = broker.wait_and_claim(["default"], 5, 30.0, "w", 3.0)
    thread.join()

    assert [job.id for job in claimed] == ["late"]
    assert claimed[0].started_at - sent >= 0.25
    assert abs(claimed[0].lease_expires - claimed[0].started_at - 30.0) < 0.01


def test_send_wait_is_read_without_blocking_and_claims_what_arrives(broker):
    pending = sent(broker, broker.plan_wait(["default"], 5, 30.0, "w", 3.0))
    time.sleep(0.1)
    assert pending.poll() is None  # nothing yet, and poll returned at once
    broker.enqueue([NewJob("new", "t", "default", "[[],{}]")])

    claimed = poll_until_done(pending)

    assert [job.id for job in claimed] == ["new"]
    assert broker.get("new").state == "active"
    assert broker.waiting() == 0


def test_send_wait_ends_empty_when_interrupted(broker):
    pending = sent(broker, broker.plan_wait(["default"], 5, 30.0, "w", 3.0))
    time.sleep(0.1)
    broker.interrupt()
    broker.enqueue([NewJob("later", "t", "default", "[[],{}]")])

    assert poll_until_done(pending) == []
    assert broker.get("later").state == "waiting"


def test_send_wait_after_the_server_lost_its_scripts(broker):
    """A restarted server forgets the scripts: the wait ends without claiming
    (the script did nothing), and the next one loads them again first."""
    broker.topology.client.script_flush()
    pending = sent(broker, broker.plan_wait(["default"], 5, 30.0, "w", 3.0))
    broker.enqueue([NewJob("a", "t", "default", "[[],{}]")])  # loads them, sets the marker
    assert poll_until_done(pending) == []
    assert broker.get("a").state == "waiting"

    broker.topology.client.script_flush()  # the wait below times out, then claims: with its scripts
    pending = sent(broker, broker.plan_wait(["default"], 5, 30.0, "w", 0.2))
    assert [job.id for job in poll_until_done(pending)] == ["a"]


def test_send_wait_on_a_connection_the_server_dropped_is_a_clear_error(broker):
    broker.enqueue([NewJob("kept", "t", "default", "[[],{}]")])
    broker.claim(["default"], 1, 30.0, "other")  # so the wait below blocks
    pending = sent(broker, broker.plan_wait(["default"], 5, 30.0, "w", 3.0))
    time.sleep(0.1)
    broker.topology.client.client_kill_filter(_type="normal", skipme=True)

    with pytest.raises(StoreUnavailable, match=r"redis://127\.0\.0\.1:6379"):
        poll_until_done(pending)
    assert broker.waiting() == 0
    assert broker.get("kept").state == "active"
    assert (
        sent(broker, broker.plan_wait(["default"], 5, 30.0, "w", 0.05)) is not None
    )  # a new connection


def test_on_the_wall_clock_created_at_is_the_seq_stored_once(broker):
    before = time.time()
    [result] = broker.enqueue([NewJob("one", "t", "default", "[[],{}]")])
    stored = broker.topology.client.hgetall(f"{broker.target.prefix}:{{default}}:job:one")

    assert set(stored) == {"t", "d", "s", "q", "n"}  # task, data, state, seq, ord: no created_at
    record = broker.get("one")
    assert record.created_at == int(stored["q"]) / 1e6 == result.record.created_at
    assert before - 0.001 <= record.created_at <= time.time() + 0.001


class WallClock:
    """The wall clock, but no SystemClock: the store goes by the time it tells."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def test_created_at_is_stored_only_when_the_seq_does_not_tell_it(broker):
    """Any clock that tells the wall time leaves created_at out, as the
    SystemClock does; one that tells another time (a test's FakeClock) has
    it stored, exactly."""
    client = broker.topology.client
    for job_id, clock, stored in (("wall", WallClock(), False), ("fake", FakeClock(), True)):
        other = open_broker(broker.url, clock)
        try:
            before = clock.now()
            [result] = other.enqueue([NewJob(job_id, "t", "default", "[[],{}]")])
            fields = client.hgetall(f"{broker.target.prefix}:{{default}}:job:{job_id}")
            record = other.get(job_id)
        finally:
            other.close()

        assert ("c" in fields) is stored, job_id
        assert record.created_at == result.record.created_at
        if stored:
            assert record.created_at == clock.now()
        else:
            assert before - 0.001 <= record.created_at <= clock.now() + 0.001


def test_send_wait_on_a_damaged_marker_is_an_error_not_a_spin(broker):
    """A marker key of the wrong type fails the BZPOPMIN at once: the wait
    raises StoreMisconfigured (another program writes under the prefix: the
    worker stops) instead of ending empty again and again."""
    broker.topology.client.set(broker._keys("default").marker, "not a sorted set")
    pending = sent(broker, broker.plan_wait(["default"], 5, 30.0, "w", 3.0))

    with pytest.raises(StoreMisconfigured, match=r"wrong type.*\?prefix=") as raised:
        poll_until_done(pending)
    assert str(raised.value).startswith(broker.target.safe + ": ")
    assert broker.waiting() == 0


# -- plan_complete_and_claim, sent: the busy worker's call, read by its event loop --


def test_send_complete_and_claim_is_for_one_queue_on_one_server(broker):
    assert (
        sent(broker, broker.plan_complete_and_claim([], ["a", "b"], 5, 30.0, "w")) is None
    )  # a thread's
    pending = sent(broker, broker.plan_complete_and_claim([], ["a"], 5, 30.0, "w"))
    assert pending is not None and poll_until_done(pending) == ([], [])


def test_send_complete_and_claim_promotes_other_queues_once_a_second(broker):
    """As a claim on a thread does: the due jobs of queues nobody claims from
    become waiting, and the list of queues is looked at again meanwhile."""
    broker.enqueue([NewJob("due", "t", "elsewhere", "[[],{}]", run_at=time.time() + 0.05)])
    assert broker.get("due").state == "delayed"
    time.sleep(0.1)
    broker._known_at = broker._promoted_at = -1e9  # both due now

    pending = sent(broker, broker.plan_complete_and_claim([], ["default"], 5, 30.0, "w"))
    assert poll_until_done(pending) == ([], [])
    assert broker.get("due").state == "waiting"
    assert "elsewhere" in broker._known


def test_send_complete_and_claim_after_the_server_lost_its_scripts(broker):
    broker.enqueue([NewJob(f"j{i}", "t", "default", "[[],{}]") for i in range(3)])
    [held] = broker.claim(["default"], 1, 30.0, "w")
    lease = Lease(held.id, held.lease_token or "")
    broker.topology.client.script_flush()

    pending = sent(
        broker, broker.plan_complete_and_claim([(lease, "1")], ["default"], 2, 30.0, "w")
    )
    accepted, claimed = poll_until_done(pending)
    assert accepted == [True] and [job.id for job in claimed] == ["j1", "j2"]
    assert broker.get("j0").state == "completed"


def test_send_complete_and_claim_on_a_damaged_key_raises_and_keeps_the_jobs(broker):
    broker.enqueue([NewJob("kept", "t", "default", "[[],{}]")])
    client = broker.topology.client
    client.set(broker._keys("default").waiting, "not a list")

    pending = sent(broker, broker.plan_complete_and_claim([], ["default"], 5, 30.0, "w"))
    with pytest.raises(StoreMisconfigured, match=r"wrong type.*\?prefix="):
        poll_until_done(pending)
    assert client.hget(f"{broker.target.prefix}:{{default}}:job:kept", "s") == "waiting"


def test_send_complete_and_claim_on_a_dropped_connection_is_a_clear_error(broker):
    broker.enqueue([NewJob("kept", "t", "default", "[[],{}]")])
    [held] = broker.claim(["default"], 1, 30.0, "w")
    client = broker.topology.client
    client.client_pause(2000, all=False)  # hold the write back: the kill lands first
    try:
        pending = sent(
            broker,
            broker.plan_complete_and_claim(
                [(Lease(held.id, held.lease_token or ""), "1")], ["default"], 0, 30.0, "w"
            ),
        )
        client.client_kill_filter(_type="normal", skipme=True)
        with pytest.raises(StoreUnavailable, match=r"redis://127\.0\.0\.1:6379"):
            poll_until_done(pending)
    finally:
        client.client_unpause()
    assert broker.get("kept").state == "active"  # not written: the worker sends it again


# -- Redis Cluster ------------------------------------------------------------


def test_a_cluster_queue_is_registered_after_a_failed_first_enqueue(redis_cluster):
    """In a Cluster the SADD to P:queues goes beside the enqueue script (that
    key lives in another slot). One lost with its enqueue (the store out of
    reach) is sent again with the next, so other processes see the queue."""
    url = f"{redis_cluster.url}&prefix=conveyor-test-{uuid.uuid4().hex[:12]}"
    producer, reader = open_broker(url), open_broker(url)
    try:

        def out_of_reach(calls):
            raise StoreUnavailable("out of reach, for the test")

        producer.topology.run = out_of_reach
        with pytest.raises(StoreUnavailable):
            producer.enqueue([NewJob("lost", "t", "late", "[[],{}]")])
        del producer.topology.run  # back to the class's
        producer.enqueue([NewJob("kept", "t", "late", "[[],{}]")])

        assert reader.counts() == {"late": {**dict.fromkeys(STATES, 0), "waiting": 1}}
    finally:
        producer.close()
        reader.close()
        redis_cluster.flushall()
