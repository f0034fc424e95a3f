"""Does draining stay fast with 1,000,000 jobs waiting in the same queue? (Redis store)

    .venv/bin/python benchmarks/redis_scale.py [--url URL] [--stored 1000000]
        [--jobs 10000] [-c 50] [--runs 3]

One ``conveyor worker -c N`` process drains ``--jobs`` noop jobs in three set-ups,
each on a fresh store:

- only the measured jobs stored;
- the measured jobs (priority 1) with ``--stored`` waiting jobs of priority 0
  in the same queue behind them (enqueued first);
- the measured jobs the first ``--jobs`` of ``--jobs + --stored`` jobs of the
  same priority (first in, first out).

The figure is the measured jobs' rate in the store (first to last
``finished_at``); every run checks each measured job completed exactly once.
The worker keeps running after them (the other jobs are there) and is stopped
once they are done. The 1,000,000-job set-ups must be within 20% of the first.

By default a private redis-server is started (no persistence), emptied between
runs and stopped at the end; ``--url redis://host:port/db`` uses that server
instead, with a fresh ``?prefix=`` per run whose keys are deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_app import make_app  # noqa: E402
from conveyor import Conveyor  # noqa: E402
from throughput import (  # noqa: E402
    PrivateRedis,
    delete_prefix,
    load,
    prefix_of,
    redis_client,
    say,
    spread,
    table,
    with_prefix,
    worker_command,
)

FILL = 10_000  # jobs per app.enqueue_many call (the store sends 1,000 per script call)
WITHIN = 0.20


def fill(app: Conveyor, count: int, priority: int) -> list[str]:
    task = app.tasks["noop-async"].options(priority=priority)
    ids: list[str] = []
    for first in range(0, count, FILL):
        calls = [task.s() for _ in range(min(FILL, count - first))]
        ids += [job.id for job in app.enqueue_many(calls)]
    return ids


def one_run(args: argparse.Namespace, url: str, setup: str, folder: Path, run: int) -> float:
    """The measured jobs' in-store rate for one set-up on a fresh store."""
    n, stored = args.jobs, args.stored
    app = make_app(url)
    client = redis_client(url)
    prefix = prefix_of(url)
    say(f"{setup} run {run + 1}: filling")
    t0 = time.perf_counter()
    if setup == "behind":
        fill(app, stored, 0)
        ids = fill(app, n, 1)
    elif setup == "fifo":
        ids = fill(app, n, 0)
        fill(app, stored, 0)
    else:
        ids = fill(app, n, 1)
    say(f"{setup} run {run + 1}: {time.perf_counter() - t0:.1f} s to fill; draining -c {args.c}")
    completed = f"{prefix}:{{default}}:completed"
    log = (folder / f"{setup}-{run}.log").open("w")
    proc = subprocess.Popen(
        worker_command("bench_app:app", "-c", str(args.c)),
        cwd=HERE,
        env=dict(os.environ, CONVEYOR_URL=url),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + max(120.0, n / 50)
        while True:
            time.sleep(0.1)
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited with {proc.returncode}: see its log")
            if time.monotonic() > deadline:
                raise RuntimeError("the measured jobs did not complete in time")
            if client.zcard(completed) < n:
                continue
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                # the job hash's state, tries and finished_at (field letters: redis_store.py)
                pipe.hmget(f"{prefix}:{{default}}:job:{job_id}", "s", "a", "e")
            rows = pipe.execute()
            if all(state == "completed" for state, _, _ in rows):
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    twice = sum(1 for _, tries, _ in rows if tries != "1")
    if twice:
        raise RuntimeError(f"{twice} measured jobs ran more than once")
    ends = [float(end) for _, _, end in rows]
    app.close()
    client.close()
    return n / (max(ends) - min(ends))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Redis URL (default: a private redis-server)")
    parser.add_argument("--stored", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("-c", type=int, default=50, help="worker concurrency")
    parser.add_argument("--runs", type=int, default=3, help="runs per set-up (median shown)")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix=".redis-scale-", dir=HERE.parent))
    setups = [
        ("only", f"only the {args.jobs:,} measured jobs stored"),
        ("behind", f"{args.stored:,} waiting jobs of lower priority behind them"),
        ("fifo", f"the first {args.jobs:,} of {args.jobs + args.stored:,}, same priority"),
    ]
    started = time.perf_counter()
    print("conveyor Redis store at scale: drain with many jobs waiting")
    print(f"command : {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"worker  : one `conveyor worker -c {args.c}` process, noop async jobs; each figure "
        f"the median of {args.runs} runs, first to last finished_at of the {args.jobs:,}"
    )
    print(f"before  : {load()}", flush=True)
    rates: dict[str, list[float]] = {}
    with ExitStack() as stack:
        try:
            private = None
            if args.url:
                base = args.url
            else:
                private = stack.enter_context(PrivateRedis(folder / "redis"))
                base = private.url
            admin = redis_client(base)
            print(f"store   : Redis {admin.info('server')['redis_version']} at ", end="")
            print(f"{base}" + (" (private, no persistence)" if private else ""))
            print(flush=True)
            for run in range(args.runs):
                for setup, _ in setups:
                    url = with_prefix(base, f"scale-{os.getpid()}-{setup}-{run}")
                    try:
                        rates.setdefault(setup, []).append(one_run(args, url, setup, folder, run))
                    finally:
                        if private is not None:
                            admin.flushall()
                        else:
                            delete_prefix(admin, prefix_of(url))
        finally:
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    base_rate = statistics.median(rates["only"])
    rows = []
    for setup, label in setups:
        rate = statistics.median(rates[setup])
        ratio = rate / base_rate
        within = "" if setup == "only" else ("yes" if ratio >= 1 - WITHIN else "no")
        rows.append(
            (
                label,
                f"{rate:,.0f} jobs/s",
                f"{ratio:.0%} of the first; {spread(rates[setup])}",
                "" if setup == "only" else f">= {1 - WITHIN:.0%}",
                within,
            )
        )
    print(table(rows, ("set-up", "drain rate", "detail", "target", "met")))
    print()
    print(f"after   : {load()}; {time.perf_counter() - started:,.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
