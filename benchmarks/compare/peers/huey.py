"""Huey: ``huey_consumer`` with 8 worker threads (``-k thread -w 8``, the
docs' choice for I/O-bound jobs). ``RedisHuey`` (blocking BRPOP dequeue) or,
with ``CMP_STORE=sqlite``, ``SqliteHuey``, which polls: initial delay 10 ms,
backing off to at most 1 s (``-d 0.01 -m 1``). Results are off. No bulk API
(``task.map`` enqueues one at a time); no acknowledgements, so nothing to set
for the crash test."""

from __future__ import annotations

import os
import sys

import common
from huey import RedisHuey, SqliteHuey

PACKAGES = ["huey", "redis", "hiredis"]

if common.STORE == "sqlite":
    huey = SqliteHuey("cmp", filename=common.SQLITE_PATH, results=False)
else:
    huey = RedisHuey("cmp", url=common.QUEUE_URL, results=False, blocking=True)


@huey.task()
def job(n: int) -> None:
    common.record(n)


def enqueue_one(n: int) -> None:
    job(n)


enqueue_bulk = None


def worker() -> list[str]:
    consumer = os.path.join(os.path.dirname(sys.executable), "huey_consumer")
    command = [consumer, "peers.huey.huey", "-k", "thread", "-w", "8", "-q"]
    if common.STORE == "sqlite":
        command += ["-d", "0.01", "-m", "1"]
    return command
