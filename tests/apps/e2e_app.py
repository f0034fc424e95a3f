"""Tasks run by real ``conveyor worker`` processes in ``tests/test_e2e_worker.py``.

The tests copy this file into a temporary folder and run the worker there,
with ``CONVEYOR_URL`` naming a SQLite file and ``E2E_LOG`` a file every task
appends its events to, one line each: ``start <tag> <pid>`` and
``done <tag> <pid>``. The tests wait on those lines instead of sleeping.
"""

from __future__ import annotations

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
