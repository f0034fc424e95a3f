"""What a worker adds to a plain-function job that calls a blocking client.

    .venv/bin/python benchmarks/sync_overhead.py [--jobs 10000] [--calls 1,5,20]
        [-c 10] [--runs 3] [--url redis://127.0.0.1:6379/5]

The job is the one most users write: a plain ``def`` that makes ``k``
blocking redis-py calls (RPUSH onto a list of its own). For each ``k``:

- **raw**: ``-c`` threads run that function over and over, with no queue at
  all: the most Python gets out of such jobs on this machine (its GIL shared
  by the threads);
- **conveyor**: the same jobs enqueued, then drained by one ``conveyor worker
  -c N --burst`` process on the Redis store at ``--url``, timed from the
  first job's start to the last one's end as the store recorded them.

The worker's overhead per job is ``1/conveyor - 1/raw`` in microseconds of
wall time. It should stay flat as ``k`` grows: a job's own blocking calls
must not slow the worker's store traffic, nor the other way round. Beside it,
the CPU time a job costs in each (all threads of the process; the worker's
own start-up, measured on an empty queue, taken off): how much of the
overhead is work the worker does, and how much is waiting (the GIL passed
between more threads). Medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis

from conveyor import Conveyor
from conveyor.brokers.base import COMPLETED
from conveyor.task import Signature

APP = """
import os
import redis
from conveyor import Conveyor

app = Conveyor()
app.queue("default", keep_completed=None)
CALLS = int(os.environ["SYNC_CALLS"])
_client = None


@app.task(name="job")
def job(n: int) -> None:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["SYNC_RECORD_URL"])
    for i in range(CALLS):
        _client.rpush("sync-overhead:done", f"{n} {i}")
"""


def raw(calls: int, jobs: int, threads: int, record_url: str) -> tuple[float, float]:
    """Jobs a second, ``threads`` threads running the body with no queue, and
    the CPU seconds it took."""
    counter = iter(range(jobs))
    lock = threading.Lock()
    client = redis.Redis.from_url(record_url)  # one client, as the job module has

    def work() -> None:
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            for i in range(calls):
                client.rpush("sync-overhead:done", f"{n} {i}")

    pool = [threading.Thread(target=work) for _ in range(threads)]
    started, cpu = time.perf_counter(), time.process_time()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return jobs / (time.perf_counter() - started), time.process_time() - cpu


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def drained(
    calls: int, jobs: int, concurrency: int, url: str, record_url: str
) -> tuple[float, float]:
    """Jobs a second, one worker process draining the jobs from the store,
    and the CPU seconds the worker took (its start-up and exit included)."""
    prefix = f"sync-overhead-{uuid.uuid4().hex[:8]}"
    store = f"{url}?prefix={prefix}"
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "sync_app.py").write_text(APP)
        env = {
            **os.environ, "CONVEYOR_URL": store, "SYNC_CALLS": str(calls),
            "SYNC_RECORD_URL": record_url,
        }  # fmt: skip
        app = Conveyor(store)
        app.enqueue_many(Signature("job", (n,), {}) for n in range(jobs))
        script = Path(sys.executable).with_name("conveyor")
        cpu = children_cpu()
        subprocess.run(
            [str(script), "worker", "sync_app:app", "-c", str(concurrency), "--burst",
             "--log-level", "WARNING"],
            cwd=folder, env=env, check=True,
        )  # fmt: skip
        cpu = children_cpu() - cpu
        if not jobs:
            app.close()
            return 0.0, cpu
        records = app.jobs(state=COMPLETED, limit=jobs + 1)
        assert len(records) == jobs, f"{len(records)} of {jobs} jobs completed"
        first = min(job.record.started_at or 0.0 for job in records)
        last = max(job.record.finished_at or 0.0 for job in records)
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        app.close()
        return jobs / (last - first), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--calls", default="1,5,20", help="blocking calls a job makes")
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/5", help="the store")
    parser.add_argument("--record-url", default="redis://127.0.0.1:6379/6",
                        help="where the jobs' own calls go")  # fmt: skip
    args = parser.parse_args()
    record = redis.Redis.from_url(args.record_url)
    print(f"plain def, k blocking RPUSH calls a job, -c {args.concurrency}, {args.jobs:,} jobs, "
          f"median of {args.runs}")  # fmt: skip
    # What a worker costs with nothing to do: started, finds no job, exits.
    idle = statistics.median(
        drained(1, 0, args.concurrency, args.url, args.record_url)[1] for _ in range(3)
    )
    print(f"(a worker that finds no job uses {idle * 1e3:,.0f} ms of CPU: taken off below)")
    print(
        "| calls a job | raw threads (jobs/s) | conveyor drain (jobs/s) | of raw "
        "| worker overhead a job | CPU a job: raw | CPU a job: conveyor | CPU the worker adds |"
    )
    print("|--:|--:|--:|--:|--:|--:|--:|--:|")
    for calls in (int(k) for k in args.calls.split(",")):
        jobs = max(1000, args.jobs // calls)
        raws, ours, raw_cpu, our_cpu = [], [], [], []
        for _ in range(args.runs):  # alternated, as the machine's speed drifts
            record.delete("sync-overhead:done")
            rate, cpu = raw(calls, jobs, args.concurrency, args.record_url)
            raws.append(rate)
            raw_cpu.append(cpu / jobs)
            record.delete("sync-overhead:done")
            rate, cpu = drained(calls, jobs, args.concurrency, args.url, args.record_url)
            ours.append(rate)
            our_cpu.append((cpu - idle) / jobs)
        r, o = statistics.median(raws), statistics.median(ours)
        rc, oc = statistics.median(raw_cpu) * 1e6, statistics.median(our_cpu) * 1e6
        print(
            f"| {calls} | {r:,.0f} | {o:,.0f} | {o / r:.0%} | {1e6 / o - 1e6 / r:,.0f} µs "
            f"| {rc:,.0f} µs | {oc:,.0f} µs | {oc - rc:,.0f} µs |"
        )
    record.delete("sync-overhead:done")


if __name__ == "__main__":
    main()
