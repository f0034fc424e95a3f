"""conveyor itself, from the project's own ``.venv``: ``conveyor worker -c 50``
(one process; async job function), on the Redis store or, with
``CMP_STORE=sqlite``, the embedded SQLite store. Bulk: ``app.enqueue_many``.
Crash test: the default lease mechanism with ``--lease CMP_LEASE``."""

from __future__ import annotations

import os
import sys

import common

from conveyor import Conveyor

PACKAGES = ["conveyor-jobs", "redis", "hiredis", "orjson"]

URL = f"sqlite:///{common.SQLITE_PATH}" if common.STORE == "sqlite" else common.QUEUE_URL
app = Conveyor(URL)


@app.task(name="job")
async def job(n: int) -> None:
    await common.record_async(n)


def enqueue_one(n: int) -> None:
    job.enqueue(n)


def enqueue_bulk(numbers: list[int]) -> None:
    app.enqueue_many([job.s(n) for n in numbers])


def close() -> None:
    app.close()


def worker() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "conveyor")
    command = [script, "worker", "peers.conveyor:app", "-c", str(common.CONCURRENCY)]
    command += ["--log-level", "WARNING"]
    if common.RELIABLE:
        command += ["--lease", str(common.LEASE)]
    return command
