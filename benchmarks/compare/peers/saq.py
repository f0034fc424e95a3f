"""SAQ: ``saq peers.saq.settings`` (one process) with ``concurrency=50``
(default 10). No fire-and-forget bulk API (``Queue.map`` waits for the
results). Crash test: jobs enqueued with ``timeout=CMP_LEASE`` and
``retries=3`` (the default of 1 attempt would leave a swept job failed) and
the worker's stuck-job sweep every second (default 60 s)."""

from __future__ import annotations

import os
import sys

import common
from saq import Queue

PACKAGES = ["saq", "redis", "hiredis"]
ASYNC = True

queue = Queue.from_url(common.QUEUE_URL)
JOB_OPTIONS = {"timeout": int(common.LEASE), "retries": 3} if common.RELIABLE else {}


async def job(ctx: dict, *, n: int) -> None:
    await common.record_async(n)


settings = {
    "queue": queue,
    "functions": [job],
    "concurrency": common.CONCURRENCY,
    "timers": {"sweep": 1} if common.RELIABLE else {},
}


async def setup() -> None:
    await queue.connect()


async def enqueue_one(n: int) -> None:
    await queue.enqueue("job", n=n, **JOB_OPTIONS)


enqueue_bulk = None


async def close() -> None:
    await queue.disconnect()


def worker() -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), "saq"), "peers.saq.settings"]
