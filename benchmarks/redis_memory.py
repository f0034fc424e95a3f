"""Redis memory per waiting job, conveyor vs BullMQ, each on a private redis-server.

    .venv/bin/python benchmarks/redis_memory.py [--jobs 100000] [-c 50] [--no-bullmq]
    npm install --prefix benchmarks/bullmq_memory     # once, for the BullMQ half

Every measurement starts a fresh redis-server of its own on a free port
(``--save "" --appendonly no``), loads the job system's Lua scripts, reads
``used_memory``, stores ``--jobs`` small jobs (task ``send-email``, data
``{"to": "user@example.com", "n": 1}``; conveyor through ``app.enqueue_many``,
BullMQ through ``queue.addBulk``, batches of 1,000) and reads it again: the
delta divided by the job count is the memory a waiting job costs. It also
reports ``MEMORY USAGE`` of one job's hash and of the waiting structure
divided by the job count.

Then retention: one worker process (``-c``) completes all the jobs. conveyor's
default keeps the last 10,000 completed jobs per queue (the worker's
maintenance trims every few seconds); BullMQ's default keeps every completed
job, so BullMQ is also run with ``removeOnComplete: {count: 10000}``. The table
shows ``used_memory`` above the empty server after the drain, after conveyor's
trim, and the slowest script call the server logged (SLOWLOG, >= 10 ms).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from conveyor import Conveyor  # noqa: E402
from throughput import PrivateRedis, load, say, table  # noqa: E402

BATCH = 1_000
KEEP = 10_000  # conveyor's default keep_completed
DATA = {"to": "user@example.com", "n": 1}
NODE_DIR = HERE / "bullmq_memory"


def make_app(url: str) -> Conveyor:
    """Default retention: no app.queue() call, so the queue keeps 10,000 completed jobs."""
    app = Conveyor(url)

    @app.task(name="send-email")
    async def send_email(to: str, n: int) -> None:
        return None

    return app


def serve(url: str, concurrency: int) -> int:
    """The worker process: ``redis_memory.py --serve URL -c N`` (stopped by SIGTERM)."""
    from conveyor.worker import Worker

    return Worker(make_app(url), concurrency=concurrency).run()


def memory(client: Any) -> dict[str, Any]:
    time.sleep(0.3)  # lazily freed memory and client buffers settle
    return client.info("memory")


def slowest(client: Any) -> str:
    """The slowest script call in SLOWLOG, named (a conveyor script by its file)."""
    from conveyor.brokers.redis_scripts import SHAS

    names = {sha: name for name, sha in SHAS.items()}
    scripts = []  # the job system's own calls; this benchmark's KEYS, MEMORY... are left out
    for entry in client.slowlog_get(1024):
        command = entry["command"]
        words = (
            command.decode(errors="replace") if isinstance(command, bytes) else str(command)
        ).split()
        if len(words) > 1 and words[0].upper() in ("EVALSHA", "EVAL", "FCALL"):
            name = names.get(words[1])
            scripts.append((entry["duration"], f"{name}.lua" if name else f"script {words[1][:8]}"))
    if not scripts:
        return "none >= 10 ms"
    by_name: dict[str, list[int]] = {}
    for duration, name in sorted(scripts, reverse=True):
        by_name.setdefault(name, []).append(duration)
    return "; ".join(
        f"{name} {max(d) / 1000:.1f} ms"
        + (f" (and {len(d) - 1} more >= 10 ms)" if len(d) > 1 else "")
        for name, d in by_name.items()
    )


def conveyor_run(folder: Path, jobs: int, concurrency: int) -> dict[str, Any]:
    import redis

    from conveyor.brokers.redis_scripts import SOURCES

    out: dict[str, Any] = {}
    with PrivateRedis(folder / "conveyor") as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        for source in SOURCES.values():  # the scripts are in the baseline, as for BullMQ
            client.script_load(source)
        client.slowlog_reset()
        before = memory(client)
        app = make_app(server.url)
        task = app.tasks["send-email"]
        say(f"conveyor: enqueue_many {jobs:,} jobs in batches of {BATCH:,}")
        app.stats()
        started = time.perf_counter()
        ids: list[str] = []
        for first in range(0, jobs, BATCH):
            count = min(BATCH, jobs - first)
            ids += [j.id for j in app.enqueue_many([task.s(**DATA) for _ in range(count)])]
        out["add_seconds"] = time.perf_counter() - started
        app.close()
        after = memory(client)
        base = before["used_memory"]
        out["per_job"] = (after["used_memory"] - base) / jobs
        out["dataset_per_job"] = (
            after["used_memory_dataset"] - before["used_memory_dataset"]
        ) / jobs
        job_key, waiting = f"conveyor:{{default}}:job:{ids[0]}", "conveyor:{default}:waiting"
        out["job_hash"] = client.hgetall(job_key)
        out["job_hash_encoding"] = client.object("encoding", job_key)
        out["job_hash_bytes"] = client.memory_usage(job_key, samples=0)
        out["waiting_encoding"] = client.object("encoding", waiting)
        out["waiting_bytes_per_job"] = client.memory_usage(waiting, samples=0) / jobs
        out["dbsize"] = client.dbsize()
        counts = Conveyor(server.url)  # counts through the public API, not the key layout
        out["waiting_count"] = counts.stats()["default"]["waiting"]

        say(f"conveyor: draining them with one worker process -c {concurrency}")
        log = (folder / "conveyor-worker.log").open("w")
        command = [sys.executable, __file__, "--serve", server.url, "-c", str(concurrency)]
        worker = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        peak_completed = 0

        def count(state: str) -> int:
            return counts.stats().get("default", {}).get(state, 0)

        try:
            started = time.perf_counter()
            while True:
                stats = counts.stats().get("default", {})
                n_waiting, n_active = stats.get("waiting", 0), stats.get("active", 0)
                peak_completed = max(peak_completed, stats.get("completed", 0))
                if n_waiting == 0 and n_active == 0:
                    break
                if worker.poll() is not None or time.perf_counter() - started > 600:
                    raise RuntimeError("the conveyor worker stopped or took too long")
                time.sleep(0.05)
            out["drain_seconds"] = time.perf_counter() - started
            drained = memory(client)
            out["completed_at_drain"] = count("completed")
            out["drained_per_job"] = (drained["used_memory"] - base) / jobs
            out["drained_bytes"] = drained["used_memory"] - base
            while count("completed") > KEEP:  # the next maintenance pass
                if time.perf_counter() - started > 600:
                    raise RuntimeError("the worker never trimmed the completed jobs")
                time.sleep(0.1)
            trimmed = memory(client)
            out["trim_wait_seconds"] = time.perf_counter() - started - out["drain_seconds"]
            out["completed_after_trim"] = count("completed")
            out["trimmed_bytes"] = trimmed["used_memory"] - base
            out["peak_bytes"] = trimmed["used_memory_peak"] - base
            out["peak_completed_seen"] = peak_completed
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
            counts.close()
        out["dbsize_after"] = client.dbsize()
        out["slowest"] = slowest(client)
        out["redis"] = client.info("server")["redis_version"]
        client.close()
    return out


def bullmq_run(folder: Path, jobs: int, concurrency: int, keep: int | None) -> dict[str, Any]:
    with PrivateRedis(folder / f"bullmq-{keep}") as server:
        import redis

        client = redis.Redis(port=server.port)
        client.slowlog_reset()
        command = ["node", str(NODE_DIR / "memory.mjs"), "--port", str(server.port),
                   "--jobs", str(jobs), "--batch", str(BATCH), "--drain",
                   "--concurrency", str(concurrency)]  # fmt: skip
        if keep is not None:
            command += ["--keep-completed", str(keep)]
        say(f"BullMQ: {shlex.join(command[1:])}")
        done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            raise RuntimeError(f"node failed: {done.stderr.strip()[-2000:]}")
        out = json.loads(done.stdout.strip().splitlines()[-1])
        out["slowest"] = slowest(client)
        out["peak_bytes"] = client.info("memory")["used_memory_peak"] - out["used_memory_before"]
        client.close()
    return out


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("-c", "--concurrency", type=int, default=50, help="worker concurrency")
    parser.add_argument("--no-bullmq", action="store_true", help="skip the BullMQ half")
    parser.add_argument("--keep", action="store_true", help="keep the servers' logs")
    parser.add_argument("--serve", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.concurrency)

    folder = Path(tempfile.mkdtemp(prefix=".redis-memory-", dir=HERE.parent))
    jobs = args.jobs
    print("Redis memory per job: conveyor vs BullMQ")
    print(f"command : {shlex.join([sys.executable, *sys.argv])}")
    print(f"jobs    : {jobs:,} waiting jobs, task/name 'send-email', data {json.dumps(DATA)}")
    print("server  : a fresh private redis-server per column (--save '' --appendonly no)")
    print(f"before  : {load()}")
    print(flush=True)
    notes: list[str] = []
    try:
        c = conveyor_run(folder, jobs, args.concurrency)
        b: dict[str, Any] = {}
        b10: dict[str, Any] = {}
        if args.no_bullmq:
            notes.append("BullMQ: skipped (--no-bullmq)")
        elif shutil.which("node") is None:
            notes.append("BullMQ: skipped, node is not on PATH")
        elif not (NODE_DIR / "node_modules" / "bullmq").exists():
            notes.append(
                "BullMQ: skipped, run `npm install --prefix benchmarks/bullmq_memory` first"
            )
        else:
            b = bullmq_run(folder, jobs, args.concurrency, None)
            b10 = bullmq_run(folder, jobs, args.concurrency, KEEP)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    def bq(key: str, fmt: str = "{:,.0f}", source: dict[str, Any] | None = None) -> str:
        data = b if source is None else source
        return fmt.format(data[key]) if key in data else "-"

    rows = [
        ("used_memory delta / waiting job", f"{c['per_job']:,.0f} B", bq("per_job", "{:,.0f} B")),
        (
            "used_memory_dataset delta / waiting job",
            f"{c['dataset_per_job']:,.0f} B",
            bq("dataset_per_job", "{:,.0f} B"),
        ),
        (
            "MEMORY USAGE of one job hash",
            f"{c['job_hash_bytes']} B ({c['job_hash_encoding']}, {len(c['job_hash'])} fields)",
            (
                f"{b['job_hash_bytes']} B ({b['job_hash_encoding']}, {len(b['job_hash'])} fields)"
                if b
                else "-"
            ),
        ),
        (
            "MEMORY USAGE of the waiting structure / job",
            f"{c['waiting_bytes_per_job']:,.1f} B (LIST, {c['waiting_encoding']})",
            f"{b['wait_bytes_per_job']:,.1f} B ({b['wait_type'].upper()})" if b else "-",
        ),
        ("keys after enqueue (DBSIZE)", f"{c['dbsize']:,}", bq("dbsize", "{:,}")),
        (
            f"time to add {jobs:,} (batches of {BATCH:,})",
            f"{c['add_seconds']:.2f} s ({jobs / c['add_seconds']:,.0f}/s)",
            f"{b['add_seconds']:.2f} s ({jobs / b['add_seconds']:,.0f}/s)" if b else "-",
        ),
        (
            "drain, 1 worker process, -c / concurrency",
            f"{c['drain_seconds']:.1f} s, -c {args.concurrency}",
            f"{b['drain_seconds']:.1f} s, concurrency {args.concurrency}" if b else "-",
        ),
        (
            "used_memory above empty, drained, default retention",
            f"{mb(c['drained_bytes'])} ({c['completed_at_drain']:,} completed kept so far)",
            (
                f"{mb(b['used_memory_drained'] - b['used_memory_before'])} "
                f"(keeps all {b['counts_drained'].get('completed', 0):,} completed)"
                if b
                else "-"
            ),
        ),
        (
            f"... after retention trims to {KEEP:,} completed",
            f"{mb(c['trimmed_bytes'])} ({c['completed_after_trim']:,} kept, "
            f"{c['trim_wait_seconds']:.1f} s after the drain)",
            (
                f"{mb(b10['used_memory_drained'] - b10['used_memory_before'])} "
                f"(removeOnComplete count {KEEP:,}: "
                f"{b10['counts_drained'].get('completed', 0):,} kept)"
                if b10
                else "-"
            ),
        ),
        (
            "used_memory_peak above empty",
            mb(c["peak_bytes"]),
            f"{mb(b['peak_bytes'])} / with count {KEEP:,}: {mb(b10['peak_bytes'])}" if b else "-",
        ),
        (
            "slowest script call (SLOWLOG >= 10 ms)",
            c["slowest"],
            f"{b['slowest']} / with count {KEEP:,}: {b10.get('slowest', '-')}" if b else "-",
        ),
    ]
    head = ("measurement", f"conveyor (Redis {c['redis']})", "BullMQ")
    if b:
        head = (
            head[0],
            head[1],
            f"BullMQ {b['bullmq']} (ioredis {b['ioredis']}, node {b['node']})",
        )
    print(table(rows, head))
    print()
    print(f"conveyor job hash ({c['job_hash_encoding']}): {json.dumps(c['job_hash'])}")
    if b:
        print(f"BullMQ job hash ({b['job_hash_encoding']}): {json.dumps(b['job_hash'])}")
        print(f"BullMQ other keys (type, MEMORY USAGE): {json.dumps(b['other_keys'])}")
    for note in notes:
        print(note)
    print(f"after   : {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
