"""conveyor with the job most users write: a plain ``def`` calling a blocking
client (redis-py's, as Huey's, Celery's, RQ's and Dramatiq's jobs do), run by
``conveyor worker -c N`` (one process) on the Redis store or, with
``CMP_STORE=sqlite``, on the SQLite store with ``?synchronous=full`` (each
commit synced to disk, like Huey's SqliteHuey). Bulk: ``app.enqueue_many``.
Crash test: the default lease mechanism with ``--lease CMP_LEASE``."""

from __future__ import annotations

import os
import sys

import common

from conveyor import Conveyor

PACKAGES = ["conveyor-jobs", "redis", "hiredis", "orjson"]

if common.STORE == "sqlite":
    URL = f"sqlite:///{common.SQLITE_PATH}?synchronous=full"
else:
    URL = common.QUEUE_URL
app = Conveyor(URL)


@app.task(name="job")
def job(n: int) -> None:
    common.record(n)


def enqueue_one(n: int) -> None:
    job.enqueue(n)


def enqueue_bulk(numbers: list[int]) -> None:
    app.enqueue_many([job.s(n) for n in numbers])


def close() -> None:
    app.close()


def worker() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "conveyor")
    command = [script, "worker", "peers.conveyor_def:app", "-c", str(common.CONCURRENCY)]
    command += ["--log-level", "WARNING"]
    if common.RELIABLE:
        command += ["--lease", str(common.LEASE)]
    return command
