"""Tasks for ``sqlite_throughput.py``: jobs that do nothing, so the store and the
worker are all that is measured.

The worker processes load ``bench_app:app`` (store from ``CONVEYOR_URL``); the
benchmark itself builds one app per database with ``make_app(url)``.
"""

from __future__ import annotations

import os
import time

from conveyor import Conveyor


async def noop_async() -> None:
    return None


def noop_sync() -> None:
    return None


async def probe(sent: float) -> float:
    """Returns the moment it started, for enqueue-to-start latency."""
    return time.time()


def make_app(url: str | None = None) -> Conveyor:
    app = Conveyor(url)
    # keep every completed job: the benchmark counts them all afterwards
    app.queue("default", keep_completed=None)
    app.task(name="noop-async")(noop_async)
    app.task(name="noop-sync")(noop_sync)
    app.task(name="probe")(probe)
    return app


app = make_app(os.environ.get("CONVEYOR_URL"))
