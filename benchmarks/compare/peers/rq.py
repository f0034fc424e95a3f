"""RQ: ``rq worker`` with ``SimpleWorker`` (runs jobs in the worker process
instead of forking one child per job) for throughput; the default forking
``Worker`` for the crash test. Bulk: ``Queue.enqueue_many`` (one pipeline)."""

from __future__ import annotations

import os
import sys

import common
from redis import Redis
from rq import Queue

PACKAGES = ["rq", "redis", "hiredis"]

queue = Queue("default", connection=Redis.from_url(common.QUEUE_URL))


def job(n: int) -> None:
    common.record(n)


def enqueue_one(n: int) -> None:
    queue.enqueue(job, n)


def enqueue_bulk(numbers: list[int]) -> None:
    queue.enqueue_many([Queue.prepare_data(job, (n,)) for n in numbers])


def worker() -> list[str]:
    rq = os.path.join(os.path.dirname(sys.executable), "rq")
    command = [rq, "worker", "--url", common.QUEUE_URL, "--path", ".", "-q"]
    if not common.RELIABLE:
        command += ["--worker-class", "rq.worker.SimpleWorker"]
    return [*command, "default"]
