"""End to end: flow control held by the store across three real ``conveyor
worker`` processes, on a SQLite file and on Redis.

The limits are judged on the jobs' own ``started_at`` and ``finished_at``
from the store: the claim and the completion the store's windows and caps
count, from one clock (every process runs on this machine). The tasks'
logged times (``tests/apps/limits_app.py``) fall inside those spans, so a
concurrency seen there is seen by the store too.
"""

from __future__ import annotations

import bisect
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.brokers.base import JobRecord
from conveyor.task import Signature
from helpers import WorkerProcesses, wait_until
from servers import isolated_redis_url

pytestmark = pytest.mark.slow

APP = "limits_app:app"
WORKERS = 3


class Limits(WorkerProcesses):
    """A temporary folder with the app, the store, the task log and the workers.
    Its producer imports no task: it has no limits of its own."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.log = tmp_path / "events.log"
        self.log.touch()
        super().__init__(tmp_path, url, "limits_app.py", E2E_LOG=str(self.log))

    def start_workers(self, queue: str, *options: str) -> None:
        for _ in range(WORKERS):
            self.spawn(APP, "-q", queue, *options)

    def finished(self, queue: str, count: int, timeout: float) -> list[JobRecord]:
        """The queue's ``count`` jobs once all completed, in start order."""

        def done() -> list[JobRecord] | None:
            jobs = [job.record for job in self.app.jobs(queue=queue, limit=10_000)]
            if len(jobs) == count and all(job.state == "completed" for job in jobs):
                return jobs
            return None

        try:
            jobs = wait_until(done, timeout, f"{count} completed jobs in {queue}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.worker_logs()}") from None
        assert all(w.poll() is None for w in self.workers), self.worker_logs()
        return sorted(jobs, key=lambda job: job.started_at or 0.0)

    def logged(self, event: str) -> dict[str, float]:
        times = {}
        for line in self.log.read_text().splitlines():
            kind, tag, at, _ = line.split()
            if kind == event:
                times[tag] = float(at)
        return times


@pytest.fixture(params=["sqlite", "redis"])
def limits(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Limits]:
    if request.param == "sqlite":
        store = contextlib.nullcontext("sqlite:///" + str(tmp_path / "limits.db"))
    else:
        store = isolated_redis_url(request.getfixturevalue("default_redis"), "limits")
    with store as url:
        env = Limits(tmp_path, url)
        try:
            yield env
        finally:
            env.cleanup()


def by_name(task: str, *args: object, queue: str) -> Signature:
    """A call as a producer without the task's code makes it."""
    return Signature(task, args, {}, {"queue": queue})


def most_in_a_window(times: list[float], period: float) -> int:
    """The most of ``times`` in any window [t, t + period)."""
    times = sorted(times)
    return max((bisect.bisect_left(times, t + period) - i for i, t in enumerate(times)), default=0)


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most half-open spans [start, end) holding one instant."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in edges:  # at equal times an end (-1) sorts before a start
        running += step
        most = max(most, running)
    return most


def test_a_rate_limited_queue_never_starts_more_than_its_limit_in_any_second(limits):
    limits.start_workers("rated", "-c", "10")
    limits.app.enqueue_many(by_name("rated-job", f"r{i}", queue="rated") for i in range(30))

    jobs = limits.finished("rated", 30, timeout=30)

    starts = [job.started_at or 0.0 for job in jobs]
    assert most_in_a_window(starts, 1.0) <= 5, starts
    assert starts[-1] - starts[0] >= 5.0  # 30 starts at 5 a second: six windows
    assert most_in_a_window(list(limits.logged("start").values()), 0.5) <= 5


def test_a_concurrency_cap_holds_across_three_workers(limits):
    limits.start_workers("capped", "-c", "10")
    limits.app.enqueue_many(by_name("capped-job", f"c{i}", 0.2, queue="capped") for i in range(12))

    jobs = limits.finished("capped", 12, timeout=30)

    starts, ends = limits.logged("start"), limits.logged("done")
    in_tasks = [(starts[tag], ends[tag]) for tag in starts]
    assert most_at_once(in_tasks) == 2, in_tasks
    # The store's own spans, from claim to completion: the cap they obey.
    in_store = [(job.started_at or 0.0, job.finished_at or 0.0) for job in jobs]
    assert most_at_once(in_store) == 2, [
        (j.id, j.worker, j.started_at, j.finished_at) for j in jobs
    ]


def test_a_per_key_limit_holds_per_key_and_keys_run_side_by_side(limits, monkeypatch):
    """The producer imports the tasks, so each job carries its key."""
    monkeypatch.syspath_prepend(str(limits.dir))
    monkeypatch.setenv("E2E_LOG", str(limits.log))
    monkeypatch.setenv("CONVEYOR_URL", limits.app.url)
    monkeypatch.delitem(sys.modules, "limits_app", raising=False)
    import limits_app

    producer = limits_app.app
    try:
        limits.start_workers("keyed", "-c", "10")
        # One key's backlog first in line, then the other's: the second key
        # must not wait behind it.
        producer.enqueue_many(
            [limits_app.per_customer.s("acme", f"a{i}") for i in range(8)]
            + [limits_app.per_customer.s(customer="bolt", tag=f"b{i}") for i in range(8)]
        )
        jobs = limits.finished("keyed", 16, timeout=30)
    finally:
        producer.close()

    by_key: dict[str | None, list[float]] = {}
    for job in jobs:
        by_key.setdefault(job.rate_key, []).append(job.started_at or 0.0)
    assert sorted(by_key, key=str) == ['"acme"', '"bolt"']
    for key, starts in by_key.items():
        assert most_in_a_window(starts, 1.0) <= 2, (key, starts)
        assert starts[-1] - starts[0] >= 3.0  # 8 starts at 2 a second: four windows
    # Side by side: each key starts its first two jobs before either starts
    # a third (bolt never waits behind acme's backlog). Judged by order, not
    # by durations, so a slow machine cannot fail it.
    order = sorted((at, key) for key, starts in by_key.items() for at in starts)
    assert sorted(key for _, key in order[:4]) == ['"acme"', '"acme"', '"bolt"', '"bolt"'], order
