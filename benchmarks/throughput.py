"""Throughput and latency of conveyor on any store: SQLite (the default) or Redis.

    .venv/bin/python benchmarks/throughput.py [--url URL | --private-redis] [--jobs 10000]
        [--runs 3] [-c 10] [--also 1,50] [--bulk-jobs 100000] [--samples 300]
        [--pause 0.02] [--dir DIR] [--keep]

``--url`` names the store: by default a fresh SQLite file per run (in a
temporary folder inside the repository, so on the same disk as the code);
``sqlite:///DIR/NAME.db`` puts the files in DIR instead; ``redis://host:port/db``
(or ``rediss://``, ``redis+sentinel://``) uses that server with a fresh
``?prefix=`` per run whose keys are deleted after the run. ``--private-redis``
starts a redis-server of its own on a free port (no persistence) and stops it
at the end.

Measures, each figure the median of ``--runs`` runs on a fresh store:

(a) enqueue one job at a time through the public API (``task.enqueue()``);
(a2) bulk enqueue: ``app.enqueue_many`` in batches of 1,000;
(b) drain: one ``conveyor worker --burst -c N`` process empties a queue of
    noop jobs (async and sync), timed from process start to exit and from the
    first to the last ``finished_at`` the store recorded; every run checks that
    each enqueued job completed exactly once before its time is trusted;
(c) enqueue-to-start latency with an idle worker, one job every ``--pause`` s;
(d) the limit: for SQLite the raw sqlite3 loops of ``benchmarks/sqlite_raw.py``;
    for Redis ``redis-benchmark -t ping,set,lpush -n 50000 -q`` (no pipelining;
    ping also from 1 client), redis-py round trips one at a time (PING, EVALSHA
    of ``return 1``), LPUSH -> BLPOP latency into another idle process, and a raw
    redis-py loop claiming (LMOVE) and acknowledging (LREM) jobs of a plain
    list, one round trip per batch of 1 or 100 jobs.

``--skip drain,bulk,latency,raw`` leaves parts out; ``--kinds async`` drains
only async noop jobs. Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_app import make_app  # noqa: E402
from conveyor import Conveyor  # noqa: E402
from conveyor.brokers.base import STATES, JobRecord  # noqa: E402

BULK_BATCH = 1_000  # jobs per app.enqueue_many call
Row = tuple[str, str, str, str, str]  # measurement, figure, detail, target, met


@dataclass(frozen=True)
class Targets:
    enqueue: float  # jobs/s, one at a time
    drain: float  # jobs/s, one worker process
    drain_every_c: bool  # the drain target applies to every -c tried, not only the default
    bulk: float | None  # jobs/s through enqueue_many
    p50_ms: float
    p99_ms: float


SQLITE_TARGETS = Targets(5_000, 5_000, False, None, 20.0, 50.0)
REDIS_TARGETS = Targets(7_000, 15_000, True, 80_000, 1.0, 3.0)


def say(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def worker_command(app: str, *options: str) -> list[str]:
    script = Path(sys.executable).with_name("conveyor")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "conveyor.cli"]
    return [*head, "worker", app, "--log-level", "WARNING", *options]


def all_records(app: Conveyor, page: int = 5_000) -> list[JobRecord]:
    """Every stored job, read in pages through the broker's cursor."""
    records: list[JobRecord] = []
    after = None
    while page_records := app.broker.list(limit=page, after=after):
        records += page_records
        after = page_records[-1].seq
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


def median_of(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], unit: str = "/s", digits: int = 0) -> str:
    if len(values) == 1:
        return "1 run"
    return f"{len(values)} runs: {min(values):,.{digits}f}..{max(values):,.{digits}f}{unit}"


# -- Redis helpers, shared with redis_scale.py and redis_memory.py ---------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of our own on a free port, without persistence; stopped on exit.

    >>> with PrivateRedis(folder) as server:  # doctest: +SKIP
    ...     server.url  # 'redis://127.0.0.1:PORT/0'
    """

    def __init__(self, folder: Path, *config: str) -> None:
        self.folder = folder
        self.config = config
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> PrivateRedis:
        import redis

        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = (self.folder / f"redis-{self.port}.log").open("w")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder), *self.config],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.url = f"redis://127.0.0.1:{self.port}/0"
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.05)
        client.close()
        say(f"private redis-server on port {self.port} (pid {self.proc.pid})")
        return self

    def __exit__(self, *exc: object) -> None:
        import redis

        if self.proc is None:
            return
        with contextlib.suppress(redis.RedisError):
            redis.Redis(port=self.port).shutdown(nosave=True)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def with_prefix(url: str, prefix: str) -> str:
    """The Redis URL with ``?prefix=`` set to ``prefix``."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "prefix"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("prefix", prefix)])))


def prefix_of(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query)).get("prefix", "conveyor")


def redis_client(url: str) -> Any:
    """A redis-py client for the server a conveyor URL names (as conveyor builds it)."""
    from conveyor.brokers.redis_connection import connect, parse_url

    return connect(parse_url(url))


def delete_prefix(client: Any, prefix: str) -> int:
    """Delete every key of a conveyor prefix (``prefix:*``); how many."""
    deleted, batch = 0, []
    for key in client.scan_iter(match=f"{prefix}:*", count=5_000):
        batch.append(key)
        if len(batch) >= 5_000:
            deleted += _unlink(client, batch)
            batch = []
    return deleted + _unlink(client, batch)


def _unlink(client: Any, keys: list[str]) -> int:
    if not keys:
        return 0
    pipe = client.pipeline(transaction=False)
    for key in keys:  # one key a command: fine in a Cluster, whose keys live in many slots
        pipe.unlink(key)
    return sum(pipe.execute())


def server_address(client: Any) -> tuple[str, int, int] | None:
    """(host, port, db) of a plain one-server client, else None."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    if "host" in kwargs and "port" in kwargs and "service_name" not in kwargs:
        return kwargs["host"], int(kwargs["port"]), int(kwargs.get("db") or 0)
    return None


def raw_redis_loop(client: Any, prefix: str, jobs: int, batch: int) -> float:
    """Jobs/s of the simplest reliable Redis queue, without conveyor code.

    ``jobs`` ids in a list; each round trip acknowledges the previous batch
    (LREM from the processing list) and claims the next (LMOVE waiting ->
    processing), ``batch`` jobs of each in one pipeline.
    """
    waiting, processing = f"{prefix}:{{raw}}:waiting", f"{prefix}:{{raw}}:processing"
    client.delete(waiting, processing)
    for start in range(0, jobs, 10_000):
        client.rpush(waiting, *(f"job-{i:08d}" for i in range(start, min(jobs, start + 10_000))))
    done, held = 0, []
    started = time.perf_counter()
    while True:
        pipe = client.pipeline(transaction=False)
        for job_id in held:
            pipe.lrem(processing, 1, job_id)
        for _ in range(batch):
            pipe.lmove(waiting, processing, "LEFT", "RIGHT")
        replies = pipe.execute()
        done += len(held)
        held = [r for r in replies[len(held) :] if r is not None]
        if not held:
            break
    elapsed = time.perf_counter() - started
    left = client.llen(waiting) + client.llen(processing)
    client.delete(waiting, processing)
    if done != jobs or left:
        raise RuntimeError(f"raw loop: {done} of {jobs} acknowledged, {left} left")
    return jobs / elapsed


def raw_round_trips(client: Any, n: int, command: str) -> float:
    """Round trips/s of one redis-py connection, one command at a time, as
    ``task.enqueue()`` makes them: ``PING``, or ``EVALSHA`` of ``return 1``."""
    import redis

    one = redis.Redis(connection_pool=client.connection_pool, single_connection_client=True)
    sha = one.script_load("return 1")
    call = one.ping if command == "PING" else lambda: one.evalsha(sha, 0)
    call()
    started = time.perf_counter()
    for _ in range(n):
        call()
    elapsed = time.perf_counter() - started
    one.close()
    return n / elapsed


BLPOP_CONSUMER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from throughput import redis_client
client, key, n = redis_client(sys.argv[2]), sys.argv[3], int(sys.argv[4])
client.rpush(key + ":ready", 1)
out = []
while len(out) < n:
    item = client.blpop([key], timeout=30)
    if item is None:
        break
    out.append((time.time() - float(item[1])) * 1000)
print(json.dumps(out))
"""


def raw_blpop_latency(url: str, prefix: str, samples: int, pause: float) -> list[float]:
    """Milliseconds from LPUSH to BLPOP returning in another, idle, process: the
    floor under enqueue-to-start latency for any job system on this Redis."""
    import json

    client = redis_client(url)
    key = f"{prefix}:{{raw}}:latency"
    client.delete(key, key + ":ready")
    consumer = subprocess.Popen(
        [sys.executable, "-c", BLPOP_CONSUMER, str(HERE), url, key, str(samples)],
        stdout=subprocess.PIPE,
        text=True,
    )
    client.blpop([key + ":ready"], timeout=30)
    time.sleep(0.5)
    for _ in range(samples):
        client.lpush(key, repr(time.time()))
        time.sleep(pause)
    out, _ = consumer.communicate(timeout=60)
    client.delete(key, key + ":ready")
    client.close()
    return json.loads(out)


def redis_benchmark(host: str, port: int, db: int, *options: str) -> dict[str, float]:
    """``redis-benchmark -q`` requests/s per test."""
    command = ["redis-benchmark", "-h", host, "-p", str(port), "--dbnum", str(db), "-q", *options]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    found = {}
    for line in out.stdout.replace("\r", "\n").splitlines():
        if m := re.match(r"\s*([A-Z_]+(?: \([^)]*\))?):\s*([\d.]+) requests per second", line):
            found[m[1]] = float(m[2])
    return found


# -- the stores ------------------------------------------------------------------


class SQLiteStore:
    name = "SQLite"
    targets = SQLITE_TARGETS
    also = "1,50"

    def __init__(self, url: str | None, folder: Path) -> None:
        self.folder, self.stem, self.query = folder, "", ""
        if url:  # sqlite:///DIR/NAME.db?...: fresh files NAME-01-....db in DIR, same options
            parts = urlsplit(url)
            path = Path(unquote(parts.path)[1:])  # conveyor's (SQLAlchemy's) convention
            self.folder, self.stem = path.parent.resolve(), path.stem + "-"
            self.query = f"?{parts.query}" if parts.query else ""
            self.folder.mkdir(parents=True, exist_ok=True)
        self.runs = 0
        self.made: list[Path] = []

    def fresh(self, name: str) -> str:
        self.runs += 1
        path = self.folder / f"{self.stem}{self.runs:02d}-{name}.db"
        self.made.append(path)
        return "sqlite:///" + str(path) + self.query

    def cleanup(self, url: str) -> None:
        """The files stay until the end (``--keep`` keeps them)."""

    def describe(self) -> list[str]:
        return [f"store   : SQLite {sqlite3.sqlite_version}, a fresh file per run in {self.folder}"]

    def remove_files(self) -> None:
        for path in self.made:
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)

    def raw(self, bench: Bench) -> None:
        """The ceiling: plain sqlite3 claim+complete loops from ``sqlite_raw.py``."""
        script = HERE / "sqlite_raw.py"
        if not script.exists():
            bench.notes.append("(d) raw sqlite3 limit: skipped, benchmarks/sqlite_raw.py not found")
            return
        run = getattr(importlib.import_module("sqlite_raw"), "run", None)
        if run is None or not {"folder", "jobs", "synchronous", "batch"} <= set(
            inspect.signature(run).parameters
        ):
            command = [sys.executable, str(script), "--jobs", str(bench.args.jobs)]
            out = subprocess.run(command, cwd=HERE, capture_output=True, text=True, timeout=600)
            bench.notes.append("(d) raw sqlite3 limit, output of benchmarks/sqlite_raw.py:")
            bench.notes += [
                "    " + line for line in (out.stdout + out.stderr).strip().splitlines()
            ]
            return
        say("raw sqlite3 claim+complete loops (benchmarks/sqlite_raw.py)")
        for batch in (1, 100):
            for synchronous in ("NORMAL", "FULL"):  # conveyor's default is NORMAL
                rates = [
                    run(str(self.folder), bench.args.jobs, synchronous, batch)
                    for _ in range(bench.args.runs)
                ]
                rate = median_of(rates)
                bench.rows.append(
                    (
                        f"(d) raw sqlite3, {batch} job(s)/tx, synchronous={synchronous}",
                        f"{rate:,.0f} jobs/s",
                        f"{1e6 / rate:.1f} us/job, no conveyor code; {spread(rates)}",
                        "(the limit)",
                        "",
                    )
                )

    def close(self) -> None:
        pass


class RedisStore:
    name = "Redis"
    targets = REDIS_TARGETS
    also = "50,100"

    def __init__(self, url: str) -> None:
        self.url = url
        self.base = prefix_of(url) if "prefix=" in url else "bench"
        self.client = redis_client(url)
        self.runs = 0

    def fresh(self, name: str) -> str:
        self.runs += 1
        return with_prefix(self.url, f"{self.base}-{os.getpid()}-{self.runs:02d}-{name}")

    def cleanup(self, url: str) -> None:
        delete_prefix(self.client, prefix_of(url))

    def describe(self) -> list[str]:
        from conveyor.brokers.redis_connection import mask

        info = self.client.info("server")
        memory = self.client.info("memory")
        return [
            f"store   : Redis {info.get('redis_version')} at {mask(self.url)}, a fresh "
            f"?prefix= per run, its keys deleted after the run",
            f"server  : maxmemory {memory.get('maxmemory_human')}, used_memory "
            f"{memory.get('used_memory_human')} at start; redis-py "
            f"{importlib.import_module('redis').__version__}, hiredis "
            f"{'yes' if _has_hiredis() else 'no'}",
        ]

    def raw(self, bench: Bench) -> None:
        runs, jobs = bench.args.runs, bench.args.jobs
        address = server_address(self.client)
        if address is None:
            bench.notes.append("(d) redis-benchmark: skipped, the URL is not a single server")
        elif shutil.which("redis-benchmark") is None:
            bench.notes.append("(d) redis-benchmark: skipped, not on PATH")
        else:
            host, port, db = address
            say(f"redis-benchmark -t ping,set,lpush -n 50000 -q, {runs} runs")
            found: dict[str, list[float]] = {}
            try:
                for _ in range(runs):
                    for test, rate in redis_benchmark(
                        host, port, db, "-t", "ping,set,lpush", "-n", "50000", "-P", "1"
                    ).items():
                        found.setdefault(test, []).append(rate)
                    rate = redis_benchmark(host, port, db, "-t", "ping", "-n", "50000", "-c", "1")
                    found.setdefault("PING_MBULK, 1 client", []).append(rate["PING_MBULK"])
            finally:  # redis-benchmark's own keys, in our database
                self.client.delete("key:__rand_int__", "mylist")
            for test, rates in found.items():
                clients = "" if "1 client" in test else ", 50 clients"
                rate = median_of(rates)
                bench.rows.append(
                    (
                        f"(d) redis-benchmark {test.lower()}{clients}, -P 1",
                        f"{rate:,.0f} requests/s",
                        f"{1e6 / rate:.1f} us/request; {spread(rates)}",
                        "(the limit)",
                        "",
                    )
                )
        if server_address(self.client) is not None:
            for command in ("PING", "EVALSHA"):
                say(f"raw redis-py {command} round trips, one connection, {runs} runs")
                rates = [raw_round_trips(self.client, jobs, command) for _ in range(runs)]
                rate = median_of(rates)
                what = "PING" if command == "PING" else "EVALSHA of 'return 1'"
                bench.rows.append(
                    (
                        f"(d) raw redis-py {what}, one at a time",
                        f"{rate:,.0f} round trips/s",
                        f"{1e6 / rate:.1f} us each, one connection; {spread(rates)}",
                        "(the limit)",
                        "",
                    )
                )
        prefix = f"{self.base}-{os.getpid()}-raw"
        say(f"raw LPUSH -> BLPOP latency to another idle process, {runs} runs")
        p50s, p99s = [], []
        for _ in range(runs):
            values = raw_blpop_latency(self.url, prefix, bench.args.samples, bench.args.pause)
            p50s.append(statistics.median(values))
            p99s.append(statistics.quantiles(values, n=100, method="inclusive")[98])
        pause = f"{bench.args.samples} pushes {bench.args.pause * 1000:g} ms apart"
        bench.rows.append(
            (
                "(d) raw LPUSH -> BLPOP in another process, p50",
                f"{median_of(p50s):.2f} ms",
                f"{pause}; {spread(p50s, ' ms', 2)}",
                "(the limit)",
                "",
            )
        )
        bench.rows.append(
            (
                "(d) raw LPUSH -> BLPOP in another process, p99",
                f"{median_of(p99s):.2f} ms",
                spread(p99s, " ms", 2),
                "(the limit)",
                "",
            )
        )
        for batch in (1, 100):
            say(f"raw redis-py loop, {batch} job(s) a round trip, {runs} runs")
            rates = [raw_redis_loop(self.client, prefix, jobs, batch) for _ in range(runs)]
            rate = median_of(rates)
            bench.rows.append(
                (
                    f"(d) raw redis-py LMOVE claim + LREM ack, {batch} job(s)/round trip",
                    f"{rate:,.0f} jobs/s",
                    f"{1e6 / rate:.1f} us/job, one client, no conveyor code; {spread(rates)}",
                    "(the limit)",
                    "",
                )
            )
        delete_prefix(self.client, prefix)

    def close(self) -> None:
        self.client.close()


def _has_hiredis() -> bool:
    try:
        import hiredis  # noqa: F401
    except ImportError:
        return False
    return True


Store = SQLiteStore | RedisStore


# -- the measurements --------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, store: Store, folder: Path) -> None:
        self.args = args
        self.store = store
        self.targets = store.targets
        self.folder = folder
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.enqueue_rates: list[float] = []
        self.bare_rates: list[float] = []  # redis-py EVALSHA 'return 1', just before each fill

    @contextlib.contextmanager
    def fresh(self, name: str) -> Iterator[tuple[str, Conveyor]]:
        """A fresh store (file or prefix) and an app on it; cleaned up afterwards."""
        url = self.store.fresh(name)
        app = make_app(url)
        try:
            yield url, app
        finally:
            app.close()
            self.store.cleanup(url)

    def fill(self, app: Conveyor, task: str, n: int) -> list[str]:
        """Enqueue ``n`` jobs one at a time through the public API; records the rate."""
        enqueue = app.tasks[task].enqueue
        app.stats()  # open the store (and create its schema) outside the timing
        if isinstance(self.store, RedisStore) and server_address(self.store.client):
            # the same moment's floor: round trips here swing 3x with the machine's load
            self.bare_rates.append(raw_round_trips(self.store.client, 2_000, "EVALSHA"))
        start = time.perf_counter()
        ids = [enqueue().id for _ in range(n)]
        self.enqueue_rates.append(n / (time.perf_counter() - start))
        return ids

    def worker(self, url: str, log_name: str, *options: str) -> subprocess.Popen:
        with (self.folder / f"{log_name}.log").open("w") as log:
            return subprocess.Popen(
                worker_command("bench_app:app", *options),
                cwd=HERE,
                env=dict(os.environ, CONVEYOR_URL=url),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def target(self, rate: float, goal: float | None, applies: bool = True) -> tuple[str, str]:
        if goal is None:
            return "", ""
        if not applies:
            return "(for -c default)", ""
        return f">= {goal:,.0f}/s", "yes" if rate >= goal else "no"

    # (b) drain

    def drain_once(self, kind: str, concurrency: int, run: int) -> tuple[float, float] | str:
        """(in-store rate, start-to-exit rate), or what went wrong."""
        n = self.args.jobs
        name = f"drain-{kind}-c{concurrency}-r{run}"
        with self.fresh(name) as (url, app):
            say(f"{name}: enqueueing {n:,} noop-{kind} jobs one at a time")
            ids = self.fill(app, f"noop-{kind}", n)
            say(f"{name}: draining them with one worker -c {concurrency}")
            start = time.perf_counter()
            proc = self.worker(url, name, "--burst", "-c", str(concurrency))
            try:
                code = proc.wait(timeout=max(120.0, n / 50))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return "timed out"
            wall = time.perf_counter() - start
            problem = verify(app, ids)
            if code != 0 or problem:
                return f"exit {code}; {problem}"
            finished = [r.finished_at or 0.0 for r in all_records(app)]
            span = max(finished) - min(finished)
            return (n / span if span > 0 else float("inf")), n / wall

    def drain(self, kind: str, concurrency: int) -> None:
        n = self.args.jobs
        label = f"(b) drain {n:,} noop {kind}, 1 worker -c {concurrency}"
        applies = self.targets.drain_every_c or concurrency == self.args.concurrency
        results = [self.drain_once(kind, concurrency, run) for run in range(self.args.runs)]
        bad = [r for r in results if isinstance(r, str)]
        if bad:
            figure = f"INVALID in {len(bad)} of {len(results)} runs: {bad[0]}"
            target, _ = self.target(0.0, self.targets.drain, applies)
            self.rows.append((label, figure, "", target, "no" if applies else ""))
            return
        in_store = [r[0] for r in results if not isinstance(r, str)]
        walls = [r[1] for r in results if not isinstance(r, str)]
        rate, wall = median_of(in_store), median_of(walls)
        self.rows.append(
            (
                label,
                f"{rate:,.0f} jobs/s in store ({n / rate:.2f} s)",
                f"{wall:,.0f} jobs/s start->exit ({n / wall:.2f} s); {spread(in_store)} in store",
                *self.target(rate, self.targets.drain, applies),
            )
        )

    # (a2) bulk enqueue

    def bulk(self) -> None:
        n = self.args.bulk_jobs
        if n <= 0:
            return
        rates: list[float] = []
        for run in range(self.args.runs):
            with self.fresh(f"bulk-r{run}") as (_, app):
                say(f"bulk enqueue of {n:,} jobs, app.enqueue_many in batches of {BULK_BATCH:,}")
                task = app.tasks["noop-async"]
                app.stats()
                start = time.perf_counter()
                stored = 0
                for first in range(0, n, BULK_BATCH):
                    count = min(BULK_BATCH, n - first)
                    stored += len(app.enqueue_many([task.s() for _ in range(count)]))
                rates.append(n / (time.perf_counter() - start))
                waiting = sum(q["waiting"] for q in app.stats().values())
                if stored != n or waiting != n:
                    self.rows.append(
                        ("(a2) bulk enqueue", f"INVALID: {stored} returned, {waiting} waiting",
                         "", "", "no")
                    )  # fmt: skip
                    return
        rate = median_of(rates)
        self.rows.append(
            (
                f"(a2) bulk enqueue (app.enqueue_many, batches of {BULK_BATCH:,})",
                f"{rate:,.0f} jobs/s (median)",
                f"{n:,} jobs a run, {spread(rates)}",
                *self.target(rate, self.targets.bulk),
            )
        )

    # (c) latency

    def latency_once(self, run: int) -> dict[str, list[float]]:
        samples, pause = self.args.samples, self.args.pause
        with self.fresh(f"latency-r{run}") as (url, app):
            probe = app.tasks["probe"]
            app.stats()
            say(f"latency run {run + 1}: {samples} probes {pause * 1000:g} ms apart, idle worker")
            proc = self.worker(url, f"latency-r{run}", "-c", str(self.args.concurrency))
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
        out: dict[str, list[float]] = {"enqueue call": [], "created_at": []}
        for job_id, t0 in sent.items():
            started = float(records[job_id].result or "nan")
            out["enqueue call"].append((started - t0) * 1000)
            out["created_at"].append((started - records[job_id].created_at) * 1000)
        return out

    def latency(self) -> None:
        samples, pause = self.args.samples, self.args.pause
        runs = [self.latency_once(run) for run in range(self.args.runs)]
        t = self.targets
        for name in ("enqueue call", "created_at"):
            p50s, p99s, maxes = [], [], []
            for values in (run[name] for run in runs):
                cuts = statistics.quantiles(values, n=100, method="inclusive")
                p50s.append(statistics.median(values))
                p99s.append(cuts[98])
                maxes.append(max(values))
            p50, p99 = median_of(p50s), median_of(p99s)
            prefix = f"(c) latency {name} -> task start"
            self.rows.append(
                (
                    f"{prefix}, p50",
                    f"{p50:.2f} ms",
                    f"{samples} jobs {pause * 1000:g} ms apart, -c {self.args.concurrency}; "
                    f"{spread(p50s, ' ms', 2)}",
                    f"<= {t.p50_ms:g} ms",
                    "yes" if p50 <= t.p50_ms else "no",
                )
            )
            self.rows.append(
                (
                    f"{prefix}, p99",
                    f"{p99:.2f} ms",
                    f"max {median_of(maxes):.1f} ms (median); {spread(p99s, ' ms', 2)}",
                    f"<= {t.p99_ms:g} ms",
                    "yes" if p99 <= t.p99_ms else "no",
                )
            )

    # the table

    def report(self) -> None:
        rates = sorted(self.enqueue_rates)
        if rates:
            median = median_of(rates)
            detail = f"{len(rates)} runs of {self.args.jobs:,}: {rates[0]:,.0f}..{rates[-1]:,.0f}/s"
            if self.bare_rates:
                ratios = [a / b for a, b in zip(self.enqueue_rates, self.bare_rates, strict=True)]
                detail += (
                    f"; bare redis-py EVALSHA just before each run {median_of(self.bare_rates):,.0f}"
                    f"/s, conveyor at {median_of(ratios):.0%} of it"
                )
            self.rows.insert(
                0,
                (
                    "(a) enqueue one at a time (task.enqueue)",
                    f"{median:,.0f} jobs/s (median)",
                    detail,
                    *self.target(median, self.targets.enqueue),
                ),
            )
        print(table(self.rows), flush=True)
        for note in self.notes:
            print(note)


def table(
    rows: Sequence[Sequence[str]],
    head: Sequence[str] = ("measurement", "figure", "detail", "target", "met"),
) -> str:
    """Columns padded to their widest cell, a rule under the head."""
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [head, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="store URL (default: fresh SQLite files in a temp folder)")
    where.add_argument(
        "--private-redis", action="store_true", help="start a redis-server of our own and use it"
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per enqueue/drain run")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (the median is shown)")
    parser.add_argument(
        "--bulk-jobs", type=int, default=100_000, help="jobs per bulk run (0: skip)"
    )
    parser.add_argument("--dir", type=Path, help="folder for databases and logs (default: temp)")
    parser.add_argument("-c", "--concurrency", type=int, default=10, help="worker concurrency")
    parser.add_argument(
        "--also", help="more -c values to drain with (default: 1,50 for SQLite, 50,100 for Redis)"
    )
    parser.add_argument("--kinds", default="async,sync", help="noop kinds to drain")
    parser.add_argument("--samples", type=int, default=300, help="latency samples")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between samples")
    parser.add_argument("--skip", default="", help="comma-separated: drain,bulk,latency,raw")
    parser.add_argument("--keep", action="store_true", help="keep the databases and logs")
    return parser.parse_args(argv)


def run_all(args: argparse.Namespace, store: Store, folder: Path, title: str) -> None:
    started = time.perf_counter()
    print(f"conveyor {store.name} benchmark")
    print(f"command : {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"machine : {os.cpu_count()} CPUs, {platform.platform()}, Python "
        f"{platform.python_version()}"
    )
    for line in store.describe():
        print(line)
    print(f"logs    : {folder}{'' if args.keep else ' (removed at the end)'}")
    print(f"runs    : each figure the median of {args.runs} runs; {title}")
    print(f"before  : {load()}")
    print(flush=True)
    bench = Bench(args, store, folder)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    concurrencies = [args.concurrency]
    also = store.also if args.also is None else args.also
    concurrencies += [int(c) for c in also.split(",") if c.strip() and int(c) not in concurrencies]
    if "drain" not in skip:
        for concurrency in concurrencies:
            for kind in (k.strip() for k in args.kinds.split(",") if k.strip()):
                bench.drain(kind, concurrency)
    if "bulk" not in skip:
        bench.bulk()
    if "latency" not in skip:
        bench.latency()
    if "raw" not in skip:
        store.raw(bench)
    bench.report()
    print()
    print(f"after   : {load()}; {time.perf_counter() - started:,.0f} s in all")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".bench-", dir=args.dir or HERE.parent))
    stack = contextlib.ExitStack()
    try:
        url = args.url
        title = "noop jobs, one worker process"
        if args.private_redis:
            url = stack.enter_context(PrivateRedis(folder / "redis")).url
            title += "; a private redis-server (no persistence) started for this run"
        scheme = urlsplit(url).scheme.lower() if url else "sqlite"
        store: Store
        if scheme == "sqlite":
            store = SQLiteStore(url, folder)
        elif scheme in ("redis", "rediss", "redis+sentinel"):
            store = RedisStore(url)  # type: ignore[arg-type]
        else:
            raise SystemExit(f"throughput.py: no benchmark for {scheme}:// stores")
        stack.callback(store.close)
        if isinstance(store, SQLiteStore) and not args.keep:
            stack.callback(store.remove_files)
        run_all(args, store, folder, title)
    finally:
        stack.close()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
