"""End to end: real ``conveyor worker`` processes on a shared store.

Every test runs twice: on a SQLite file in its temporary folder, and on the
Redis at 127.0.0.1:6379 under a key prefix of its own (removed afterwards).
Each test copies ``tests/apps/e2e_app.py`` into its temporary folder and runs
the ``conveyor`` command there, as a user would. The tasks append
``start``/``done`` lines (with the worker's pid) to a log file, and the tests
wait on those lines and on job states with short polls, never on long
sleeps. Every worker process is killed at teardown, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.job import Job
from helpers import CONVEYOR, WorkerProcesses, wait_until
from servers import isolated_redis_url

pytestmark = pytest.mark.slow

APP = "e2e_app:app"


class E2E(WorkerProcesses):
    """One temporary folder: the app module, the store, the event log, the workers."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.log = tmp_path / "events.log"
        self.log.touch()
        super().__init__(tmp_path, url, "e2e_app.py", E2E_LOG=str(self.log))

    # -- processes ------------------------------------------------------

    def start_worker(self, *options: str) -> subprocess.Popen[bytes]:
        return self.spawn(APP, *options)

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*CONVEYOR, *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def jobs_json(self) -> dict[str, dict[str, Any]]:
        """``conveyor jobs APP --json``, by job id."""
        done = self.cli("jobs", APP, "--json", "--limit", "1000")
        assert done.returncode == 0, done.stderr
        rows = json.loads(done.stdout)
        assert isinstance(rows, list)
        return {row["id"]: row for row in rows}

    # -- observing ------------------------------------------------------

    def events(self, kind: str, tag: str) -> list[int]:
        """Pids of the processes that logged ``kind`` (start/done) for ``tag``, in order."""
        pids = []
        for line in self.log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == kind and parts[1] == tag:
                pids.append(int(parts[2]))
        return pids

    def job(self, job_id: str) -> Job:
        job = self.app.get_job(job_id)
        assert job is not None, f"job {job_id} is not stored"
        return job

    def state(self, job_id: str) -> str:
        return self.job(job_id).state

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        try:
            return wait_until(predicate, timeout, what)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nevents:\n{self.log.read_text()}\n{self.worker_logs()}"
            ) from None

    def wait_state(self, job_id: str, state: str, timeout: float = 15) -> Job:
        self.wait(lambda: self.state(job_id) == state, timeout, f"job {job_id} to be {state}")
        return self.job(job_id)


@pytest.fixture(params=["sqlite", "redis"])
def e2e(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[E2E]:
    if request.param == "sqlite":  # absolute path: four slashes
        store = contextlib.nullcontext("sqlite:///" + str(tmp_path / "e2e.db"))
    else:
        store = isolated_redis_url(request.getfixturevalue("default_redis"), "e2e")
    with store as url:
        env = E2E(tmp_path, url)
        try:
            yield env
        finally:
            env.cleanup()


def test_sigkilled_worker_job_is_recovered_and_run_once_more_by_another(e2e: E2E) -> None:
    worker_a = e2e.start_worker("-c", "1", "--lease", "1")
    e2e.app.enqueue("sleepy", ["killed", 2.0], job_id="killed")
    e2e.wait(lambda: e2e.events("start", "killed"), 15, "the job to start on worker A")
    assert e2e.events("start", "killed") == [worker_a.pid]

    worker_a.send_signal(signal.SIGKILL)
    assert worker_a.wait(timeout=5) == -signal.SIGKILL
    assert e2e.state("killed") == "active"  # nobody has noticed yet: A's lease still holds it

    worker_b = e2e.start_worker("-c", "1", "--lease", "1")
    e2e.wait_state("killed", "completed", timeout=20)

    row = e2e.jobs_json()["killed"]
    assert row["state"] == "completed"
    assert row["result"] == "killed"
    assert row["attempts"] == 1, "a stall gives the attempt back"
    assert e2e.events("start", "killed") == [worker_a.pid, worker_b.pid]
    assert e2e.events("done", "killed") == [worker_b.pid]
    assert worker_b.poll() is None


def test_job_longer_than_its_lease_runs_once_while_its_worker_lives(e2e: E2E) -> None:
    first = e2e.start_worker("--lease", "1")
    second = e2e.start_worker("--lease", "1")
    e2e.app.enqueue("sleepy", ["long", 3.0], job_id="long")

    job = e2e.wait_state("long", "completed", timeout=20)

    starts = e2e.events("start", "long")
    assert len(starts) == 1, f"the body ran {len(starts)} times: {starts}"
    assert starts[0] in (first.pid, second.pid)
    assert e2e.events("done", "long") == starts
    assert job.attempts == 1
    assert job.errors == []
    assert job.result(timeout=0) == "long"
    # both workers were there the whole time, so either could have stolen the job
    assert first.poll() is None and second.poll() is None


def test_sigterm_lets_the_active_job_finish_then_exits_0(e2e: E2E) -> None:
    worker = e2e.start_worker("-c", "1", "--lease", "2", "--grace", "10")
    e2e.app.enqueue("sleepy", ["term", 1.5], job_id="term")
    e2e.wait(lambda: e2e.events("start", "term"), 15, "the job to start")

    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code = worker.wait(timeout=10)
    took = time.monotonic() - sent

    assert code == 0, e2e.worker_logs()
    assert took < 10
    assert e2e.events("done", "term") == [worker.pid]
    job = e2e.job("term")
    assert job.state == "completed"
    assert job.attempts == 1
    assert job.result(timeout=0) == "term"


def test_sigterm_with_short_grace_releases_the_job_without_spending_an_attempt(e2e: E2E) -> None:
    worker = e2e.start_worker("-c", "1", "--lease", "2", "--grace", "0.5")
    e2e.app.enqueue("sleepy", ["released", 5.0], job_id="released")
    e2e.wait(lambda: e2e.events("start", "released"), 15, "the job to start")

    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code = worker.wait(timeout=4)
    took = time.monotonic() - sent

    assert code == 0, e2e.worker_logs()
    assert took < 3, f"the worker took {took:.1f}s to exit with --grace 0.5"
    job = e2e.job("released")
    assert job.state == "waiting"
    assert job.attempts == 0, "a job released on shutdown does not spend an attempt"
    assert job.errors == []
    assert e2e.events("done", "released") == []


def test_a_second_sigterm_skips_the_rest_of_the_grace_period(e2e: E2E) -> None:
    worker = e2e.start_worker("-c", "1", "--lease", "2", "--grace", "30")
    e2e.app.enqueue("sleepy", ["twice", 20.0], job_id="twice")
    e2e.wait(lambda: e2e.events("start", "twice"), 15, "the job to start")

    worker.send_signal(signal.SIGTERM)
    e2e.wait(lambda: "stopping" in e2e.worker_logs(), 10, "the worker to begin stopping")
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code = worker.wait(timeout=10)
    took = time.monotonic() - sent

    assert code == 0, e2e.worker_logs()
    assert took < 5, f"the second signal took {took:.1f}s to end a 30 s grace period"
    job = e2e.job("twice")
    assert (job.state, job.attempts) == ("waiting", 0)
    assert e2e.events("done", "twice") == []


def test_hung_sync_job_times_out_and_frees_its_slot(e2e: E2E) -> None:
    e2e.app.enqueue("hang", ["hung"], job_id="hung")
    e2e.app.enqueue("quick", ["after"], job_id="after")
    worker = e2e.start_worker("-c", "1", "--lease", "2")

    e2e.wait(lambda: e2e.events("start", "hung"), 15, "the hung job to start")
    hung_started = time.monotonic()
    after = e2e.wait_state("after", "completed", timeout=15)
    took = time.monotonic() - hung_started

    assert took < 6, f"the next job completed {took:.1f}s after the hung one started (timeout=1)"
    assert after.result(timeout=0) == "after"
    hung = e2e.job("hung")
    assert hung.state == "dead"
    assert hung.attempts == 1
    assert hung.error is not None and "timed out" in hung.error.lower(), hung.error
    assert len(hung.errors) == 1
    # -c 1: the second job waited for the first one's timeout, not for its 60 s sleep
    assert after.record.started_at is not None and hung.record.started_at is not None
    assert after.record.started_at - hung.record.started_at >= 0.9
    assert e2e.events("done", "hung") == []
    assert e2e.events("done", "after") == [worker.pid]
    assert worker.poll() is None


def test_burst_worker_exits_0_once_every_job_is_done(e2e: E2E) -> None:
    tags = [f"burst-{n}" for n in range(4)]
    for tag in tags:
        e2e.app.enqueue("quick", [tag], job_id=tag)
    e2e.app.enqueue("sleepy", ["burst-slow", 0.5], job_id="burst-slow")

    done = e2e.cli("worker", APP, "--burst", "-c", "2", timeout=30)

    assert done.returncode == 0, done.stderr + done.stdout
    rows = e2e.jobs_json()
    for tag in [*tags, "burst-slow"]:
        assert rows[tag]["state"] == "completed", rows[tag]
        assert rows[tag]["result"] == tag
        assert len(e2e.events("done", tag)) == 1
    assert e2e.app.stats()["default"]["completed"] == 5


def test_burst_worker_does_not_wait_for_delayed_jobs(e2e: E2E) -> None:
    e2e.app.enqueue("quick", ["now"], job_id="now")
    e2e.app.enqueue("quick", ["later"], job_id="later", delay=3600)

    done = e2e.cli("worker", APP, "--burst", timeout=30)

    assert done.returncode == 0, done.stderr + done.stdout
    assert e2e.state("now") == "completed"
    assert e2e.state("later") == "delayed"
    assert e2e.events("start", "later") == []


def test_unknown_task_goes_dead_at_once_and_the_worker_goes_on(e2e: E2E) -> None:
    enqueued = e2e.cli("enqueue", APP, "no.such.task", "--args", "[1]", "--job-id", "ghost")
    assert enqueued.returncode == 0, enqueued.stderr
    assert enqueued.stdout.strip() == "ghost"
    e2e.app.enqueue("quick", ["known"], job_id="known")
    worker = e2e.start_worker("-c", "1")

    e2e.wait_state("known", "completed", timeout=15)

    ghost = e2e.job("ghost")
    assert ghost.state == "dead"
    assert ghost.error is not None and "no.such.task" in ghost.error, ghost.error
    assert ghost.attempts == 1, "an unknown task is not retried"
    assert len(ghost.errors) == 1
    assert e2e.jobs_json()["ghost"]["error"] == ghost.error
    assert e2e.events("done", "known") == [worker.pid]
    assert worker.poll() is None


@pytest.mark.parametrize("task", ["crash", "crash-async"])
def test_a_task_that_kills_its_process_takes_no_other_job_with_it(e2e: E2E, task: str) -> None:
    """os._exit in a sync or an async task, beside four healthy jobs claimed in
    the same batch, under a supervisor that restarts the worker each time it
    dies. With --max-stalled 1 a second stall would kill a healthy job: a job
    that stalled before runs alone, so only the crashing job stalls again."""
    e2e.app.enqueue(task, ["bad"], job_id="bad")
    for i in range(4):
        e2e.app.enqueue("sleepy", [f"good-{i}", 0.6], job_id=f"good-{i}")
    good = [f"good-{i}" for i in range(4)]
    options = ("-c", "5", "--lease", "1", "--max-stalled", "1")

    def ended() -> bool:
        states = e2e.jobs_json()
        return states["bad"]["state"] == "dead" and all(
            states[job]["state"] == "completed" for job in good
        )

    def supervise() -> bool:  # restart the worker whenever it died, as systemd would
        if not any(w.poll() is None for w in e2e.workers):
            e2e.start_worker(*options)
        return ended()

    e2e.wait(supervise, 60, "the crashing job to go dead and the healthy ones to complete")

    bad = e2e.job("bad")
    assert [e["type"] for e in bad.errors] == ["Stalled"]
    for job_id in good:
        job = e2e.job(job_id)
        assert job.result(timeout=0) == job_id
        assert job.record.stalls == 1, f"{job_id} stalled {job.record.stalls} times"
    crashes = [w for w in e2e.workers if w.poll() is not None]
    assert [w.returncode for w in crashes] == [1, 1], e2e.worker_logs()
    assert "running it alone" in e2e.worker_logs()
    live = [w for w in e2e.workers if w.poll() is None]
    for worker in live:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_worker_whose_database_file_is_deleted_or_replaced_stops_loudly(
    tmp_path: Path, how: str
) -> None:
    """It would go on with the old file while producers fill a new one that it
    never sees: it says so and exits 2, so a supervisor restarts it on the new file."""
    env = E2E(tmp_path, "sqlite:///" + str(tmp_path / "e2e.db"))
    try:
        worker = env.start_worker("-c", "1", "--lease", "1")
        env.app.enqueue("quick", ["before"], job_id="before")
        env.wait_state("before", "completed")
        env.app.close()
        db = tmp_path / "e2e.db"
        if how == "deleted":
            for path in tmp_path.glob("e2e.db*"):
                path.unlink()
        else:
            other = Conveyor("sqlite:///" + str(tmp_path / "other.db"))
            other.enqueue("quick", ["elsewhere"])
            other.close()
            os.replace(tmp_path / "other.db", db)
        assert worker.wait(timeout=15) == 2, env.worker_logs()
        logs = env.worker_logs()
        assert f"the database file {db} was {'deleted' if how == 'deleted' else 'replaced'}" in logs
        assert "Traceback" not in logs
    finally:
        env.cleanup()


def test_a_paused_queue_waits_for_every_worker_until_resumed(e2e: E2E) -> None:
    """Three worker processes, told nothing: the store refuses them the paused
    queue's jobs while they run another queue's, and the resume, from the
    command line, reaches them at once (their poll interval is 30 s)."""
    workers = [
        e2e.start_worker("-q", "default,canary", "-c", "2", "--poll", "30") for _ in range(3)
    ]
    assert e2e.cli("pause", APP, "default").stdout.strip() == "default paused"
    held = [f"held-{n}" for n in range(6)]
    for tag in held:
        e2e.app.enqueue("quick", [tag], job_id=tag)
    e2e.app.enqueue("quick", ["canary"], job_id="canary", queue="canary")
    e2e.wait_state("canary", "completed")  # the workers are running, and claiming
    assert {e2e.state(tag) for tag in held} == {"waiting"}

    doomed = [e2e.app.enqueue("quick", [f"doomed-{n}"], job_id=f"doomed-{n}").id for n in range(3)]
    assert e2e.cli("purge", APP, "default", "--yes").stdout.strip() == "9 job(s) of default deleted"
    assert all(e2e.app.get_job(job_id) is None for job_id in [*doomed, *held])

    for tag in held:
        e2e.app.enqueue("quick", [tag], job_id=tag)
    assert e2e.cli("resume", APP, "default").stdout.strip() == "default resumed"
    # Well inside the 5 s one Redis wait blocks and the 30 s poll: only a
    # resume that wakes the idle workers gets the jobs done by then.
    e2e.wait(lambda: {e2e.state(tag) for tag in held} == {"completed"}, 3, "the held jobs")
    assert all(len(e2e.events("done", tag)) == 1 for tag in held)
    assert e2e.events("done", "doomed-0") == []
    assert all(worker.poll() is None for worker in workers)
