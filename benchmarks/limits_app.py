"""``bench_app`` with the controls ``redis_limits.py`` asks for, for its worker
processes: ``CONVEYOR_QUEUE_RATE="5000/1"`` limits the queue ``default`` to
5,000 starts a second, ``CONVEYOR_CONCURRENCY=2`` caps it at 2 active jobs
(store from ``CONVEYOR_URL``). The controls are set on
the store the worker opens from this app, as the app's declarations do."""

from __future__ import annotations

import os

from bench_app import make_app

app = make_app(os.environ.get("CONVEYOR_URL"))

rate, cap = os.environ.get("CONVEYOR_QUEUE_RATE"), os.environ.get("CONVEYOR_CONCURRENCY")
if rate or cap:
    from conveyor.brokers.base import Controls, RateLimit

    limit, _, period = (rate or "").partition("/")
    app.broker.controls = Controls(
        queue_rates={"default": RateLimit(int(limit), float(period))} if rate else {},
        concurrency={"default": int(cap)} if cap else {},
    )
