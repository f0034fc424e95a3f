"""``conveyor demo``: the seed's example scenario, run for real on SQLite.

A producer (this process) enqueues about thirty jobs across the seed's three
queues (critical, default, bulk): emails, images, reports of mixed priority,
delayed reminders, a webhook that fails twice before it gets through, and a
sync that always fails and ends in the dead-letter list. Worker processes
(``conveyor worker``) run them while a live table shows the store's counts.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from conveyor.app import Conveyor
from conveyor.brokers.base import ENDED_STATES, STATES
from conveyor.job import Job

APP = "conveyor.demo_app:app"
TIMEOUT = 60.0  # seconds for every job to end before the demo gives up
STATE_STYLES = {"completed": "green", "dead": "red", "active": "yellow", "delayed": "cyan"}


def _enqueue_all(m: ModuleType) -> tuple[list[Job[Any]], Job[Any], Job[Any]]:
    """The scenario: returns every job, the flaky webhook and the broken sync."""
    jobs = [m.send_email.enqueue(f"user{i}@example.com", "Welcome!") for i in range(1, 11)]
    jobs += [m.process_image.enqueue(f"photo{i}.jpg") for i in range(1, 10)]
    for i, priority in enumerate((1, 3, 9, 5, 1, 7), start=1):  # higher runs first
        query = f"SELECT * FROM orders WHERE region = {i}"
        jobs.append(m.export_report.options(priority=priority).enqueue(query))
    jobs += [m.send_reminder.options(delay=2).enqueue(user) for user in ("ada", "bob", "cy")]
    key = f"order-1001-{uuid.uuid4().hex[:8]}"  # fresh per run, so --db may be reused
    webhook = m.deliver_webhook.enqueue("https://hooks.example.com/orders", key)
    broken = m.sync_legacy_crm.enqueue(42)
    return [*jobs, webhook, broken], webhook, broken


def _live_view(app: Conveyor, jobs: list[Job[Any]], started: float) -> Group:
    counts, order = app.stats(), app.queue_names()
    table = Table("queue", *STATES, title="store counts (app.stats())", title_justify="left")
    for queue in sorted(counts, key=lambda q: (order.index(q) if q in order else len(order), q)):
        table.add_row(
            queue,
            *(
                Text(str(n), style=STATE_STYLES.get(state, "") if n else "dim")
                for state, n in ((s, counts[queue][s]) for s in STATES)
            ),
        )
    ended = sum(job.state in ENDED_STATES for job in jobs)
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=len(jobs), completed=ended, width=40),
        f"{ended}/{len(jobs)} jobs ended",
        f"{time.monotonic() - started:4.1f} s",
    )
    return Group(table, bar)


def _refresh(jobs: list[Job[Any]]) -> None:
    for job in jobs:
        if job.state not in ENDED_STATES:
            job.refresh()


def _stop(workers: list[subprocess.Popen[bytes]], wait: float = 15.0) -> list[int]:
    """SIGTERM every worker (a graceful stop) and collect the exit codes."""
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in workers:
        try:
            codes.append(proc.wait(wait))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return codes


def _summary(jobs: list[Job[Any]], width: int) -> Table:
    table = Table(
        title="jobs, in enqueue order",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
    )
    for name in ("task", "queue", "prio", "state", "tries", "wall s"):
        table.add_column(name, no_wrap=True, justify="right" if name == "wall s" else "left")
    # what is left of the line, so the other columns are never squeezed
    table.add_column("error", no_wrap=True, overflow="ellipsis", max_width=max(12, width - 62))
    for job in jobs:
        r = job.record
        wall = f"{r.finished_at - r.created_at:.2f}" if r.finished_at else "-"
        failures = len(job.errors)
        if job.state == "completed":  # a retried success: say so, not its last error
            error = Text(f"ok after {failures} failed run(s)" if failures else "", style="dim")
        else:
            error = Text(job.error or "", style="red")
        state = Text(job.state, style=STATE_STYLES.get(job.state, ""))
        table.add_row(job.task, job.queue, str(job.priority), state, str(job.attempts), wall, error)
    return table


def _check(jobs: list[Job[Any]], webhook: Job[Any], broken: Job[Any]) -> list[str]:
    """What did not end as the scenario expects; empty when all is well."""
    problems = []
    if webhook.state != "completed" or webhook.attempts != 3:
        problems.append(
            f"the flaky webhook is {webhook.state} after {webhook.attempts} attempt(s),"
            " expected completed after 3"
        )
    if broken.state != "dead":
        problems.append(f"the broken sync is {broken.state}, expected dead")
    others = [job for job in jobs if job not in (webhook, broken) and job.state != "completed"]
    if len(others) > 3:  # something broke wholesale: one line, not thirty
        states = Counter(job.state for job in others)
        problems.append(f"{len(others)} other jobs did not complete: {dict(states)}")
    else:
        problems += [
            f"{job.task} {job.id} is {job.state}: {job.error or 'no error'}" for job in others
        ]
    return problems


def run_demo(db: str | None, workers: int) -> int:
    """Run the scenario; 0 when every job ended as expected, else 1."""
    # a file or pipe gets lines wide enough for the summary (rich assumes 80)
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    console = Console(width=110 if wide else None)
    if workers < 1:
        console.print("[red]the demo needs at least one worker process (--workers 1)")
        return 1
    db_path = (
        Path(db).resolve() if db else Path(tempfile.mkdtemp(prefix="conveyor-demo-")) / "demo.db"
    )
    url = "sqlite:///" + str(db_path)  # an absolute path gives sqlite:////...
    log_path = db_path.with_name(db_path.stem + "-workers.log")
    os.environ["CONVEYOR_URL"] = url  # for this process's app and the workers it starts
    demo_app = importlib.import_module("conveyor.demo_app")
    if demo_app.app.url != url:  # imported earlier with another URL
        demo_app = importlib.reload(demo_app)
    app = demo_app.app

    console.print(f"[bold]conveyor demo[/]: store {url}, {workers} worker process(es) x 4 slots")
    started = time.monotonic()
    jobs, webhook, broken = _enqueue_all(demo_app)
    console.print(
        f"enqueued {len(jobs)} jobs in {time.monotonic() - started:.3f} s; worker logs: {log_path}"
    )
    options = ["-c", "4", "--lease", "5", "--grace", "10", "--poll", "0.5"]
    command = [sys.executable, "-m", "conveyor.cli", "worker", APP, *options]
    with log_path.open("a") as log:
        procs = [
            subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ),
            )
            for _ in range(workers)
        ]
    failure = None
    try:
        with Live(_live_view(app, jobs, started), console=console, refresh_per_second=5) as live:
            while True:
                _refresh(jobs)
                live.update(_live_view(app, jobs, started))
                if all(job.state in ENDED_STATES for job in jobs):
                    break
                if all(proc.poll() is not None for proc in procs):
                    failure = f"every worker exited early: see {log_path}"
                    break
                if time.monotonic() - started > TIMEOUT:
                    failure = f"not every job ended within {TIMEOUT:g} s"
                    break
                time.sleep(0.2)
    finally:
        codes = _stop(procs)
    elapsed = time.monotonic() - started
    _refresh(jobs)
    console.print()  # a file or pipe gets the live view's last frame without a newline

    console.print(_summary(jobs, console.width))
    states = [job.state for job in jobs]
    totals = ", ".join(f"{states.count(s)} {s}" for s in STATES if states.count(s))
    console.print(
        f"[bold]{len(jobs)} jobs[/]: {totals}; {elapsed:.1f} s from first enqueue to "
        f"last worker exit; workers exited with {codes}"
    )
    problems = ([failure] if failure else []) + _check(jobs, webhook, broken)
    problems += [f"a worker exited with status {code}" for code in codes if code != 0]
    for problem in problems:
        console.print(f"[red]problem:[/] {problem}")
    if not problems:
        console.print(
            "[green]all as expected[/]: webhook delivered on its 3rd attempt, "
            "CRM sync in the dead-letter list, the rest completed"
        )
    console.print(
        f"inspect: CONVEYOR_URL={url} conveyor jobs {APP} --state dead  "
        f"(or: stats {APP}, jobs {APP} --json)",
        soft_wrap=True,
        highlight=False,
    )
    return 1 if problems else 0
