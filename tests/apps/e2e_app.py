"""Tasks run by real ``conveyor worker`` processes in ``tests/test_e2e_worker.py``.

The tests copy this file into a temporary folder and run the worker there,
with ``CONVEYOR_URL`` naming a SQLite file and ``E2E_LOG`` a file every task
appends its events to, one line each: ``start <tag> <pid>`` and
``done <tag> <pid>``. The tests wait on those lines instead of sleeping.
"""

from __future__ import annotations

import asyncio
import os
import time

from conveyor import Conveyor

app = Conveyor()


def record(event: str, tag: str) -> None:
    with open(os.environ["E2E_LOG"], "a", encoding="utf-8") as log:
        log.write(f"{event} {tag} {os.getpid()}\n")


@app.task(name="sleepy")
def sleepy(tag: str, seconds: float) -> str:
    record("start", tag)
    time.sleep(seconds)
    record("done", tag)
    return tag


@app.task(name="hang", timeout=1, attempts=1)
def hang(tag: str) -> str:
    record("start", tag)
    time.sleep(60)
    record("done", tag)
    return tag


@app.task(name="quick")
def quick(tag: str) -> str:
    record("start", tag)
    record("done", tag)
    return tag


@app.task(name="crash")
def crash(tag: str) -> None:
    """Takes its whole process down, as a segfault in a C extension would."""
    record("start", tag)
    time.sleep(0.3)  # the jobs claimed beside it are running by now
    os._exit(1)


@app.task(name="crash-async")
async def crash_async(tag: str) -> None:
    record("start", tag)
    await asyncio.sleep(0.3)
    os._exit(1)
