"""Rate limits and concurrency caps on Redis: what they cost and whether they hold.

    .venv/bin/python benchmarks/redis_limits.py rate [--url redis://127.0.0.1:6379/11]
        [--rate 5000] [--jobs 30000] [-c 50]
    .venv/bin/python benchmarks/redis_limits.py server-time [--jobs 20000] [-c 10]
    .venv/bin/python benchmarks/redis_limits.py bullmq-server-time [--jobs 20000] [-c 10]
        [--node-modules benchmarks/compare/.envs/node/node_modules]
    .venv/bin/python benchmarks/redis_limits.py keys [--url ...] [--keys 10000] [--backlog 5000]
    .venv/bin/python benchmarks/redis_limits.py idle [--seconds 10] [--workers 3]

- ``rate``: a queue limited to ``--rate`` starts a second, drained by ONE
  ``conveyor worker --burst`` process; from the start time of every job (as
  the store recorded it): the rate reached, and the most starts in any
  one-second window (a sliding window over the sorted start times).
- ``server-time``: Redis server time per job (enqueue one at a time + claim
  + complete, a noop drain by one worker) from ``INFO commandstats`` (usec of
  every command, divided by the jobs), on a private redis-server so no other
  client's commands count. Runs with whatever ``conveyor`` the Python running
  it imports: run it with an older checkout's ``.venv`` to compare.
- ``bullmq-server-time``: the same for BullMQ (Node), through the compare
  harness's peer (``compare/peers/bullmq_node.js``: ``Queue.add`` one at a
  time, one ``Worker``); its job body's RPUSH goes to a second private
  server, so only BullMQ's own commands count. Needs ``npm install bullmq
  ioredis`` in the folder above ``--node-modules`` (``compare/run.py`` makes
  ``compare/.envs/node``).
- ``keys``: claim speed with ``--keys`` per-key buckets (one task limited
  per ``rate_key``, one slot an hour each), behind a backlog of ``--backlog``
  jobs of one key at the head of the line; against the same jobs unlimited.
- ``idle``: worker processes idle beside a queue whose work is all held back
  (a full window, then a full concurrency cap): Redis commands per second.

The report goes to stdout. ``--url`` databases are flushed first (never use
a database holding anything you keep).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from conveyor import Conveyor
from throughput import PrivateRedis, say, worker_command

HERE = Path(__file__).resolve().parent


def worker(url: str, app: str, env: dict[str, str], *options: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        worker_command(app, *options),
        cwd=HERE,
        env=dict(os.environ, CONVEYOR_URL=url, **env),
        stdin=subprocess.DEVNULL,
    )


def flush(url: str) -> None:
    client = redis.Redis.from_url(url.partition("?")[0])
    client.flushdb()
    client.close()


def commandstats(client: Any) -> dict[str, dict[str, float]]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): values for name, values in stats.items()}


def max_in_window(starts: list[float], window: float = 1.0) -> int:
    """The most starts in any half-open window [t, t + window): for each start
    as the window's left edge (a window holding the most starts can always be
    slid right until its left edge meets one)."""
    starts = sorted(starts)
    best, j = 0, 0
    for i, s in enumerate(starts):
        while j < len(starts) and starts[j] < s + window:
            j += 1
        best = max(best, j - i)
    return best


def records(app: Conveyor) -> list[Any]:
    out, after = [], None
    while page := app.broker.list(limit=5_000, after=after):
        out += page
        after = page[-1].seq
    return out


# -- rate --------------------------------------------------------------------


def rate(args: argparse.Namespace) -> None:
    url = f"{args.url}?prefix=bench-{uuid.uuid4().hex[:8]}"
    flush(url)
    from bench_app import make_app

    app = make_app(url)
    task = app.tasks["noop-async"]
    for start in range(0, args.jobs, 1_000):
        app.enqueue_many([task.s() for _ in range(min(1_000, args.jobs - start))])
    say(f"{args.jobs:,} jobs enqueued; one worker -c {args.c}, queue limited to {args.rate}/s")
    began = time.perf_counter()
    proc = worker(url, "limits_app:app", {"CONVEYOR_QUEUE_RATE": f"{args.rate}/s"},
                  "--burst", "-c", str(args.c))  # fmt: skip
    code = proc.wait(timeout=args.jobs / args.rate * 3 + 60)
    wall = time.perf_counter() - began
    done = [r for r in records(app) if r.state == "completed"]
    starts = sorted(r.started_at or 0.0 for r in done)
    span = starts[-1] - starts[0]
    # The rate a limiter is judged by: starts per window over the run's whole
    # seconds, [first + k, first + k + 1) (the last, partial one left out).
    whole = [sum(1 for s in starts if starts[0] + k <= s < starts[0] + k + 1)
             for k in range(int(span))]  # fmt: skip
    peak = max_in_window(starts)
    print(f"rate: exit {code}; {len(done):,} of {args.jobs:,} completed in {wall:.2f} s")
    print(f"  first to last start: {span:.3f} s ({len(starts) / span:,.0f} starts/s overall)")
    print(f"  starts in each whole second from the first: {whole}; mean "
          f"{statistics.mean(whole):,.0f}/s = {statistics.mean(whole) / args.rate:.1%} of "
          f"{args.rate:,}/s, lowest {min(whole) / args.rate:.1%}")  # fmt: skip
    print(f"  most starts in any 1-second window: {peak:,} (limit {args.rate:,}: "
          f"{'held' if peak <= args.rate else 'EXCEEDED'})")  # fmt: skip
    app.close()
    flush(url)


# -- server time ----------------------------------------------------------------


def server_time(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder, PrivateRedis(Path(folder)) as server:
        from bench_app import make_app

        app = make_app(server.url)
        client = redis.Redis(port=server.port)
        task = app.tasks["noop-async"]
        app.stats()
        client.config_resetstat()
        for _ in range(args.jobs):
            task.enqueue()
        enqueued = commandstats(client)
        proc = worker(server.url, "bench_app:app", {}, "--burst", "-c", str(args.c))
        proc.wait(timeout=600)
        total = commandstats(client)
        app.close()
        client.close()
    report(
        f"server-time: {args.jobs:,} noop jobs, enqueued one at a time, drained by one "
        f"worker -c {args.c}",
        args.jobs,
        enqueued,
        total,
    )


def report(title: str, n: int, enqueued: dict[str, Any], total: dict[str, Any]) -> None:
    """Server time per job from two snapshots of INFO commandstats: after the
    enqueue, after the drain."""
    skip = {"info", "config|resetstat", "config", "flushdb", "client|setname", "client"}
    usec = {k: v["usec"] for k, v in total.items() if k not in skip}
    calls = {k: v["calls"] for k, v in total.items() if k not in skip}
    enq = sum(v["usec"] for k, v in enqueued.items() if k not in skip)
    print(title)
    print(f"  per job: {sum(usec.values()) / n:.1f} usec of Redis server time "
          f"({enq / n:.1f} enqueue, {(sum(usec.values()) - enq) / n:.1f} claim+complete+rest), "
          f"{sum(calls.values()) / n:.2f} commands")  # fmt: skip
    for name in sorted(usec, key=usec.get, reverse=True)[:6]:  # type: ignore[arg-type]
        print(f"  {name:<12} {usec[name] / n:7.2f} usec/job  {calls[name] / n:6.3f} calls/job")


def bullmq_server_time(args: argparse.Namespace) -> None:
    peer = HERE / "compare" / "peers" / "bullmq_node.js"
    with (
        tempfile.TemporaryDirectory() as folder,
        PrivateRedis(Path(folder) / "queue") as queue,
        PrivateRedis(Path(folder) / "record") as record,
    ):
        env = dict(
            os.environ, NODE_PATH=str(Path(args.node_modules).resolve()),
            CMP_QUEUE_URL=queue.url, CMP_RECORD_URL=record.url, CMP_CONCURRENCY=str(args.c),
        )  # fmt: skip
        client, done = redis.Redis(port=queue.port), redis.Redis(port=record.port)
        client.config_resetstat()
        n = args.jobs
        subprocess.run(["node", str(peer), "enqueue", "--mode", "one", "--count", str(n)],
                       env=env, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        enqueued = commandstats(client)
        proc = subprocess.Popen(["node", str(peer), "worker"], env=env)
        deadline = time.monotonic() + 600
        while done.llen("cmp:done") < n and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # the last completions are written after their body ran
        total = commandstats(client)
        proc.terminate()
        proc.wait(timeout=30)
        ran = done.llen("cmp:done")
        client.close()
        done.close()
    report(f"bullmq-server-time: {ran:,} of {n:,} noop jobs ran", n, enqueued, total)


# -- keys --------------------------------------------------------------------


def keys(args: argparse.Namespace) -> None:
    from conveyor.brokers import open_broker
    from conveyor.brokers.base import Controls, NewJob, RateLimit
    from conveyor.clock import SystemClock

    def timed_claims(broker: Any, total: int, limit: int) -> tuple[list[float], int]:
        took, got, empty = [], 0, 0
        while got < total and empty < 10:  # a claim that moved a batch aside may take none
            began = time.perf_counter()
            jobs = broker.claim(["default"], limit, 300.0, "w")
            took.append(time.perf_counter() - began)
            empty = 0 if jobs else empty + 1
            got += len(jobs)
        return took, got

    modes = {  # what the app declared
        "no limit": Controls(),
        "another task limited (the jobs' own task is not)": Controls(
            task_rates={"elsewhere": RateLimit(1, 3600.0)}
        ),
        "per-key limit (1/h)": Controls(task_rates={"sync": RateLimit(1, 3600.0)}),
    }
    for label, controls in modes.items():
        limited = "sync" in controls.task_rates
        url = f"{args.url}?prefix=bench-{uuid.uuid4().hex[:8]}"
        flush(url)
        broker = open_broker(url, SystemClock())
        broker.controls = controls
        jobs = [NewJob(f"big{i}", "sync", "default", "[[],{}]", rate_key='"big"')
                for i in range(args.backlog)]  # fmt: skip
        jobs += [NewJob(f"k{i}-{j}", "sync", "default", "[[],{}]", rate_key=f'"key-{i}"')
                 for j in range(2) for i in range(args.keys)]  # fmt: skip
        for start in range(0, len(jobs), 1_000):
            broker.enqueue(jobs[start : start + 1_000])
        want = 1 + args.keys if limited else len(jobs)
        began = time.perf_counter()
        took, got = timed_claims(broker, want, args.limit)
        elapsed = time.perf_counter() - began
        ms = sorted(t * 1e3 for t in took)
        print(f"keys, {label}: {args.backlog:,} jobs of one key first, then 2 jobs for each "
              f"of {args.keys:,} keys; claim(limit={args.limit}) until {want:,} claimed")  # fmt: skip
        print(f"  {got:,} claimed in {len(took):,} claims, {elapsed:.2f} s: {got / elapsed:,.0f} "
              f"jobs/s; per claim p50 {statistics.median(ms):.2f} ms, "
              f"p99 {ms[int(len(ms) * 0.99)]:.2f} ms, max {ms[-1]:.1f} ms")  # fmt: skip
        if limited:  # the rest is held: claims move it aside (a batch each), then find none
            began, moving = time.perf_counter(), 0
            while broker.next_due(["default"]) is None or moving == 0:
                assert broker.claim(["default"], args.limit, 300.0, "w") == []
                moving += 1
            moved = time.perf_counter() - began
            began = time.perf_counter()
            broker.claim(["default"], args.limit, 300.0, "w")
            empty = (time.perf_counter() - began) * 1e3
            began = time.perf_counter()
            due = broker.next_due(["default"]) or 0.0
            print(f"  the other {args.backlog - 1 + args.keys:,} held: {moving} claims moved "
                  f"them aside in {moved:.2f} s; then a claim takes {empty:.2f} ms (no job), "
                  f"next_due {(time.perf_counter() - began) * 1e3:.2f} ms "
                  f"(in {due - time.time():,.0f} s)")  # fmt: skip
            counts = broker.counts()["default"]
            print(f"  counts: {counts}")
        broker.close()
        flush(url)


# -- idle --------------------------------------------------------------------


def idle(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder, PrivateRedis(Path(folder)) as server:
        from bench_app import make_app

        client = redis.Redis(port=server.port)
        for label, env, jobs in (
            ("no limits, empty queue (the baseline)", {}, 0),
            ("queue rate 1/h, window full", {"CONVEYOR_QUEUE_RATE": "1/h"}, 1),
            ("concurrency 2, both slots held", {"CONVEYOR_CONCURRENCY": "2"}, 2),
        ):
            client.flushall()
            app = make_app(server.url)
            task = app.tasks["noop-async"]
            blockers = app.tasks["probe"]
            # The cap's slots are held by jobs leased to a "worker" that never ends them.
            if "CONVEYOR_CONCURRENCY" in env:
                from conveyor.brokers.base import Controls

                app.broker.controls = Controls(concurrency={"default": 2})
                for _ in range(jobs):
                    blockers.enqueue(0.0)
                app.broker.claim(["default"], jobs, 3600.0, "holder")
            elif env:
                from conveyor.brokers.base import Controls, RateLimit

                app.broker.controls = Controls(queue_rates={"default": RateLimit(1, 3600.0)})
                task.enqueue()
                app.broker.claim(["default"], 1, 3600.0, "holder")
            for _ in range(100 if env else 0):
                task.enqueue()
            procs = [worker(server.url, "limits_app:app", env, "-c", "10")
                     for _ in range(args.workers)]  # fmt: skip
            time.sleep(3)  # started and settled into their idle waits
            before = commandstats(client)
            time.sleep(args.seconds)
            after = commandstats(client)
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
            calls = {k: after[k]["calls"] - before.get(k, {}).get("calls", 0) for k in after}
            calls = {k: v for k, v in calls.items() if v and k != "info"}
            usec = sum(after[k]["usec"] - before.get(k, {}).get("usec", 0) for k in calls)
            waiting = app.broker.counts().get("default", {}).get("waiting", 0)
            print(f"idle, {label}: {args.workers} workers -c 10, {waiting} jobs held back, "
                  f"{args.seconds:.0f} s: {sum(calls.values()) / args.seconds:.1f} commands/s, "
                  f"{usec / args.seconds / 1e3:.3f} ms/s of server time; {calls}")  # fmt: skip
            app.close()
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("rate")
    p.add_argument("--url", default="redis://127.0.0.1:6379/11")
    p.add_argument("--rate", type=int, default=5_000)
    p.add_argument("--jobs", type=int, default=30_000)
    p.add_argument("-c", type=int, default=50)
    p = sub.add_parser("server-time")
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("-c", type=int, default=10)
    p = sub.add_parser("bullmq-server-time")
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("-c", type=int, default=10)
    p.add_argument("--node-modules", default=str(HERE / "compare/.envs/node/node_modules"))
    p = sub.add_parser("keys")
    p.add_argument("--url", default="redis://127.0.0.1:6379/11")
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--backlog", type=int, default=5_000)
    p.add_argument("--limit", type=int, default=10)
    p = sub.add_parser("idle")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=3)
    args = parser.parse_args(argv)
    commands = {"rate": rate, "server-time": server_time, "bullmq-server-time": bullmq_server_time,
                "keys": keys, "idle": idle}  # fmt: skip
    commands[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
