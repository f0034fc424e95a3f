"""Redis going away under real ``conveyor worker`` processes.

Each test runs its own private redis-server (``private_redis``) so it can kill
it: with ``appendonly yes`` and the default ``appendfsync everysec``, Redis
write(2)s every change to its append-only file before it answers, and fsyncs
that file once a second. A killed *process* therefore loses nothing it has
acknowledged (the data is in the OS page cache, and the restarted server
replays the file); only a crash of the whole machine could lose up to about
the last second (two in the worst case, when an fsync stalls).

The worker runs ``tests/apps/redis_app.py``, whose ``mark`` task appends one
line per run to a file, so the tests count runs independently of the store.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from helpers import wait_until
from servers import RedisServer, free_port

pytestmark = pytest.mark.slow

APPS = Path(__file__).parent / "apps"
APP = "redis_app:app"
CONVEYOR = [sys.executable, "-m", "conveyor.cli"]
CONCURRENCY = 10


class Run:
    """A temporary folder with the app module, the marks file and the worker."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.dir = tmp_path
        shutil.copy(APPS / "redis_app.py", tmp_path / "redis_app.py")
        self.url = url
        self.marks = tmp_path / "marks.txt"
        self.marks.touch()
        self.worker_log = tmp_path / "worker.log"
        self.env = {
            **os.environ,
            "CONVEYOR_URL": url,
            "MARKS": str(self.marks),
            "PYTHONUNBUFFERED": "1",
        }
        self.app = Conveyor(url)
        self.worker: subprocess.Popen | None = None

    def start_worker(self, *options: str) -> subprocess.Popen:
        with open(self.worker_log, "wb") as out:
            self.worker = subprocess.Popen(
                [*CONVEYOR, "worker", APP, *options],
                cwd=self.dir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self.worker

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*CONVEYOR, *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def runs(self) -> Counter[int]:
        """How many times the body of ``mark`` ran, per argument."""
        return Counter(
            int(line.split()[0]) for line in self.marks.read_text().splitlines() if line.strip()
        )

    def log_text(self) -> str:
        return self.worker_log.read_text(errors="replace")

    def completed(self) -> int:
        return sum(q["completed"] for q in self.app.stats().values())

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        def check() -> Any:
            if self.worker is not None and self.worker.poll() is not None:
                raise AssertionError(f"the worker exited with {self.worker.returncode}")
            return predicate()

        try:
            return wait_until(check, timeout, what)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n--- worker log (tail):\n{self.log_text()[-5000:]}"
            ) from None

    def cleanup(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.kill()
        if self.worker is not None:
            self.worker.wait(timeout=10)
        self.app.close()


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[Callable[[str], Run]]:
    runs: list[Run] = []

    def make(url: str) -> Run:
        folder = tmp_path / f"run-{len(runs) + 1}"
        folder.mkdir()
        run = Run(folder, url)
        runs.append(run)
        return run

    try:
        yield make
    finally:
        for run in runs:
            run.cleanup()


def stop_worker(run: Run) -> None:
    assert run.worker is not None
    run.worker.send_signal(signal.SIGTERM)
    code = run.worker.wait(timeout=20)
    assert code == 0, f"the worker exited with {code}\n{run.log_text()[-5000:]}"


def store_error_lines(log: str, server: RedisServer) -> list[str]:
    """Log lines that say the store is unreachable and name the server."""
    where = f"127.0.0.1:{server.port}"
    return [
        line
        for line in log.splitlines()
        if where in line
        and re.search(
            r"unavailable|unreachable|reconnect|retry|retrying|error", line, re.IGNORECASE
        )
    ]


def test_zero_jobs_lost_across_a_redis_crash_and_aof_replay(
    private_redis: Callable[..., RedisServer], make_run: Callable[[str], Run]
) -> None:
    total = 2000
    server = private_redis(appendonly=True)
    run = make_run(server.url)
    for n in range(total):
        run.app.enqueue("mark", [n], job_id=f"job-{n}")
    assert run.app.stats()["default"]["waiting"] == total

    # --lease 3: a claim whose reply the crash swallowed is recovered within
    # seconds, while the leases of running jobs (renewed every second)
    # outlive the outage.
    worker = run.start_worker("-c", str(CONCURRENCY), "--lease", "3")
    run.wait(lambda: len(run.runs()) >= total // 3, 30, "a third of the jobs to run")

    server.kill()
    done_at_kill = len(run.runs())
    time.sleep(1.0)
    assert worker.poll() is None, f"the worker died with Redis\n{run.log_text()[-5000:]}"
    server.start()  # same port, same folder: the append-only file is replayed

    run.wait(lambda: run.completed() == total, 60, f"all {total} jobs to complete")

    assert worker.poll() is None, run.log_text()[-5000:]
    stats = run.app.stats()
    assert stats == {
        "default": {
            "waiting": 0,
            "delayed": 0,
            "active": 0,
            "completed": total,
            "dead": 0,
            "cancelled": 0,
        }
    }, stats
    jobs = {job.id: job for job in run.app.jobs(limit=total + 100)}
    assert len(jobs) == total
    for n in range(total):
        job = jobs[f"job-{n}"]
        assert job.state == "completed", job
        assert job.result(timeout=0) == n
    runs = run.runs()
    missing = [n for n in range(total) if runs[n] == 0]
    assert missing == [], f"{len(missing)} jobs completed without their body running"
    duplicates = {n: count for n, count in runs.items() if count > 1}
    print(
        f"\nredis SIGKILLed after {done_at_kill}/{total} runs; "
        f"{len(duplicates)} jobs ran twice: {sorted(duplicates)}"
    )
    assert sum(count - 1 for count in duplicates.values()) <= CONCURRENCY, duplicates

    log = run.log_text()
    assert "Traceback" not in log, log[-5000:]
    assert store_error_lines(log, server), f"no line names the unreachable store:\n{log[-5000:]}"
    stop_worker(run)


def test_worker_outlives_a_5s_redis_outage_and_goes_on(
    private_redis: Callable[..., RedisServer], make_run: Callable[[str], Run]
) -> None:
    server = private_redis(appendonly=True)
    run = make_run(server.url)
    for n in range(20):
        run.app.enqueue("mark", [n])
    worker = run.start_worker("-c", "4")
    run.wait(lambda: run.completed() == 20, 20, "the first 20 jobs")

    server.stop()
    outage_start = len(run.log_text().splitlines())
    for _ in range(10):  # five seconds, the worker alive all along
        time.sleep(0.5)
        assert worker.poll() is None, f"the worker died without Redis\n{run.log_text()[-5000:]}"
    during = "\n".join(run.log_text().splitlines()[outage_start:])
    server.start()

    for n in range(20, 40):
        run.app.enqueue("mark", [n])
    run.wait(lambda: run.completed() == 40, 30, "the 20 jobs enqueued after the outage")
    assert worker.poll() is None
    assert sorted(run.runs()) == list(range(40))

    lines = store_error_lines(during, server)
    assert lines, f"nothing in the log says the store is unreachable:\n{during}"
    after = run.log_text().splitlines()[outage_start:]
    assert any(re.search(r"reachable again|reconnected", line, re.IGNORECASE) for line in after), (
        "no line says the store is back:\n" + "\n".join(after)
    )
    assert "Traceback" not in run.log_text(), run.log_text()[-5000:]
    # a line or so a second, not a flood
    assert len(during.splitlines()) <= 40, f"{len(during.splitlines())} log lines in 5 s:\n{during}"
    print(
        f"\nduring the 5 s outage the worker logged {len(during.splitlines())} lines, e.g.\n"
        f"{lines[0]}"
    )
    stop_worker(run)


@pytest.mark.parametrize(
    "command",
    [
        ["enqueue", APP, "mark", "--args", "[1]"],
        ["stats", APP],
    ],
)
def test_cli_against_a_redis_that_is_down_says_so_in_one_line(
    command: list[str], make_run: Callable[[str], Run]
) -> None:
    port = free_port()  # nothing listens there
    run = make_run(f"redis://127.0.0.1:{port}/0")

    started = time.monotonic()
    done = run.cli(*command)
    took = time.monotonic() - started

    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{port}" in lines[0], lines[0]
    assert took < 20, f"{command[0]} took {took:.1f}s to give up"
    print(f"\n{command[0]} gave up after {took:.1f}s: {lines[0]}")
