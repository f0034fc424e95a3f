"""Celery on its Redis transport: one ``celery worker`` with the prefork pool
at the default concurrency (one child per CPU), no result backend
(``task_ignore_result``), a high prefetch multiplier for short jobs (32, as the
optimizing guide suggests for many short tasks), gossip/mingle/heartbeat off.
Crash test: ``task_acks_late`` + ``task_reject_on_worker_lost`` and a
``visibility_timeout`` of ``CMP_LEASE`` seconds, swept every second
(``unacked_restore_interval`` 1, ``unacked_restore_throttle`` 1). No bulk API (``group()``
publishes one message per task)."""

from __future__ import annotations

import os
import sys

import common
from celery import Celery

PACKAGES = ["celery", "kombu", "redis", "hiredis"]

app = Celery("cmp", broker=common.QUEUE_URL)
app.conf.update(
    task_ignore_result=True,
    worker_prefetch_multiplier=32,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
if common.RELIABLE:
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # kombu sweeps for messages past their visibility timeout every
        # interval x throttle seconds (100 s by default): make it 1 s
        broker_transport_options={
            "visibility_timeout": common.LEASE,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        },
    )


@app.task(name="job")
def job(n: int) -> None:
    common.record(n)


def enqueue_one(n: int) -> None:
    job.delay(n)


enqueue_bulk = None


def worker() -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "peers.celery:app", "worker",
        "--pool", "prefork", "--concurrency", str(os.cpu_count() or 1),
        "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING",
    ]  # fmt: skip
