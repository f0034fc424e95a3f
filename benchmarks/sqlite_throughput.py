"""Throughput and latency of conveyor on its embedded SQLite store.

    .venv/bin/python benchmarks/sqlite_throughput.py [--jobs 10000] [--dir DIR]
        [-c 10] [--also 1,50] [--samples 300] [--pause 0.02] [--keep]

Measures, each on a fresh database file (by default in a temporary folder
inside the repository, so on the same disk as the code, removed at the end):

(a) enqueue one job at a time through the public API (``task.enqueue()``);
(b) drain: one ``conveyor worker --burst -c N`` process empties a queue of
    noop jobs (async and sync), timed from process start to exit and from the
    first to the last ``finished_at`` the store recorded; every run checks that
    each enqueued job completed exactly once before its time is trusted;
(c) enqueue-to-start latency with an idle worker, one job every ``--pause`` s;
(d) the raw sqlite3 limit, from ``benchmarks/sqlite_raw.py`` when it exists.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import platform
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_app import make_app  # noqa: E402
from conveyor import Conveyor  # noqa: E402
from conveyor.brokers.base import STATES, JobRecord  # noqa: E402

TARGET_RATE = 5_000  # jobs/s, for enqueue and drain
TARGET_P50_MS, TARGET_P99_MS = 20.0, 50.0


def say(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def worker_command(*options: str) -> list[str]:
    script = Path(sys.executable).with_name("conveyor")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "conveyor.cli"]
    return [*head, "worker", "bench_app:app", "--log-level", "WARNING", *options]


def all_records(app: Conveyor) -> list[JobRecord]:
    """Every stored job, read in pages through the broker's cursor."""
    records: list[JobRecord] = []
    after = None
    while page := app.broker.list(limit=2000, after=after):
        records += page
        after = page[-1].seq
    return records


def verify(app: Conveyor, ids: list[str]) -> str | None:
    """None when every job in ``ids`` completed exactly once; else what is wrong."""
    counts = app.stats()
    others = {s: sum(q[s] for q in counts.values()) for s in STATES if s != "completed"}
    records = {r.id: r for r in all_records(app)}
    missing = [i for i in ids if i not in records]
    not_done = [i for i in ids if i in records and records[i].state != "completed"]
    rerun = [i for i in ids if i in records and records[i].attempts != 1]
    if missing or not_done or rerun or any(others.values()) or len(records) != len(ids):
        return (
            f"{len(ids) - len(missing) - len(not_done):,} of {len(ids):,} completed, "
            f"{len(missing)} missing, {len(not_done)} not completed, {len(rerun)} run twice, "
            f"other states {others}"
        )
    return None


class Bench:
    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args = args
        self.folder = folder
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.notes: list[str] = []
        self.enqueue_rates: list[float] = []
        self.runs = 0

    def fresh(self, name: str) -> tuple[str, Conveyor]:
        self.runs += 1
        url = "sqlite:///" + str(self.folder / f"{self.runs:02d}-{name}.db")
        return url, make_app(url)

    def fill(self, app: Conveyor, task: str, n: int) -> list[str]:
        """Enqueue ``n`` jobs one at a time through the public API; records the rate."""
        enqueue = app.tasks[task].enqueue
        app.stats()  # open the store (and create its schema) outside the timing
        start = time.perf_counter()
        ids = [enqueue().id for _ in range(n)]
        self.enqueue_rates.append(n / (time.perf_counter() - start))
        return ids

    def worker(self, url: str, log_name: str, *options: str) -> subprocess.Popen:
        log = (self.folder / f"{log_name}.log").open("w")
        return subprocess.Popen(
            worker_command(*options),
            cwd=HERE,
            env=dict(os.environ, CONVEYOR_URL=url),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def drain(self, kind: str, concurrency: int) -> None:
        n = self.args.jobs
        url, app = self.fresh(f"drain-{kind}-c{concurrency}")
        say(f"enqueueing {n:,} noop-{kind} jobs")
        ids = self.fill(app, f"noop-{kind}", n)
        say(f"draining them with one worker -c {concurrency}")
        label = f"(b) drain {n:,} noop {kind}, 1 worker -c {concurrency}"

        def target(rate: float) -> tuple[str, str]:
            """The issue's target is for the default concurrency; other -c values inform."""
            if concurrency != self.args.concurrency:
                return "(for -c default)", ""
            return f">= {TARGET_RATE:,}/s", "yes" if rate >= TARGET_RATE else "no"

        start = time.perf_counter()
        proc = self.worker(url, f"drain-{kind}-c{concurrency}", "--burst", "-c", str(concurrency))
        try:
            code = proc.wait(timeout=max(120.0, n / 50))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.rows.append((label, "TIMED OUT", "", *target(0.0)))
            return
        wall = time.perf_counter() - start
        problem = verify(app, ids)
        if code != 0 or problem:
            self.rows.append((label, f"INVALID: exit {code}; {problem}", "", *target(0.0)))
            return
        finished = [r.finished_at or 0.0 for r in all_records(app)]
        span = max(finished) - min(finished)
        rate = n / span if span > 0 else float("inf")
        self.rows.append(
            (
                label,
                f"{rate:,.0f} jobs/s in store ({span:.2f} s)",
                f"{n / wall:,.0f} jobs/s start->exit ({wall:.2f} s)",
                *target(rate),
            )
        )
        app.close()

    def latency(self) -> None:
        samples, pause = self.args.samples, self.args.pause
        url, app = self.fresh("latency")
        probe = app.tasks["probe"]
        app.stats()
        say(f"latency: {samples} probes {pause * 1000:g} ms apart to an idle worker")
        proc = self.worker(url, "latency", "-c", str(self.args.concurrency))
        try:
            for _ in range(5):  # the worker is up and idle once these came back
                probe.enqueue(time.time()).result(timeout=60)
            time.sleep(0.5)
            sent: dict[str, float] = {}
            for _ in range(samples):
                t0 = time.time()
                sent[probe.enqueue(t0).id] = t0
                time.sleep(pause)
            for job_id in sent:
                app.get_job(job_id).result(timeout=60)  # type: ignore[union-attr]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        records = {r.id: r for r in all_records(app)}
        from_call, from_created = [], []
        for job_id, t0 in sent.items():
            started = float(records[job_id].result or "nan")
            from_call.append((started - t0) * 1000)
            from_created.append((started - records[job_id].created_at) * 1000)
        for name, values in (("enqueue call", from_call), ("created_at", from_created)):
            cuts = statistics.quantiles(values, n=100, method="inclusive")
            p50, p99 = statistics.median(values), cuts[98]
            prefix = f"(c) latency {name} -> task start"
            self.rows.append(
                (
                    f"{prefix}, p50",
                    f"{p50:.1f} ms",
                    f"{samples} jobs, {pause * 1000:g} ms apart",
                    f"<= {TARGET_P50_MS:g} ms",
                    "yes" if p50 <= TARGET_P50_MS else "no",
                )
            )
            self.rows.append(
                (
                    f"{prefix}, p99",
                    f"{p99:.1f} ms",
                    f"max {max(values):.1f} ms",
                    f"<= {TARGET_P99_MS:g} ms",
                    "yes" if p99 <= TARGET_P99_MS else "no",
                )
            )
        app.close()

    def raw(self) -> None:
        """The ceiling: plain sqlite3 claim+complete loops from ``sqlite_raw.py``."""
        script = HERE / "sqlite_raw.py"
        if not script.exists():
            self.notes.append("(d) raw sqlite3 limit: skipped, benchmarks/sqlite_raw.py not found")
            return
        run = getattr(importlib.import_module("sqlite_raw"), "run", None)
        if run is not None and {"folder", "jobs", "synchronous", "batch"} <= set(
            inspect.signature(run).parameters
        ):
            say("raw sqlite3 claim+complete loops (benchmarks/sqlite_raw.py)")
            for batch in (1, 100):
                for synchronous in ("NORMAL", "FULL"):  # conveyor's default is NORMAL
                    rate = run(str(self.folder), self.args.jobs, synchronous, batch)
                    label = f"(d) raw sqlite3, {batch} job(s)/tx, synchronous={synchronous}"
                    detail = f"{1e6 / rate:.1f} us/job, no conveyor code"
                    self.rows.append((label, f"{rate:,.0f} jobs/s", detail, "(ceiling)", ""))
            return
        # another interface: run it as a script and show what it prints
        command = [sys.executable, str(script), "--jobs", str(self.args.jobs)]
        out = subprocess.run(command, cwd=HERE, capture_output=True, text=True, timeout=600)
        self.notes.append("(d) raw sqlite3 limit, output of benchmarks/sqlite_raw.py:")
        self.notes += ["    " + line for line in (out.stdout + out.stderr).strip().splitlines()]

    def report(self) -> None:
        rates = sorted(self.enqueue_rates)
        median = statistics.median(rates)
        self.rows.insert(
            0,
            (
                "(a) enqueue one at a time (task.enqueue)",
                f"{median:,.0f} jobs/s (median)",
                f"{len(rates)} runs of {self.args.jobs:,}: {rates[0]:,.0f}..{rates[-1]:,.0f}/s",
                f">= {TARGET_RATE:,}/s",
                "yes" if median >= TARGET_RATE else "no",
            ),
        )
        head = ("measurement", "figure", "detail", "target", "met")
        widths = [max(len(row[i]) for row in [head, *self.rows]) for i in range(5)]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in [head, *self.rows]
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        print("\n".join(lines), flush=True)
        for note in self.notes:
            print(note)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per enqueue/drain run")
    parser.add_argument("--dir", type=Path, help="folder for the databases (default: temp in repo)")
    parser.add_argument("-c", "--concurrency", type=int, default=10, help="worker concurrency")
    parser.add_argument("--also", default="1,50", help="more -c values to drain with")
    parser.add_argument("--samples", type=int, default=300, help="latency samples")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between samples")
    parser.add_argument("--keep", action="store_true", help="keep the databases and logs")
    args = parser.parse_args()
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".sqlite-bench-", dir=args.dir or HERE.parent))

    print("conveyor SQLite benchmark")
    print(f"command : {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"machine : {os.cpu_count()} CPUs, {platform.platform()}, Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )
    print(f"store   : {folder}{'' if args.keep else ' (removed at the end)'}")
    print(flush=True)
    bench = Bench(args, folder)
    concurrencies = [args.concurrency]
    concurrencies += [
        int(c) for c in args.also.split(",") if c.strip() and int(c) not in concurrencies
    ]
    try:
        for concurrency in concurrencies:
            for kind in ("async", "sync"):
                bench.drain(kind, concurrency)
        bench.latency()
        bench.raw()
        bench.report()
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
