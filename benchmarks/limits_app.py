"""``bench_app`` with the flow control ``redis_limits.py`` asks for, for its
worker processes, declared as an app does: ``CONVEYOR_QUEUE_RATE="5000/s"``
limits the queue ``default`` to 5,000 starts a second, and
``CONVEYOR_CONCURRENCY=2`` caps it at 2 active jobs (store from
``CONVEYOR_URL``)."""

from __future__ import annotations

import os

from bench_app import make_app

app = make_app(os.environ.get("CONVEYOR_URL"))
rate, cap = os.environ.get("CONVEYOR_QUEUE_RATE"), os.environ.get("CONVEYOR_CONCURRENCY")
app.queue(
    "default",
    keep_completed=None,  # as bench_app: the benchmark reads every job back
    rate_limit=rate or None,
    concurrency=int(cap) if cap else None,
)
