"""Tasks run by the worker processes of ``tests/test_chaos.py`` (the SIGKILL storm).

The test copies this file into a temporary folder and runs
``conveyor worker chaos_app:app`` there, with ``CONVEYOR_URL`` naming the
store and ``CHAOS_LOG`` a file every run that finishes appends one line to:
``<job tag> <pid>``. A job whose worker is killed after that line but before
its result reaches the store runs again and logs twice: the log counts runs
independently of the store.

The test process imports this module too, only to build the calls it
enqueues (``sync_job.options(job_id=...).s(...)``); the app it enqueues
through is its own ``Conveyor(url)``.
"""

from __future__ import annotations

import asyncio
import os
import time

from conveyor import Conveyor

app = Conveyor()
# The test reads back every job it enqueued (over 10,000 in a storm): keep
# every completed one instead of the default last 10,000.
app.queue("default", keep_completed=None)


def record(tag: str) -> None:
    """Append ``<tag> <pid>`` to the log.

    One write(2) of a short line on a file opened with O_APPEND: the kernel
    appends it whole, so lines of concurrent runs in several processes never
    mix, and a run killed mid-way leaves no half line.
    """
    fd = os.open(os.environ["CHAOS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{tag} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def expected(kind: str, n: int) -> str:
    """The result a job of ``kind`` (sync or async) with argument ``n`` returns."""
    return f"{kind}:{n * n}"


@app.task(name="chaos.sync")
def sync_job(tag: str, n: int, seconds: float) -> str:
    time.sleep(seconds)  # runs on one of the worker's job threads
    record(tag)
    return expected("sync", n)


@app.task(name="chaos.async")
async def async_job(tag: str, n: int, seconds: float) -> str:
    await asyncio.sleep(seconds)
    record(tag)  # a blocking append of a few bytes: too short to matter to the loop
    return expected("async", n)
