"""Dramatiq on its Redis broker: ``dramatiq -p 1 -t 8`` (one worker process
with the default 8 threads, default prefetch; the CLI also keeps a small
parent process), no retries. No bulk API (``group()`` sends one message per
job). Crash test: the broker's heartbeat timeout set to ``CMP_LEASE``
seconds and its maintenance (which requeues the messages of dead workers)
run on 10% of commands instead of 0.1%."""

from __future__ import annotations

import sys

import common
import dramatiq
from dramatiq.brokers.redis import RedisBroker

PACKAGES = ["dramatiq", "redis", "hiredis"]

if common.RELIABLE:
    broker = RedisBroker(
        url=common.QUEUE_URL, heartbeat_timeout=int(common.LEASE * 1000), maintenance_chance=100_000
    )
else:
    broker = RedisBroker(url=common.QUEUE_URL)
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="job", max_retries=0)
def job(n: int) -> None:
    common.record(n)


def enqueue_one(n: int) -> None:
    job.send(n)


enqueue_bulk = None


def worker() -> list[str]:
    return [sys.executable, "-m", "dramatiq", "peers.dramatiq", "-p", "1", "-t", "8"]
