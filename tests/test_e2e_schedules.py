"""Schedules with real worker processes: three workers firing an ``every=1``
schedule enqueue one job per tick, none twice and none missing, also while
workers are SIGKILLed and restarted (at least one always running).

Each worker process logs every tick it enqueued (``schedule tick: enqueued
periodic:tick:<ISO tick>``): a tick enqueued twice would show twice across the
logs (the store would have replaced the first job with the second; a kill
can lose a log line, never add one). The
jobs the store holds must be every tick, in one unbroken run of seconds, from
the first to the last. Runs on a SQLite file and on Redis.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from helpers import WorkerProcesses, wait_until
from servers import isolated_redis_url

pytestmark = pytest.mark.slow

OPTIONS = ("-c", "2", "--lease", "1", "--poll", "0.2", "--grace", "2")
ENQUEUED = re.compile(r"schedule tick: enqueued periodic:tick:(\S+)")


class Workers(WorkerProcesses):
    def __init__(self, tmp_path: Path, url: str) -> None:
        super().__init__(tmp_path, url, "schedule_app.py")

    def start(self) -> subprocess.Popen[bytes]:
        return self.spawn("schedule_app:app", *OPTIONS)

    def firing(self, proc: subprocess.Popen[bytes]) -> bool:
        """Whether ``proc`` has started its scheduler."""
        log = self.logs[self.workers.index(proc)].read_text(errors="replace")
        return proc.poll() is None and "scheduler: firing" in log

    def stop_all(self) -> None:
        for proc in self.live():
            proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            code = proc.wait(timeout=20)
            assert code in (0, -signal.SIGKILL), f"worker {proc.pid} exited {code}" + self.report()

    def enqueued(self) -> Counter[str]:
        """Ticks enqueued, by the workers' own logs."""
        return Counter(m for path in self.logs for m in ENQUEUED.findall(path.read_text()))

    def stored(self) -> list[int]:
        """The ticks whose jobs the store holds, as epoch seconds, in order."""
        ids = [job.id for job in self.app.jobs(limit=100_000)]
        assert all(i.startswith("periodic:tick:") for i in ids), ids
        return sorted(
            int(datetime.fromisoformat(i.removeprefix("periodic:tick:")).timestamp()) for i in ids
        )

    def report(self) -> str:
        return "\n" + self.worker_logs(tail=3000)

    def check(self, seconds: float, kills: int = 0) -> list[int]:
        """No tick twice, none missing between the first and the last. A
        worker SIGKILLed between the store's commit and its log line leaves
        a stored tick unlogged: at most one per kill."""
        twice = {tick: n for tick, n in self.enqueued().items() if n > 1}
        assert not twice, f"ticks enqueued more than once: {twice}" + self.report()
        ticks = self.stored()
        assert len(ticks) >= seconds - 2, (ticks, self.report())
        missing = sorted(set(range(ticks[0], ticks[-1] + 1)) - set(ticks))
        assert not missing, f"ticks missing: {missing}" + self.report()
        logged = {int(datetime.fromisoformat(tick).timestamp()) for tick in self.enqueued()}
        assert logged <= set(ticks)
        assert len(ticks) - len(logged) <= kills, (sorted(set(ticks) - logged), self.report())
        return ticks


@pytest.fixture(params=["sqlite", "redis"])
def workers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workers]:
    if request.param == "redis":
        with isolated_redis_url(name="schedules") as url:
            w = Workers(tmp_path, url)
            try:
                yield w
            finally:
                w.cleanup()
        return
    w = Workers(tmp_path, f"sqlite:///{tmp_path}/schedules.db")
    try:
        yield w
    finally:
        w.cleanup()


def test_three_workers_enqueue_one_job_per_tick(workers: Workers):
    procs = [workers.start() for _ in range(3)]
    wait_until(lambda: all(workers.firing(p) for p in procs), 30, "three schedulers")
    time.sleep(4.0)  # the schedule runs: every=1, for several seconds
    workers.stop_all()
    ticks = workers.check(seconds=4)
    done = workers.app.stats()["default"]
    assert done["completed"] == len(ticks), done  # each job ran, by one worker, once


def test_no_tick_twice_and_none_missing_while_workers_are_killed(workers: Workers):
    rng = random.Random(20261203)
    for _ in range(3):
        workers.start()
    wait_until(lambda: all(workers.firing(p) for p in workers.live()), 30, "three schedulers")
    started, kills = time.monotonic(), 0
    while time.monotonic() - started < 7.0:
        time.sleep(rng.uniform(0.2, 0.7))
        firing = [p for p in workers.live() if workers.firing(p)]
        if len(firing) >= 2:  # one stays up: its ticks must all be there
            rng.choice(firing).send_signal(signal.SIGKILL)
            kills += 1
        if len(workers.live()) < 3:
            workers.start()
    wait_until(lambda: any(workers.firing(p) for p in workers.live()), 30, "a scheduler")
    time.sleep(1.5)
    workers.stop_all()
    assert kills >= 5
    workers.check(seconds=7, kills=kills)
