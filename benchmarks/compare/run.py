"""Side-by-side benchmark: conveyor against the Python job queues people use today.

    .venv/bin/python benchmarks/compare/run.py [--quick] [--jobs 10000] [--runs 3]
        [--only celery,rq] [--skip node] [--docs docs]

One command: each peer is installed into its own virtual environment under
``benchmarks/compare/.envs/<peer>`` (Node's BullMQ with npm into
``.envs/node``), reused on later runs, and measured alone on the same local
Redis (127.0.0.1:6379, databases ``--queue-db`` and ``--record-db``, 13 and 14
by default, never database 0). conveyor itself runs from the project's
``.venv``. Per system:

- enqueue jobs/s, one at a time and in bulk (chunks of 1,000) where the
  system has a bulk API;
- drain jobs/s with ONE worker process, from the first job's start to the
  last's (steady state; the figure from worker spawn is kept too);
- p50/p99 enqueue-to-start latency with an idle worker;
- a crash test: the worker with its most reliable settings is SIGKILLed (its
  whole process group) once a third of the jobs have run, started again,
  and the lost and duplicated jobs are counted.

Every job body is the same (one RPUSH of "number start-time" into the record
database: ``common.record_async`` in coroutine jobs, ``common.record`` in the
others) and every run is verified (no job missing, none run
twice) before its time is used. Figures are medians of ``--runs`` runs. The
raw limits (redis-benchmark, a minimal LMOVE/LREM reliable queue in redis-py,
a raw sqlite3 claim/complete loop) are measured alongside. The report goes to
``docs/benchmarks.md`` and ``docs/benchmarks.png``; raw results to
``benchmarks/compare/.work/results.json``.
"""

from __future__ import annotations

import argparse
import ast
import atexit
import contextlib
import csv
import io
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ENVS = HERE / ".envs"
WORK = HERE / ".work"
PROJECT_PYTHON = REPO / ".venv" / "bin" / "python"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
OWNER_KEY = "cmp:owner"
DONE_KEY = "cmp:done"
LATENCY_START = 1_000_000  # job numbers of latency probes


@dataclass
class System:
    key: str
    label: str
    peer: str  # peers/<peer>.py, or .js for node
    env: str  # .envs/<env>; "project" is the repo's .venv; "node" is npm
    requirements: list[str]
    setup: str  # short description of the worker configuration, for the table
    store: str = "redis"
    concurrency: int = 50


SYSTEMS = [
    System(
        "conveyor-def",
        "conveyor (Redis, plain def)",
        "conveyor_def",
        "project",
        [],
        "1 process, plain `def`, blocking redis-py, `-c 10` (default)",
        concurrency=10,
    ),
    System(
        "conveyor-def-c50",
        "conveyor (Redis, plain def, -c 50)",
        "conveyor_def",
        "project",
        [],
        "1 process, plain `def`, blocking redis-py, `-c 50`",
    ),
    System("conveyor", "conveyor (Redis)", "conveyor", "project", [], "1 process, async, `-c 50`"),
    System(
        "celery",
        "Celery",
        "celery",
        "celery",
        ["celery[redis]", "redis[hiredis]"],
        "prefork, 1 child per CPU, prefetch 32",
    ),
    System("rq", "RQ", "rq", "rq", ["rq", "redis[hiredis]"], "`SimpleWorker` (no fork)"),
    System(
        "dramatiq",
        "Dramatiq",
        "dramatiq",
        "dramatiq",
        ["dramatiq[redis]", "redis[hiredis]"],
        "`-p 1 -t 8` threads",
    ),
    System("arq", "arq", "arq", "arq", ["arq", "redis[hiredis]"], "`max_jobs=50`"),
    System(
        "saq",
        "SAQ",
        "saq",
        "saq",
        ["saq", "redis[hiredis]", "typing_extensions"],
        "`concurrency=50`",
    ),
    System(
        "huey",
        "Huey (RedisHuey)",
        "huey",
        "huey",
        ["huey", "redis[hiredis]"],
        "`-k thread -w 8`, blocking",
    ),
    System(
        "taskiq",
        "taskiq + taskiq-redis",
        "taskiq",
        "taskiq",
        ["taskiq", "taskiq-redis", "redis[hiredis]"],
        "stream broker, `-w 1`, 50 async",
    ),
    System(
        "bullmq-py",
        "BullMQ (Python)",
        "bullmq",
        "bullmq",
        ["bullmq", "redis[hiredis]"],
        "`concurrency: 50`",
    ),
    System(
        "bullmq-node",
        "BullMQ (Node)",
        "bullmq_node",
        "node",
        ["bullmq", "ioredis"],
        "`concurrency: 50`",
    ),
    System(
        "conveyor-def-sqlite",
        "conveyor (SQLite, plain def)",
        "conveyor_def",
        "project",
        [],
        "1 process, plain `def`, `-c 10`, `synchronous=full`",
        store="sqlite",
        concurrency=10,
    ),
    System(
        "conveyor-sqlite",
        "conveyor (SQLite)",
        "conveyor",
        "project",
        [],
        "1 process, async, `-c 50`",
        store="sqlite",
    ),
    System(
        "huey-sqlite",
        "Huey (SqliteHuey)",
        "huey",
        "huey",
        ["huey", "redis[hiredis]"],
        "`-k thread -w 8`, poll 10 ms..1 s",
        store="sqlite",
    ),
]


#: how each system recovers (or not) from a killed worker, read from its source,
#: to explain the crash-test column
CRASH_NOTES = {
    "conveyor": "a claimed job is leased; when the lease runs out another worker "
    "(here the restarted one) takes it back to waiting without spending an attempt. "
    "Jobs that ran but whose completion was not yet written run again.",
    "celery": "with `acks_late` the message stays in kombu's `unacked` hash until the "
    "task returns; a sweep puts messages older than the visibility timeout back on the "
    "queue (the sweep runs every `unacked_restore_interval` x `unacked_restore_throttle` "
    "seconds, 100 s by default, 1 s here). Without `acks_late` (the default) prefetched "
    "and running messages are lost.",
    "rq": "the job being run is in the `StartedJobRegistry`; a worker's maintenance (at "
    "its start, then every 10 minutes) moves entries past their job timeout (180 s by "
    "default) to the `FailedJobRegistry` as abandoned, or requeues them when they were "
    "enqueued with a `Retry`. So a job killed before its body ran stays stranded for "
    "minutes; the forking worker's window for that is small.",
    "dramatiq": "fetched messages sit in a per-worker acks set; the broker's maintenance "
    "(run on a random fraction of commands) requeues the acks of workers whose heartbeat "
    "is older than `heartbeat_timeout`.",
    "arq": "a job stays in the queue's sorted set while it runs, guarded by an "
    "in-progress key that expires `job_timeout` + 10 s after it was taken; then any "
    "worker runs it again.",
    "saq": "a killed worker's jobs stay in the active list; the sweep (at most once per "
    "60 s lock, whatever the `sweep` timer) waits up to 5 s for each stuck job's abort "
    "before retrying it, one job after another.",
    "huey": "the consumer takes a message off the queue with no acknowledgement; what "
    "the killed consumer had taken is gone.",
    "taskiq": "messages are read with XREADGROUP and acknowledged after the task; "
    "taskiq-redis reclaims idle pending messages (XAUTOCLAIM with `idle_timeout`) only "
    "after a read that returned new messages, so with nothing new enqueued the killed "
    "worker's messages stay pending.",
    "bullmq": "an active job holds a lock renewed by its worker; the stalled-jobs check "
    "(every `stalledInterval`) moves jobs whose lock expired back to waiting.",
    "bullmq_node": "same mechanism as the Python port (lock + stalled-jobs check).",
}


class PeerError(Exception):
    """A system failed a phase; the message is the short reason for its row."""


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


# -- processes ---------------------------------------------------------------

LIVE: set[subprocess.Popen] = set()


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """SIGTERM the worker's process group, SIGKILL it after ``grace`` seconds."""
    if proc.poll() is None:
        kill_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    kill_group(proc, signal.SIGKILL)  # children that outlived their parent too
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    LIVE.discard(proc)


def stop_all() -> None:
    for proc in list(LIVE):
        stop(proc, grace=0.5)


atexit.register(stop_all)


def _on_signal(signum: int, _frame: object) -> None:
    stop_all()
    sys.exit(128 + signum)


# -- installing --------------------------------------------------------------


def run_quiet(command: list[str], timeout: float, cwd: Path | None = None) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise PeerError(
            f"install timed out after {timeout:.0f} s: {shlex.join(command[:4])}"
        ) from None
    if done.returncode != 0:
        raise PeerError(f"install: {last_line(done.stderr or done.stdout)}")


def ensure_env(system: System, timeout: float) -> list[str]:
    """Install the system's packages if needed; the argv prefix that runs its harness."""
    if system.env == "node":
        folder = ENVS / "node"
        marker = folder / ".cmp-installed"
        wanted = " ".join(system.requirements)
        if not marker.exists() or marker.read_text() != wanted:
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / "package.json").exists():
                (folder / "package.json").write_text('{"name": "cmp-node", "private": true}\n')
            say("installing node " + wanted)
            run_quiet(
                ["npm", "install", "--no-audit", "--no-fund", *system.requirements],
                timeout,
                cwd=folder,
            )
            marker.write_text(wanted)
        return ["node", str(HERE / "peers" / f"{system.peer}.js")]
    if system.env == "project":
        if not PROJECT_PYTHON.exists():
            raise PeerError(f"{PROJECT_PYTHON} is missing (make install)")
        return [str(PROJECT_PYTHON), str(HERE / "harness.py"), system.peer]
    python = python_env(ENVS / system.env, system.requirements, timeout)
    return [str(python), str(HERE / "harness.py"), system.peer]


def python_env(folder: Path, requirements: list[str], timeout: float) -> Path:
    """A virtual environment holding ``requirements``, made once and reused; its python."""
    python = folder / "bin" / "python"
    marker = folder / ".cmp-installed"
    wanted = " ".join(requirements)
    if not python.exists() or not marker.exists() or marker.read_text() != wanted:
        say(f"installing {wanted} into {folder.relative_to(REPO)}")
        base = getattr(sys, "_base_executable", sys.executable)
        run_quiet([base, "-m", "venv", "--clear", str(folder)], timeout)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        run_quiet([*pip, *requirements], timeout)
        marker.write_text(wanted)
    return python


def plot_python(timeout: float) -> Path:
    return python_env(ENVS / "plot", ["matplotlib"], timeout)


# -- one system --------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    queue_db: redis.Redis
    record_db: redis.Redis
    results: dict = field(default_factory=dict)

    def clean(self) -> None:
        """Delete every key of the two databases this benchmark owns (but the marker)."""
        for client in (self.queue_db, self.record_db):
            batch = [k for k in client.scan_iter(count=1000) if k != OWNER_KEY.encode()]
            for i in range(0, len(batch), 1000):
                client.unlink(*batch[i : i + 1000])


class Runner:
    """Drives one system through its phases."""

    def __init__(self, bench: Bench, system: System, prefix: list[str]) -> None:
        self.bench = bench
        self.args = bench.args
        self.system = system
        self.prefix = prefix
        self.sqlite_path = str(WORK / f"{system.key}-init.db")  # nothing opens it
        self.logs = WORK / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def env(self, reliable: bool = False) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CMP_QUEUE_URL=f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.args.queue_db}",
            CMP_RECORD_URL=f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.args.record_db}",
            CMP_STORE=self.system.store,
            CMP_SQLITE=self.sqlite_path,
            CMP_RELIABLE="1" if reliable else "0",
            CMP_LEASE=str(self.args.lease),
            CMP_CONCURRENCY=str(self.system.concurrency),
            NODE_PATH=str(ENVS / "node" / "node_modules"),
            PYTHONUNBUFFERED="1",
        )
        env.pop("CONVEYOR_URL", None)
        return env

    def fresh(self, tag: str) -> None:
        self.bench.clean()
        if self.system.store == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.sqlite_path + suffix)
            self.sqlite_path = str(WORK / f"{self.system.key}-{tag}.db")

    def action(self, *args: str, timeout: float | None = None) -> dict:
        command = [*self.prefix, *args]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                env=self.env(),
                timeout=timeout or self.args.timeout,
                cwd=HERE,
            )
        except subprocess.TimeoutExpired:
            raise PeerError(
                f"{args[0]} timed out after {timeout or self.args.timeout:.0f} s"
            ) from None
        if done.returncode != 0:
            raise PeerError(f"{args[0]}: {last_line(done.stderr or done.stdout)}")
        try:
            out = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise PeerError(f"{args[0]}: no result ({last_line(done.stderr)})") from None
        if "error" in out:
            raise PeerError(f"{args[0]}: {out['error']}")
        return out

    def start_worker(self, tag: str, reliable: bool = False) -> subprocess.Popen:
        log = open(self.logs / f"{self.system.key}-{tag}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [*self.prefix, "worker"],
            env=self.env(reliable),
            cwd=HERE,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        LIVE.add(proc)
        proc.log_name = f"{self.system.key}-{tag}.log"  # type: ignore[attr-defined]
        return proc

    def worker_died(self, proc: subprocess.Popen) -> PeerError:
        text = (self.logs / proc.log_name).read_text(errors="replace")  # type: ignore[attr-defined]
        return PeerError(f"worker exited {proc.returncode}: {last_line(text)}")

    def wait_count(
        self, target: int, proc: subprocess.Popen, timeout: float, poll: float = 0.005
    ) -> float:
        """Wait until ``target`` records exist; the moment it happened."""
        deadline = time.time() + timeout
        record_db = self.bench.record_db
        while True:
            if record_db.llen(DONE_KEY) >= target:
                return time.time()
            if proc.poll() is not None:
                raise self.worker_died(proc)
            if time.time() > deadline:
                have = record_db.llen(DONE_KEY)
                raise PeerError(f"only {have:,} of {target:,} jobs ran within {timeout:.0f} s")
            time.sleep(poll)

    def records(self) -> list[tuple[int, float]]:
        out = []
        for item in self.bench.record_db.lrange(DONE_KEY, 0, -1):
            n, ts = item.split()
            out.append((int(n), float(ts)))
        return out

    @staticmethod
    def check(records: list[tuple[int, float]], expected: range) -> str | None:
        numbers = [n for n, _ in records]
        unique = set(numbers)
        missing = len(set(expected) - unique)
        twice = len(numbers) - len(unique)
        extra = len(unique - set(expected))
        if missing or twice or extra:
            return f"verification failed: {missing} missing, {twice} run twice, {extra} unexpected"
        return None

    # phases ---------------------------------------------------------------

    def enqueue(self, mode: str, count: int) -> float:
        out = self.action("enqueue", "--mode", mode, "--start", "0", "--count", str(count))
        return count / out["seconds"]

    def drain(self, count: int, tag: str) -> tuple[float, float]:
        spawned = time.time()
        proc = self.start_worker(tag)
        try:
            self.wait_count(count, proc, self.args.timeout)
            time.sleep(0.5)  # a job run twice would show up here
        finally:
            stop(proc)
        records = self.records()
        problem = self.check(records, range(count))
        if problem:
            raise PeerError(f"drain {problem}")
        starts = sorted(ts for _, ts in records)
        steady = (count - 1) / max(starts[-1] - starts[0], 1e-9)
        wall = count / max(starts[-1] - spawned, 1e-9)
        return steady, wall

    def latency(self, samples: int, tag: str) -> tuple[float, float]:
        proc = self.start_worker(tag)
        try:
            out = self.action(
                "latency",
                "--start",
                str(LATENCY_START),
                "--count",
                str(samples),
                "--pause",
                str(self.args.pause),
            )
            self.wait_count(samples + 1, proc, 60)
            time.sleep(0.3)
        finally:
            stop(proc)
        records = self.records()
        problem = self.check(records, range(LATENCY_START - 1, LATENCY_START + samples))
        if problem:
            raise PeerError(f"latency {problem}")
        started = dict(records)
        lat = sorted((started[int(n)] - sent) * 1000 for n, sent in out["sent"].items())
        return percentile(lat, 50), percentile(lat, 99)

    def crash(self, count: int, bulk: bool) -> dict:
        self.fresh("crash")
        try:
            self.enqueue("bulk" if bulk else "one", count)
        except PeerError as exc:
            if "no bulk API" not in str(exc):
                raise
            self.enqueue("one", count)
        proc = self.start_worker("crash-1", reliable=True)
        try:
            self.wait_count(max(1, count // 3), proc, self.args.timeout, poll=0.001)
            kill_group(proc, signal.SIGKILL)
            killed_at = self.bench.record_db.llen(DONE_KEY)
        finally:
            stop(proc, grace=0)
        time.sleep(0.2)
        proc = self.start_worker("crash-2", reliable=True)
        restarted = last_progress = time.time()
        complete_at = None
        seen = -1
        try:
            while True:
                time.sleep(0.25)
                records = self.records()
                unique = len({n for n, _ in records})
                now = time.time()
                if len(records) != seen:
                    seen, last_progress = len(records), now
                if unique >= count and complete_at is None:
                    complete_at = now
                if complete_at is not None and now - complete_at >= self.args.settle:
                    break
                if complete_at is None and now - last_progress >= self.args.crash_wait:
                    break  # jobs are missing and nothing has run for a while: lost
                if now - restarted >= self.args.timeout:
                    break
                if proc.poll() is not None:
                    raise self.worker_died(proc)
        finally:
            stop(proc)
        records = self.records()
        numbers = [n for n, _ in records]
        unique = set(numbers)
        return {
            "jobs": count,
            "killed_after": killed_at,
            "lost": len(set(range(count)) - unique),
            "twice": len(numbers) - len(unique),
            "recovered_in": None if complete_at is None else complete_at - restarted,
        }


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def run_system(bench: Bench, system: System) -> dict:
    args = bench.args
    result: dict = {
        "label": system.label,
        "setup": system.setup,
        "store": system.store,
        "samples": {},
        "errors": [],
    }
    began = time.time()
    samples: dict[str, list[float]] = {
        k: [] for k in ("enqueue_one", "enqueue_bulk", "drain", "drain_wall", "p50", "p99")
    }
    result["samples"] = samples
    try:
        prefix = ensure_env(system, args.install_timeout)
    except PeerError as exc:
        result["failed"] = str(exc)
        return result
    runner = Runner(bench, system, prefix)
    try:
        result["versions"] = runner.action("versions", timeout=120)
    except PeerError as exc:
        result["failed"] = str(exc)
        return result
    bulk = True
    deadline = began + args.system_timeout
    try:
        for run in range(args.runs):
            if time.time() > deadline:
                raise PeerError(f"stopped after {args.system_timeout:.0f} s for this system")
            say(f"{system.label}: run {run + 1}/{args.runs}: enqueue one at a time, drain")
            runner.fresh(f"r{run}")
            samples["enqueue_one"].append(runner.enqueue("one", args.jobs))
            steady, wall = runner.drain(args.jobs, f"drain-{run}")
            samples["drain"].append(steady)
            samples["drain_wall"].append(wall)
            if bulk:
                runner.fresh(f"r{run}b")
                try:
                    rate = runner.enqueue("bulk", args.jobs)
                except PeerError as exc:
                    if "no bulk API" not in str(exc):
                        raise
                    bulk = False
                else:
                    say(f"{system.label}: run {run + 1}: bulk enqueued, drain")
                    samples["enqueue_bulk"].append(rate)
                    steady, wall = runner.drain(args.jobs, f"drain-bulk-{run}")
                    samples["drain"].append(steady)
                    samples["drain_wall"].append(wall)
            say(f"{system.label}: run {run + 1}: latency")
            runner.fresh(f"r{run}l")
            p50, p99 = runner.latency(args.samples, f"latency-{run}")
            samples["p50"].append(p50)
            samples["p99"].append(p99)
        if not args.no_crash:
            say(f"{system.label}: crash test")
            result["crash"] = runner.crash(args.crash_jobs, bulk)
    except PeerError as exc:
        result["failed"] = str(exc)
    finally:
        stop_all()
        runner.fresh("end")
        bench.clean()
    result["bulk"] = bulk
    result["seconds"] = time.time() - began
    return result


# -- raw limits ----------------------------------------------------------------


def raw_redis_benchmark(args: argparse.Namespace) -> dict:
    out = {}
    if not shutil.which("redis-benchmark"):
        return {"failed": "redis-benchmark not found"}
    requests = max(20_000, args.jobs * 10)
    for clients in (1, 50):
        command = [
            "redis-benchmark",
            "-h",
            REDIS_HOST,
            "-p",
            str(REDIS_PORT),
            "--dbnum",
            str(args.queue_db),
            "-n",
            str(requests),
            "-c",
            str(clients),
            "-t",
            "set,lpush,lpop",
            "-P",
            "1",
            "--csv",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        for row in csv.reader(io.StringIO(done.stdout)):
            if row and row[0] != "test":
                out[f"{row[0]} (-c {clients})"] = float(row[1])
    out["command"] = shlex.join(command).replace("-c 50", "-c 1|50")
    return out


def raw_redis_queue(client: redis.Redis, jobs: int, batch: int) -> float:
    """A minimal reliable queue: LMOVE the job into a processing list, then LREM it."""
    client.delete("raw:queue", "raw:processing")
    pipe = client.pipeline(transaction=False)
    for i in range(jobs):
        pipe.lpush("raw:queue", f"job-{i}")
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    done = 0
    began = time.perf_counter()
    if batch == 1:
        while (item := client.lmove("raw:queue", "raw:processing", "RIGHT", "LEFT")) is not None:
            client.lrem("raw:processing", 1, item)
            done += 1
    else:
        while True:
            pipe = client.pipeline(transaction=False)
            for _ in range(batch):
                pipe.lmove("raw:queue", "raw:processing", "RIGHT", "LEFT")
            items = [item for item in pipe.execute() if item is not None]
            if not items:
                break
            pipe = client.pipeline(transaction=False)
            for item in items:
                pipe.lrem("raw:processing", 1, item)
            pipe.execute()
            done += len(items)
    elapsed = time.perf_counter() - began
    assert done == jobs and client.llen("raw:processing") == 0, (done, jobs)
    client.delete("raw:queue", "raw:processing")
    return jobs / elapsed


def record_cost(client: redis.Redis, jobs: int) -> float:
    """Microseconds one job body (one RPUSH of number and time) costs, one client."""
    client.delete(DONE_KEY)
    began = time.perf_counter()
    for n in range(jobs):
        client.rpush(DONE_KEY, f"{n} {time.time():.6f}")
    elapsed = time.perf_counter() - began
    client.delete(DONE_KEY)
    return elapsed / jobs * 1e6


def raw_limits(bench: Bench) -> dict:
    args = bench.args
    say("raw limits: redis-benchmark, redis-py LMOVE queue, sqlite3 loop")
    out: dict = {"redis_benchmark": raw_redis_benchmark(args)}
    bench.clean()
    for name, batch in (("redis_single", 1), ("redis_batch100", 100)):
        out[name] = median(
            [raw_redis_queue(bench.queue_db, args.jobs, batch) for _ in range(args.runs)]
        )
    out["record_us"] = median([record_cost(bench.record_db, args.jobs) for _ in range(args.runs)])
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from sqlite_raw import run as sqlite_run
    except ImportError as exc:
        out["sqlite"] = {"failed": f"benchmarks/sqlite_raw.py: {exc}"}
    else:
        WORK.mkdir(exist_ok=True)
        out["sqlite"] = {
            f"{sync} batch {batch}": median(
                [sqlite_run(str(WORK), args.jobs, sync, batch) for _ in range(args.runs)]
            )
            for batch in (1, 100)
            for sync in ("NORMAL", "FULL")
        }
    bench.clean()
    return out


# -- report --------------------------------------------------------------------


def machine(bench: Bench) -> dict:
    info = bench.queue_db.info("server")
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    npm = subprocess.run(["npm", "--version"], capture_output=True, text=True).stdout.strip()
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis": info.get("redis_version"),
        "node": node or "?",
        "npm": npm or "?",
    }


def config_notes() -> dict[str, str]:
    """Each peer module's docstring, which says how the system is configured."""
    notes = {}
    for path in sorted((HERE / "peers").iterdir()):
        if path.suffix == ".py" and path.stem != "__init__":
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        elif path.suffix == ".js":
            doc = ""
            for line in path.read_text().splitlines():  # the leading comment's first paragraph
                if not line.startswith("//") or not line[2:].strip():
                    break
                doc += " " + line[2:].strip()
        else:
            continue
        notes[path.stem] = " ".join(doc.split())
    return notes


def fmt_rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def crash_cell(result: dict) -> str:
    crash = result.get("crash")
    if not crash:
        return "—"
    text = f"{crash['lost']} lost, {crash['twice']} twice"
    if crash["recovered_in"] is not None:
        text += f" ({crash['recovered_in']:.0f} s)"
    return text


def table(results: list[dict]) -> list[str]:
    lines = [
        "| system | worker set-up | enqueue one (jobs/s) | enqueue bulk (jobs/s) "
        "| drain, 1 worker (jobs/s; from spawn) | latency p50 / p99 (ms) "
        "| crash test: lost, twice (recovery) |",
        "|---|---|--:|--:|--:|--:|---|",
    ]
    for r in results:
        s = r["samples"]
        if r.get("failed") and not s["enqueue_one"]:
            lines.append(f"| {r['label']} | {r['setup']} | failed: {r['failed']} | | | | |")
            continue
        bulk = fmt_rate(median(s["enqueue_bulk"])) if r.get("bulk") else "no bulk API"
        lat = f"{fmt_ms(median(s['p50']))} / {fmt_ms(median(s['p99']))}" if s["p50"] else "—"
        crash = crash_cell(r)
        if r.get("failed"):
            crash += f"; failed: {r['failed']}"
        lines.append(
            f"| {r['label']} | {r['setup']} | {fmt_rate(median(s['enqueue_one']))} "
            f"| {bulk} | {fmt_rate(median(s['drain']))} "
            f"({fmt_rate(median(s['drain_wall']))}) | {lat} | {crash} |"
        )
    return lines


def verdict(results: list[dict]) -> list[str]:
    """Where conveyor leads and where it does not, computed from the figures
    (the bar: lead every throughput column among the Python systems, drain at
    least twice the fastest Python peer's and at least Node BullMQ's), first
    with the job most users write (a plain ``def`` calling blocking redis-py),
    then with an ``async def`` job."""
    out = ["## Where conveyor leads, and where it does not", ""]
    node = next((r for r in results if "Node" in r["label"]), None)
    ours_all = [r for r in results if r["label"].startswith("conveyor")]
    python = [r for r in results if r["store"] == "redis" and r not in ours_all
              and "Node" not in r["label"]]  # fmt: skip
    peers_sqlite = [r for r in results if r["store"] == "sqlite" and r not in ours_all]
    for label, rivals in (
        ("conveyor (Redis, plain def)", python),
        ("conveyor (Redis, plain def, -c 50)", python),
        ("conveyor (SQLite, plain def)", peers_sqlite),
    ):
        mine_row = next((r for r in results if r["label"] == label), None)
        drains = [
            (median(r["samples"]["drain"]), r["label"]) for r in rivals if r["samples"]["drain"]
        ]
        if mine_row is None or not drains or median(mine_row["samples"]["drain"]) is None:
            continue
        mine, (best, who) = median(mine_row["samples"]["drain"]), max(drains)
        line = (f"- {label} drain: {fmt_rate(mine)} jobs/s, {mine / best:.2f}x the fastest peer "
                f"here ({who}, {fmt_rate(best)})")  # fmt: skip
        if node is not None and node["samples"]["drain"] and mine_row["store"] == "redis":
            theirs = median(node["samples"]["drain"])
            line += f", {mine / theirs:.2f}x Node's BullMQ ({fmt_rate(theirs)})"
        out.append(line + ".")
    ours = next((r for r in results if r["label"] == "conveyor (Redis)"), None)
    if ours is None:
        return [*out, ""]
    out.append("")
    out.append("With an `async def` job (conveyor (Redis)):")
    out.append("")
    for key, name in (("enqueue_one", "enqueue one at a time"), ("enqueue_bulk", "bulk enqueue"),
                      ("drain", "drain")):  # fmt: skip
        mine = median(ours["samples"][key])
        rivals = [(median(r["samples"][key]), r["label"]) for r in python if r["samples"][key]]
        if mine is None or not rivals:
            continue
        best, who = max(rivals)
        word = "leads" if mine > best else "does NOT lead"
        out.append(f"- {name}: conveyor {word} ({fmt_rate(mine)} against {who}'s {fmt_rate(best)}, "
                   f"{mine / best:.2f}x).")  # fmt: skip
    drain = median(ours["samples"]["drain"])
    if node is not None and drain is not None and node["samples"]["drain"]:
        theirs = median(node["samples"]["drain"])
        word = "at least" if drain >= theirs else "BELOW"
        out.append(
            f"- drain against Node's BullMQ: {word} ({fmt_rate(drain)} against {fmt_rate(theirs)})."
        )
    out.append(f"- crash test: {crash_cell(ours)}.")
    return [*out, ""]


def peer_name(system: System) -> str:
    """The system's name without the store, unless two peers would share it."""
    short = system.label.split(" (")[0]
    others = {s.peer for s in SYSTEMS if s.label.split(" (")[0] == short}
    return short if len(others) == 1 else system.label


def write_report(
    args: argparse.Namespace,
    results: list[dict],
    raw: dict | None,
    info: dict,
    command: str,
    total: float,
) -> str:
    by_store = {
        "redis": [r for r in results if r["store"] == "redis"],
        "sqlite": [r for r in results if r["store"] == "sqlite"],
    }
    out = [
        "# Benchmarks: conveyor beside the Python job queues people use today",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d')} "
        f"in {total / 60:.0f} min ({args.jobs:,} jobs a run, median of {args.runs} "
        f"run{'s' if args.runs > 1 else ''}, {args.samples} latency samples a run).",
        "",
        f"Machine: {info['cpus']} CPUs ({info['cpu'] or 'unknown model'}), {info['os']}; "
        f"Python {info['python']}, Redis {info['redis']} on 127.0.0.1 (no persistence), "
        f"Node {info['node']} (npm {info['npm']}).",
        "",
        "![bar chart of the figures below](benchmarks.png)",
        "",
        "## On Redis",
        "",
        *table(by_store["redis"]),
        "",
        "## Embedded (SQLite)",
        "",
        *table(by_store["sqlite"]),
        "",
        *verdict(results),
    ]
    if raw:
        rb = raw["redis_benchmark"]
        out += ["## The raw limits", "", "| measurement | jobs (or ops) per second |", "|---|--:|"]
        for name, value in rb.items():
            if name not in ("command", "failed"):
                out.append(f"| `redis-benchmark` {name}, no pipelining | {value:,.0f} |")
        if "failed" in rb:
            out.append(f"| `redis-benchmark` | failed: {rb['failed']} |")
        out += [
            f"| redis-py reliable queue, one job at a time (LMOVE to a processing list, LREM ack) "
            f"| {fmt_rate(raw['redis_single'])} |",
            f"| redis-py reliable queue, 100 jobs a pipeline | {fmt_rate(raw['redis_batch100'])} |",
        ]
        sqlite = raw["sqlite"]
        if "failed" in sqlite:
            out.append(f"| raw sqlite3 | failed: {sqlite['failed']} |")
        else:
            for name, value in sqlite.items():
                out.append(
                    f"| raw `sqlite3` claim + complete, synchronous={name} jobs a "
                    f"transaction | {value:,.0f} |"
                )
        out += [
            "",
            f"`redis-benchmark` command: `{rb.get('command', '')}`. The raw loops run no job "
            "body. The job body every system runs (one `RPUSH` of the job's number and start "
            f"time into a separate Redis database) costs {raw['record_us']:.0f} µs from one "
            f"client, one at a time: a worker that runs jobs one after another cannot drain "
            f"faster than {1e6 / raw['record_us']:,.0f} jobs/s with it, and systems that run "
            "jobs concurrently overlap it.",
            "",
        ]
    out += [
        "## How the figures are taken",
        "",
        "- **enqueue one**: `--jobs` jobs, one call each, from one process of the system's "
        "client library, timed after connecting. **bulk**: the same jobs through the system's "
        "bulk API in calls of 1,000 (`enqueue_many`, `addBulk`).",
        "- **drain**: the queue filled, then ONE worker process (set up as in the table) is "
        "started; the rate is from the first job's recorded start to the last's "
        "(steady state; worker start-up excluded); in brackets, from the moment the worker "
        "process was spawned to the last job's start. It is the median over the drains after "
        "both kinds of enqueue. Every drain is verified: each job number ran exactly once.",
        f"- **latency**: an idle worker (after a warm-up job), then {args.samples} jobs one at "
        f"a time, {args.pause * 1000:.0f} ms apart; latency is the job body's start time minus "
        "the moment just before the enqueue call (one clock, one machine).",
        f"- **crash test** ({args.crash_jobs:,} jobs): the worker with the system's most "
        "reliable settings (below) is SIGKILLed, its whole process group, once a third of "
        "the jobs have started; it is started again, and the count is taken "
        f"{args.settle:.0f} s after the last missing job ran, or once no job at all has "
        f"run for {args.crash_wait:.0f} s (at most {args.timeout:.0f} s after the restart). "
        "*lost*: jobs that never ran by then; *twice*: runs "
        "beyond the first (the jobs that were running or done-but-not-acknowledged at "
        "the kill are the ones an at-least-once system runs again). Leases, visibility "
        f"timeouts and locks are set to {args.lease:g} s where the system has them, so "
        "recovery can be seen in bounded time; the time in brackets is from restart to "
        "the last missing job.",
        "- **the job body** is the same everywhere: one `RPUSH` of the job's number and "
        "start time into a separate Redis database, with the client natural to how the "
        "system runs jobs: ioredis in Node's BullMQ; redis-py's asyncio client in the Python "
        "systems whose jobs are coroutines on an event loop (conveyor, arq, SAQ, taskiq, "
        "BullMQ for Python), where a blocking call would stall the loop for a round trip "
        "a job; blocking redis-py in the others (Celery, RQ, Dramatiq, Huey), whose jobs "
        "run on threads or processes. Every Python system's venv gets redis-py with "
        "hiredis, as conveyor's own `.venv` has.",
        "- Queue data lives in Redis database "
        f"{args.queue_db}, completion records in {args.record_db}; both are emptied between "
        "phases. Worker processes are always killed (process group) at the end of a phase.",
        "",
        "## How each system was configured",
        "",
    ]
    notes = config_notes()
    seen = set()
    for system in SYSTEMS:
        if system.peer in seen:
            continue
        seen.add(system.peer)
        ext = "js" if system.env == "node" else "py"
        out.append(
            f"- **{peer_name(system)}** (`benchmarks/compare/peers/"
            f"{system.peer}.{ext}`): {notes.get(system.peer, '')}"
        )
    out += ["", "## How each system recovers from a killed worker", ""]
    seen = set()
    for system in SYSTEMS:
        if system.peer not in seen and system.peer in CRASH_NOTES:
            seen.add(system.peer)
            out.append(f"- **{peer_name(system)}**: {CRASH_NOTES[system.peer]}")
    out += ["", "## Versions", "", "| system | packages |", "|---|---|"]
    for r in results:
        versions = r.get("versions") or {}
        text = ", ".join(f"{k} {v}" for k, v in versions.items()) or "—"
        out.append(f"| {r['label']} | {text} |")
    out += ["", "## Failures and run times", ""]
    for r in results:
        state = f"failed: {r['failed']}" if r.get("failed") else "ok"
        out.append(f"- {r['label']}: {state} ({r.get('seconds', 0):.0f} s)")
    out.append("")
    return "\n".join(out)


def plot(results: list[dict], png: Path, timeout: float) -> str | None:
    data = []
    for r in results:
        s = r["samples"]
        data.append(
            {
                "label": r["label"],
                "enqueue_one": median(s["enqueue_one"]),
                "enqueue_bulk": median(s["enqueue_bulk"]),
                "drain": median(s["drain"]),
                "p50": median(s["p50"]),
                "p99": median(s["p99"]),
            }
        )
    path = WORK / "plot.json"
    path.write_text(json.dumps(data))
    try:
        python = plot_python(timeout)
    except PeerError as exc:
        return str(exc)
    done = subprocess.run(
        [str(python), str(HERE / "plot.py"), str(path), str(png)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return None if done.returncode == 0 else last_line(done.stderr)


# -- main ------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    keys = ",".join(s.key for s in SYSTEMS)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs a run (default 10000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure, median (default 3)")
    parser.add_argument("--quick", action="store_true", help="2000 jobs, 1 run, 100 samples")
    parser.add_argument("--samples", type=int, default=200, help="latency samples a run")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between latency jobs")
    parser.add_argument("--crash-jobs", type=int, default=2000, help="jobs in the crash test")
    parser.add_argument(
        "--lease",
        type=float,
        default=5.0,
        help="lease / visibility timeout / lock seconds in the crash test",
    )
    parser.add_argument(
        "--crash-wait",
        type=float,
        default=90.0,
        help="crash test: jobs still missing after this many seconds in which no job ran are lost",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=12.0,
        help="seconds to keep watching for duplicates once no job is missing",
    )
    parser.add_argument("--only", default="", help=f"comma-separated subset of {keys}")
    parser.add_argument("--skip", default="", help="comma-separated systems to leave out")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw limits")
    parser.add_argument("--no-crash", action="store_true", help="skip the crash test")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="only write the report again from .work/results.json",
    )
    parser.add_argument("--queue-db", type=int, default=13)
    parser.add_argument("--record-db", type=int, default=14)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per phase")
    parser.add_argument(
        "--system-timeout",
        type=float,
        default=1500.0,
        help="seconds per system before its remaining runs are skipped",
    )
    parser.add_argument("--install-timeout", type=float, default=900.0)
    parser.add_argument(
        "--docs", default=str(REPO / "docs"), help="folder for benchmarks.md and benchmarks.png"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.runs, args.samples = 2000, 1, 100
    for name in ("only", "skip"):
        chosen = [k for k in getattr(args, name).split(",") if k]
        unknown = set(chosen) - {s.key for s in SYSTEMS}
        if unknown:
            parser.error(f"--{name}: unknown {', '.join(sorted(unknown))}; known: {keys}")
        setattr(args, name, chosen)
    if 0 in (args.queue_db, args.record_db) or args.queue_db == args.record_db:
        parser.error("use two distinct databases other than 0")
    return args


def claim_databases(bench: Bench) -> None:
    """Refuse to run on databases holding someone else's keys."""
    for client, number in (
        (bench.queue_db, bench.args.queue_db),
        (bench.record_db, bench.args.record_db),
    ):
        if client.dbsize() and not bench.record_db.exists(OWNER_KEY):
            sys.exit(
                f"Redis database {number} holds keys this benchmark did not write; "
                "choose others with --queue-db/--record-db"
            )
    bench.record_db.set(OWNER_KEY, "benchmarks/compare/run.py")


def render(data: dict, docs: Path, install_timeout: float) -> str:
    """Write benchmarks.md and benchmarks.png from the saved results."""
    args = argparse.Namespace(**data["args"])
    docs.mkdir(parents=True, exist_ok=True)
    problem = plot(data["results"], docs / "benchmarks.png", install_timeout)
    if problem:
        say(f"no chart: {problem}")
    report = write_report(
        args, data["results"], data["raw"], data["machine"], data["command"], data["total"]
    )
    (docs / "benchmarks.md").write_text(report)
    return report


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report_only:
        data = json.loads((WORK / "results.json").read_text())
        print(render(data, Path(args.docs), args.install_timeout))
        return
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    began = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    ENVS.mkdir(parents=True, exist_ok=True)
    bench = Bench(
        args,
        redis.Redis(REDIS_HOST, REDIS_PORT, db=args.queue_db),
        redis.Redis(REDIS_HOST, REDIS_PORT, db=args.record_db),
    )
    claim_databases(bench)
    info = machine(bench)
    systems = [
        s for s in SYSTEMS if (not args.only or s.key in args.only) and s.key not in args.skip
    ]
    results = []
    command = ".venv/bin/python benchmarks/compare/run.py" + (
        " " + shlex.join(argv if argv is not None else sys.argv[1:])
        if (argv or sys.argv[1:])
        else ""
    )
    data: dict = {
        "args": vars(args),
        "machine": info,
        "raw": None,
        "results": results,
        "command": command,
        "total": 0.0,
    }
    try:
        data["raw"] = None if args.no_raw else raw_limits(bench)
        for system in systems:
            say(f"== {system.label}")
            result = run_system(bench, system)
            say(
                f"{system.label}: {'failed: ' + result['failed'] if result.get('failed') else 'ok'}"
                f" in {result.get('seconds', 0):.0f} s"
            )
            results.append(result)
            data["total"] = time.time() - began
            (WORK / "results.json").write_text(json.dumps(data, indent=1))
    finally:
        stop_all()
        bench.clean()
        bench.record_db.delete(OWNER_KEY)
    data["total"] = time.time() - began
    (WORK / "results.json").write_text(json.dumps(data, indent=1))
    print(render(data, Path(args.docs), args.install_timeout))


if __name__ == "__main__":
    main()
