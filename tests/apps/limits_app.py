"""Tasks for ``tests/test_e2e_limits.py``: real ``conveyor worker`` processes
on queues with a rate limit, a concurrency cap, and a per-key task limit.

Each task appends ``start|done <tag> <time.time()> <pid>`` to the file named
by ``E2E_LOG``; the tests read those lines and the jobs' own start and end
times from the store.
"""

from __future__ import annotations

import os
import time

from conveyor import Conveyor

app = Conveyor()
app.queue("rated", rate_limit="5/s")
app.queue("capped", concurrency=2)


def record(event: str, tag: str) -> None:
    with open(os.environ["E2E_LOG"], "a", encoding="utf-8") as log:
        log.write(f"{event} {tag} {time.time()!r} {os.getpid()}\n")


@app.task(name="rated-job", queue="rated")
def rated_job(tag: str) -> None:
    record("start", tag)


@app.task(name="capped-job", queue="capped")
def capped_job(tag: str, seconds: float) -> None:
    record("start", tag)
    time.sleep(seconds)
    record("done", tag)


@app.task(name="per-customer", queue="keyed", rate_limit="2/s", rate_key="customer")
def per_customer(customer: str, tag: str) -> None:
    record("start", tag)
