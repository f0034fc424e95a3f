"""taskiq with taskiq-redis's ``RedisStreamBroker`` (the one with
acknowledgements, first in its README): ``taskiq worker --workers 1
--max-async-tasks 50`` (one worker process; the default is 2 processes and 100
tasks), acknowledged when the result is saved (the default), no result
backend. No bulk API. Crash test: ``idle_timeout`` of ``CMP_LEASE`` seconds,
after which unacknowledged messages are claimed by a live worker."""

from __future__ import annotations

import sys

import common
from taskiq_redis import RedisStreamBroker

PACKAGES = ["taskiq", "taskiq-redis", "redis", "hiredis"]
ASYNC = True

broker = RedisStreamBroker(
    common.QUEUE_URL,
    idle_timeout=int(common.LEASE * 1000) if common.RELIABLE else 600_000,
    unacknowledged_lock_timeout=common.LEASE if common.RELIABLE else None,
)


@broker.task(task_name="job")
async def job(n: int) -> None:
    await common.record_async(n)


async def setup() -> None:
    await broker.startup()


async def enqueue_one(n: int) -> None:
    await job.kiq(n)


enqueue_bulk = None


async def close() -> None:
    await broker.shutdown()


def worker() -> list[str]:
    return [
        sys.executable,
        "-m",
        "taskiq",
        "worker",
        "peers.taskiq:broker",
        "--workers",
        "1",
        "--max-async-tasks",
        str(common.CONCURRENCY),
        "--log-level",
        "WARNING",
    ]
