"""Redis-only behaviour the conformance suite cannot reach from outside."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from conveyor.brokers import open_broker
from conveyor.brokers.base import NewJob
from conveyor.clock import SystemClock


@pytest.fixture
def broker(default_redis):
    prefix = f"conveyor-test-{uuid.uuid4().hex[:12]}"
    broker = open_broker(f"redis://127.0.0.1:6379/0?prefix={prefix}", SystemClock())
    yield broker
    client = broker._r
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    broker.close()


def test_a_claim_behind_an_interrupted_wait_takes_nothing(broker):
    """interrupt() deletes the stamp of the waits in progress; the claim queued
    behind such a wait then takes nothing, so a stopping worker is not handed
    jobs it would only give back."""
    broker.enqueue([NewJob("ready", "t", "default", "[[],{}]")])

    _, claimed = broker._claim([], ["default"], 5, 30.0, "w", stamp="conveyor:stamp:deleted")

    assert claimed == []
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
    assert broker._stamps == set()
    assert broker._r.keys(f"{broker.target.prefix}:stamp:*") == []


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
