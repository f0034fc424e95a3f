"""The ``conveyor`` command, apart from ``worker`` (see test_e2e_worker.py).

Most tests run the command in-process with click's ``CliRunner`` against a
SQLite store in a temporary folder holding ``cli_app.py`` (copied from
``tests/apps``). The tests about error output run the real command in a
subprocess, because only there does an unhandled exception print a traceback.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from conveyor import Conveyor
from conveyor.brokers.base import STATES, AttemptError, Lease
from conveyor.cli import main
from conveyor.job import Job

APPS = Path(__file__).parent / "apps"
APP = "cli_app:app"
MODULE = "cli_app"


class Cli:
    def __init__(self, tmp_path: Path, url: str) -> None:
        self.dir = tmp_path
        self.url = url
        self.store = Conveyor(url)  # the test's own view of the store

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(main, list(args), input=input)

    def ok(self, *args: str, input: str | None = None) -> str:
        result = self(*args, input=input)
        assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
        return result.stdout

    def job(self, job_id: str) -> Job:
        job = self.store.get_job(job_id)
        assert job is not None, f"job {job_id} is not stored"
        return job

    def enqueue(self, task: str = "add", *options: str) -> str:
        if task == "add" and not {"--args", "--kwargs"} & set(options):
            options = ("--args", "[1, 2]", *options)  # what add(x, y) takes
        return self.ok("enqueue", APP, task, *options).strip()

    def make_dead(
        self, queue: str = "default", task: str = "add", job_id: str | None = None
    ) -> str:
        """A dead job, brought there through the store contract (claim, then fail)."""
        job_id = self.store.enqueue(task, [1, 2], queue=queue, job_id=job_id).id
        lease = self._claim(job_id, queue)
        assert self.store.broker.fail(lease, AttemptError("ValueError", "boom"), None)
        assert self.job(job_id).state == "dead"
        return job_id

    def make_completed(self, queue: str = "default") -> str:
        job_id = self.store.enqueue("add", [2, 3], queue=queue).id
        lease = self._claim(job_id, queue)
        assert self.store.broker.complete([(lease, "5")]) == [True]
        return job_id

    def _claim(self, job_id: str, queue: str) -> Lease:
        """Claim ``job_id``; any other job claimed with it goes back to waiting."""
        broker = self.store.broker
        claimed = broker.claim([queue], 1_000, 30.0, "test")
        leases = {r.id: Lease(r.id, r.lease_token or "") for r in claimed}
        mine = leases.pop(job_id)
        if leases:
            assert broker.release(list(leases.values())) == len(leases)
        return mine


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    shutil.copy(APPS / "cli_app.py", tmp_path / "cli_app.py")
    url = "sqlite:///" + str(tmp_path / "cli.db")
    monkeypatch.setenv("CONVEYOR_URL", url)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_app adds the current folder
    sys.modules.pop(MODULE, None)  # each test imports its own copy, bound to its own store
    importlib.invalidate_caches()
    runner = Cli(tmp_path, url)
    try:
        yield runner
    finally:
        module = sys.modules.pop(MODULE, None)
        if module is not None:
            module.app.close()
        runner.store.close()


# -- enqueue ---------------------------------------------------------------


def test_enqueue_prints_the_id_of_the_stored_job(cli: Cli) -> None:
    job_id = cli.enqueue("add", "--args", "[2, 3]")

    job = cli.job(job_id)
    assert job.task == "add"
    assert job.args == [2, 3]
    assert job.kwargs == {}
    assert job.queue == "default"
    assert job.state == "waiting"
    assert job.priority == 0
    assert job.attempts == 0


def test_enqueue_without_arguments_stores_an_empty_call(cli: Cli) -> None:
    job = cli.job(cli.enqueue("ping"))
    assert job.args == []
    assert job.kwargs == {}


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ([], "missing a required argument: 'x'"),
        (["--args", '["a", "b", "c"]'], "too many positional arguments"),
        (["--args", "[1, 2]", "--kwargs", '{"z": 2}'], "got an unexpected keyword argument 'z'"),
    ],
)
def test_enqueue_of_a_call_the_task_cannot_take_stores_nothing(
    cli: Cli, options: list[str], why: str
) -> None:
    result = cli("enqueue", APP, "add", *options)
    assert result.exit_code == 2
    assert f"task 'add' cannot take these arguments ({why}): add(x: " in result.output
    assert cli.store.stats() == {}


def test_enqueue_honours_kwargs_queue_and_priority(cli: Cli) -> None:
    job_id = cli.enqueue(
        "add", "--kwargs", '{"x": 1, "y": 2}', "--queue", "bulk", "--priority", "7"
    )

    job = cli.job(job_id)
    assert job.args == []
    assert job.kwargs == {"x": 1, "y": 2}
    assert job.queue == "bulk"
    assert job.priority == 7
    assert job.state == "waiting"


def test_enqueue_uses_the_tasks_queue_when_none_is_given(cli: Cli) -> None:
    assert cli.job(cli.enqueue("report", "--args", '["q"]')).queue == "critical"


def test_enqueue_honours_delay(cli: Cli) -> None:
    before = time.time()
    job_id = cli.enqueue("add", "--args", "[1, 1]", "--delay", "60")
    after = time.time()

    job = cli.job(job_id)
    assert job.state == "delayed"
    assert job.record.run_at is not None
    assert before + 60 - 1 <= job.record.run_at <= after + 60 + 1


def test_enqueue_job_id_dedups(cli: Cli) -> None:
    first = cli.enqueue("add", "--args", "[1, 2]", "--job-id", "order-42")
    second = cli.enqueue("add", "--args", "[9, 9]", "--job-id", "order-42")

    assert first == second == "order-42"
    jobs = cli.store.jobs()
    assert [job.id for job in jobs] == ["order-42"]
    assert jobs[0].args == [1, 2], "the second enqueue returned the existing job untouched"


def test_enqueue_unique_for_prints_the_holder(cli: Cli) -> None:
    first = cli.enqueue("add", "--kwargs", '{"x": 1, "y": 2}', "--unique-for", "3600")
    second = cli.enqueue("add", "--kwargs", '{"y": 2, "x": 1}', "--unique-for", "60")
    other = cli.enqueue("add", "--kwargs", '{"x": 1, "y": 3}', "--unique-for", "60")

    assert first == second != other
    assert sorted(job.id for job in cli.store.jobs()) == sorted([first, other])


@pytest.mark.parametrize(
    ("value", "shown"),
    [("0", "0.0"), ("-1", "-1.0"), ("nan", "nan"), ("inf", "inf"), ("1e20", "1e+20"),
     ("soon", "'soon'")],
)  # fmt: skip
def test_enqueue_bad_unique_for_stores_nothing(cli: Cli, value: str, shown: str) -> None:
    result = cli("enqueue", APP, "add", "--args", "[1, 2]", "--unique-for", value)

    assert result.exit_code == 2
    assert "--unique-for" in result.output
    assert shown in result.output
    assert cli.store.stats() == {}


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--args", "[1,"),
        ("--args", "not json"),
        ("--args", '{"x": 1}'),
        ("--args", "3"),
        ("--kwargs", "{bad"),
        ("--kwargs", "[1, 2]"),
    ],
)
def test_enqueue_bad_json_is_a_clear_error_and_stores_nothing(
    cli: Cli, option: str, value: str
) -> None:
    result = cli("enqueue", APP, "add", option, value)

    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert option in result.stderr
    assert "JSON" in result.stderr
    assert result.stdout == ""
    assert cli.store.jobs() == []
    assert cli.store.stats() == {}


def test_enqueue_arguments_json_cannot_carry_store_nothing(cli: Cli) -> None:
    result = cli("enqueue", APP, "add", "--args", "[1e400, 1]")  # Python reads it as inf

    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert "inf" in result.stderr
    assert cli.store.jobs() == []


# -- stats -----------------------------------------------------------------


def test_stats_json_of_an_empty_store(cli: Cli) -> None:
    cli.store.open()  # a store with no jobs yet (stats never creates one)
    assert json.loads(cli.ok("stats", APP, "--json")) == {}


def test_stats_json_has_the_shape_of_app_stats(cli: Cli) -> None:
    cli.enqueue("add", "--args", "[1, 2]")
    cli.enqueue("add", "--args", "[1, 2]", "--delay", "600")
    cancelled = cli.enqueue("add", "--args", "[1, 2]")
    assert cli.ok("cancel", APP, cancelled).strip()
    cli.make_completed()
    cli.make_dead(queue="critical", task="report")

    counts = json.loads(cli.ok("stats", APP, "--json"))

    assert counts == cli.store.stats()
    assert set(counts) == {"default", "critical"}
    for queue, by_state in counts.items():
        assert set(by_state) == set(STATES), queue
        assert all(isinstance(n, int) for n in by_state.values())
    assert counts["default"] == {
        "waiting": 1,
        "delayed": 1,
        "active": 0,
        "completed": 1,
        "dead": 0,
        "cancelled": 1,
    }
    assert counts["critical"] == {
        "waiting": 0,
        "delayed": 0,
        "active": 0,
        "completed": 0,
        "dead": 1,
        "cancelled": 0,
    }


def test_stats_table_names_every_queue(cli: Cli) -> None:
    cli.enqueue("add")
    cli.enqueue("report", "--args", '["x"]')
    out = cli.ok("stats", APP)
    assert "default" in out and "critical" in out


def test_stats_table_shows_each_queues_limits(cli: Cli) -> None:
    """The app declares bulk with 10 starts a minute and 4 at once, and no
    job is in it yet: its row says so; default's limit cells are empty."""
    cli.enqueue("add")
    rows = {line.split()[1]: line for line in cli.ok("stats", APP).splitlines() if "│" in line}
    assert [cell.strip() for cell in rows["bulk"].split("│")[-4:-1]] == ["", "10/60s", "4"]
    assert [cell.strip() for cell in rows["default"].split("│")[-4:-1]] == ["", "", ""]


# -- jobs ------------------------------------------------------------------


REQUIRED_KEYS = {"id", "task", "queue", "state", "attempts", "error", "result"}


def test_jobs_json_is_one_array_of_jobs(cli: Cli) -> None:
    waiting = cli.enqueue("add", "--args", "[1, 2]")
    done = cli.make_completed()
    dead = cli.make_dead(queue="critical", task="report")

    rows = json.loads(cli.ok("jobs", APP, "--json"))

    assert isinstance(rows, list)
    assert [row["id"] for row in rows] == [waiting, done, dead]
    for row in rows:
        assert set(row) >= REQUIRED_KEYS, row
    by_id = {row["id"]: row for row in rows}
    assert (by_id[waiting]["task"], by_id[waiting]["queue"]) == ("add", "default")
    assert (by_id[waiting]["state"], by_id[waiting]["attempts"]) == ("waiting", 0)
    assert by_id[waiting]["error"] is None and by_id[waiting]["result"] is None
    assert (by_id[done]["state"], by_id[done]["result"], by_id[done]["error"]) == (
        "completed",
        5,
        None,
    )
    assert by_id[dead]["state"] == "dead"
    assert by_id[dead]["queue"] == "critical"
    assert by_id[dead]["attempts"] == 1
    assert by_id[dead]["error"] == "ValueError: boom"


def test_jobs_json_of_an_empty_store_is_an_empty_array(cli: Cli) -> None:
    cli.store.open()
    assert json.loads(cli.ok("jobs", APP, "--json")) == []


def test_jobs_filters_by_state_and_queue(cli: Cli) -> None:
    cli.enqueue("add")
    dead_default = cli.make_dead(job_id="dead-1")
    dead_critical = cli.make_dead(queue="critical", task="report", job_id="dead-2")

    dead = json.loads(cli.ok("jobs", APP, "--state", "dead", "--json"))
    assert [row["id"] for row in dead] == [dead_default, dead_critical]
    assert {row["state"] for row in dead} == {"dead"}

    critical = json.loads(cli.ok("jobs", APP, "--state", "dead", "--queue", "critical", "--json"))
    assert [row["id"] for row in critical] == [dead_critical]

    table = cli.ok("jobs", APP, "--state", "dead")
    assert dead_default in table and dead_critical in table
    assert "waiting" not in table


def test_jobs_rejects_an_unknown_state(cli: Cli) -> None:
    result = cli("jobs", APP, "--state", "zombie")
    assert result.exit_code != 0
    assert "zombie" in result.stderr


# -- retry -----------------------------------------------------------------


def test_retry_job_id_moves_the_same_job_back_to_waiting(cli: Cli) -> None:
    dead = cli.make_dead()
    other = cli.make_dead(queue="critical", task="report")

    out = cli.ok("retry", APP, dead)

    assert "1 job(s)" in out
    job = cli.job(dead)
    assert job.state == "waiting"
    assert job.attempts == 0
    assert cli.job(other).state == "dead"
    assert len(cli.store.jobs()) == 2, "the same job moved; no new one was stored"


def test_retry_of_an_unknown_or_not_dead_job_exits_non_zero(cli: Cli) -> None:
    waiting = cli.enqueue("add")
    dead = cli.make_dead(queue="critical", task="report")

    result = cli("retry", APP, dead, "no-such-job")
    assert result.exit_code != 0
    assert cli.job(dead).state == "waiting"

    result = cli("retry", APP, waiting)
    assert result.exit_code != 0
    assert cli.job(waiting).state == "waiting"


def test_retry_all_dead_of_one_queue_then_of_all(cli: Cli) -> None:
    dead_default = [cli.make_dead(), cli.make_dead()]
    dead_critical = cli.make_dead(queue="critical", task="report")

    assert "1 job(s)" in cli.ok("retry", APP, "--all-dead", "--queue", "critical")
    assert cli.job(dead_critical).state == "waiting"
    assert [cli.job(j).state for j in dead_default] == ["dead", "dead"]

    assert "2 job(s)" in cli.ok("retry", APP, "--all-dead")
    for job_id in dead_default:
        job = cli.job(job_id)
        assert (job.state, job.attempts) == ("waiting", 0)
    assert sorted(j.id for j in cli.store.jobs()) == sorted([*dead_default, dead_critical])


def test_retry_needs_ids_or_all_dead_but_not_both(cli: Cli) -> None:
    dead = cli.make_dead()
    assert cli("retry", APP).exit_code != 0
    assert cli("retry", APP, dead, "--all-dead").exit_code != 0
    assert cli.job(dead).state == "dead"


# -- cancel ----------------------------------------------------------------


def test_cancel_a_waiting_and_a_delayed_job(cli: Cli) -> None:
    waiting = cli.enqueue("add")
    delayed = cli.enqueue("add", "--delay", "600")

    cli.ok("cancel", APP, waiting, delayed)

    assert cli.job(waiting).state == "cancelled"
    assert cli.job(delayed).state == "cancelled"


def test_cancel_of_an_unknown_id_exits_non_zero_with_a_message(cli: Cli) -> None:
    waiting = cli.enqueue("add")

    result = cli("cancel", APP, "no-such-job", waiting)

    assert result.exit_code != 0
    assert "no-such-job" in result.stderr
    assert "no such job" in result.stderr
    assert cli.job(waiting).state == "cancelled", "the other id is still cancelled"


def test_cancel_of_an_ended_job_exits_non_zero_and_says_why(cli: Cli) -> None:
    done = cli.make_completed()
    result = cli("cancel", APP, done)
    assert result.exit_code != 0
    assert "completed" in result.stderr
    assert cli.job(done).state == "completed"


# -- errors: one line on stderr, no traceback -------------------------------


def run_conveyor(folder: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONVEYOR_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def assert_one_line_error(done: subprocess.CompletedProcess, *mentions: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{done.stderr}"
    for text in mentions:
        assert text in lines[0], lines[0]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copy(APPS / "cli_app.py", tmp_path / "cli_app.py")
    (tmp_path / "raises_app.py").write_text('raise RuntimeError("kaboom at import")\n')
    (tmp_path / "syntax_app.py").write_text("def broken(:\n")
    return tmp_path


@pytest.mark.parametrize(
    ("spec", "mention"),
    [
        ("no_such_module:app", "no_such_module"),
        ("cli_app:missing", "cli_app:missing"),
        ("cli_app:not_an_app", "cli_app:not_an_app"),
        ("cli_app", "cli_app"),
        ("raises_app:app", "kaboom at import"),
        ("syntax_app:app", "syntax_app"),
    ],
)
def test_an_app_that_cannot_be_loaded_is_a_one_line_error(
    folder: Path, spec: str, mention: str
) -> None:
    url = "sqlite:///" + str(folder / "x.db")
    assert_one_line_error(run_conveyor(folder, url, "stats", spec), mention)


@pytest.mark.parametrize(
    "command",
    [
        ["stats", APP],
        ["jobs", APP, "--json"],
        ["enqueue", APP, "add", "--args", "[1, 2]"],
        ["worker", APP, "--burst"],
    ],
    ids=["stats", "jobs", "enqueue", "worker"],
)
@pytest.mark.parametrize(
    ("url", "mention"),
    [
        ("bogus://x", "bogus://x"),
        ("sqlite:////nonexistent/dir/x.db", "/nonexistent/dir"),
    ],
    ids=["unknown-scheme", "missing-folder"],
)
def test_a_bad_store_url_is_a_one_line_error(
    folder: Path, command: list[str], url: str, mention: str
) -> None:
    done = run_conveyor(folder, url, *command)
    assert_one_line_error(done, mention)
    assert not Path("/nonexistent").exists()


# -- pause, resume, purge ----------------------------------------------------


def test_pause_and_resume_a_queue_and_stats_shows_it(cli: Cli) -> None:
    job_id = cli.enqueue("add")
    assert cli.ok("pause", APP, "default").strip() == "default paused"
    assert cli.ok("pause", APP, "default").strip() == "default was paused already"
    assert cli.store.paused() == {"default"}
    assert cli.store.broker.claim(["default"], 10, 30.0, "test") == []
    assert cli.job(job_id).state == "waiting"  # enqueued, kept, not handed out

    cli.ok("pause", APP, "quiet")  # a queue that holds no job yet
    rows = {line.split()[1]: line for line in cli.ok("stats", APP).splitlines() if "│" in line}
    assert rows["default"].split("│")[-4].strip() == "yes"  # then rate limit, concurrency
    assert rows["quiet"].split("│")[-4].strip() == "yes"

    assert cli.ok("resume", APP, "default").strip() == "default resumed"
    assert cli.ok("resume", APP, "default").strip() == "default was not paused"
    assert cli.store.paused() == {"quiet"}
    assert [r.id for r in cli.store.broker.claim(["default"], 10, 30.0, "test")] == [job_id]


def test_purge_asks_first_and_deletes_only_what_it_names(cli: Cli) -> None:
    waiting = cli.enqueue("add")
    delayed = cli.enqueue("add", "--delay", "3600")
    dead = cli.make_dead()
    result = cli("purge", APP, "default", input="n\n")
    assert (
        result.exit_code == 1 and "delete 2 job(s) of default (waiting, delayed)?" in result.output
    )
    assert cli.job(waiting).state == "waiting"  # nothing went

    assert cli.ok("purge", APP, "default", input="y\n").splitlines()[-1] == (
        "2 job(s) of default deleted"
    )
    assert cli.store.get_job(waiting) is None and cli.store.get_job(delayed) is None
    assert cli.job(dead).state == "dead"
    out = cli.ok("purge", APP, "default", "--state", "dead", "--yes")
    assert out.strip() == "1 job(s) of default deleted"
    assert cli.store.stats() == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["purge", APP, "default", "--state", "active", "--yes"], "'active' is not one of"),
        (["purge", APP, "no such queue", "--yes"], "queue must be a queue name"),
        (["pause", APP, ""], "queue must be a queue name"),
        (["resume", APP, "a}b"], "queue must be a queue name"),
    ],
)
def test_pause_resume_and_purge_refuse_bad_input(cli: Cli, args: list[str], message: str) -> None:
    job_id = cli.enqueue("add")
    result = cli(*args)
    assert result.exit_code == 2 and message in result.output
    assert cli.job(job_id).state == "waiting" and cli.store.paused() == set()
