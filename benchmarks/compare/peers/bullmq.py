"""BullMQ for Python (``bullmq`` on PyPI): a ``Worker`` with ``concurrency: 50``
in one asyncio process, default job options (completed jobs kept). Bulk:
``Queue.addBulk``. Crash test: the default lock/stalled-job mechanism with
``lockDuration`` and ``stalledInterval`` of ``CMP_LEASE`` seconds."""

from __future__ import annotations

import asyncio

import common
from bullmq import Queue, Worker

PACKAGES = ["bullmq", "redis", "hiredis"]
ASYNC = True
NAME = "cmp"

queue = None


async def job(job, token) -> None:
    await common.record_async(job.data["n"])


async def setup() -> None:
    global queue
    queue = Queue(NAME, {"connection": common.QUEUE_URL})


async def enqueue_one(n: int) -> None:
    await queue.add("job", {"n": n})


async def enqueue_bulk(numbers: list[int]) -> None:
    await queue.addBulk([{"name": "job", "data": {"n": n}} for n in numbers])


async def close() -> None:
    await queue.close()


async def _work() -> None:
    options = {"connection": common.QUEUE_URL, "concurrency": common.CONCURRENCY}
    if common.RELIABLE:
        ms = int(common.LEASE * 1000)
        options.update(lockDuration=ms, stalledInterval=ms)
    Worker(NAME, job, options)
    await asyncio.Event().wait()


def worker() -> None:
    asyncio.run(_work())
