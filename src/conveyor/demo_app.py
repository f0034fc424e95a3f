"""The app behind ``conveyor demo``: the seed's example, as tasks a worker can run.

The store comes from ``CONVEYOR_URL`` (``conveyor demo`` points it at a fresh
SQLite file), so the same module serves the demo's producer, its worker
processes and any ``conveyor jobs conveyor.demo_app:app`` run afterwards.
Sleeps stand in for real work and are kept short so the demo takes seconds.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

from conveyor import Conveyor

app = Conveyor()

# The seed's production set-up: isolation by queue, so bulk work never starves
# critical work; bulk jobs get one attempt and a generous timeout.
app.queue("critical", priority=10, attempts=5)
app.queue("default", priority=5, attempts=3)
app.queue("bulk", priority=1, attempts=1, timeout=300, keep_completed=100)


@app.task(name="send-email", queue="critical")
async def send_email(to: str, subject: str) -> dict[str, Any]:
    await asyncio.sleep(random.uniform(0.05, 0.15))
    return {"message_id": f"msg_{time.time_ns()}", "to": to, "sent": True}


@app.task(name="process-image", queue="default")
def process_image(filename: str) -> dict[str, Any]:
    time.sleep(random.uniform(0.2, 0.5))  # a plain function: runs on a worker thread
    return {"output": f"processed_{filename}"}


@app.task(name="export-report", queue="bulk")
async def export_report(query: str) -> dict[str, Any]:
    await asyncio.sleep(random.uniform(0.3, 0.6))
    return {"query": query, "rows": 1250}


@app.task(name="send-reminder", queue="critical")
async def send_reminder(user: str) -> str:
    await asyncio.sleep(0.05)
    return f"reminded {user}"


def runs_file() -> Path:
    """A file beside the demo's database that records each webhook delivery attempt.

    Tasks do not see their job, so the flaky task counts its own runs here,
    one line per run, keyed by an argument; appends are atomic across workers.
    """
    path = app.url.removeprefix("sqlite:///").partition("?")[0]
    db = Path(path if app.url.startswith("sqlite:") else "conveyor-demo.db")
    return db.with_name(db.stem + "-webhook-runs.txt")


@app.task(name="deliver-webhook", queue="default", backoff="exponential", backoff_delay=0.3)
def deliver_webhook(url: str, key: str) -> dict[str, Any]:
    """Fails its first two runs (the endpoint answers 503), then succeeds."""
    with runs_file().open("a+") as runs:
        runs.write(key + "\n")
        runs.flush()
        runs.seek(0)
        run = sum(1 for line in runs if line.strip() == key)
    time.sleep(0.05)
    if run <= 2:
        raise ConnectionError(f"POST {url}: 503 Service Unavailable (run {run})")
    return {"url": url, "status": 200, "run": run}


@app.task(name="sync-legacy-crm", queue="default", backoff="fixed", backoff_delay=0.2)
def sync_legacy_crm(account: int) -> None:
    """Always fails: after its 3 attempts it lands in the dead-letter list."""
    time.sleep(0.05)
    raise RuntimeError(f"CRM refused account {account}: schema v2")
