"""Bad values get one clear line, the same through the API and the command
line, and nothing is stored.

Every check lives in ``conveyor.validate``; these tests drive it through the
public API (``app.enqueue``, ``task.options``, ``@app.task``, ``app.queue``,
``Worker``, ``Conveyor``) on every store, and through the real ``conveyor``
command, which must print exactly one line and exit 2.
"""

from __future__ import annotations

import datetime
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor import ConfigurationError, Conveyor, PayloadError
from conveyor.task import Signature
from conveyor.worker import Worker

APPS = Path(__file__).parent / "apps"
CONVEYOR = [sys.executable, "-m", "conveyor.cli"]
NOW = datetime.datetime.now(datetime.UTC)

# (options, the start of the one-line error)
BAD_OPTIONS = [
    ({"delay": "5"}, "delay must be a number of seconds from 0, up to 100 years, not '5'"),
    ({"delay": math.nan}, "delay must be a number of seconds from 0, up to 100 years, not nan"),
    ({"delay": math.inf}, "delay must be a number of seconds"),
    ({"delay": -1}, "delay must be a number of seconds"),
    ({"delay": True}, "delay must be a number of seconds"),
    ({"delay": 10**20}, "delay must be a number of seconds"),
    ({"delay": 1, "run_at": 5.0}, "give delay= or run_at=, not both"),
    (
        {"run_at": "tomorrow"},
        "run_at must be an aware datetime or seconds since the epoch, not 'tomorrow'",
    ),
    ({"run_at": datetime.datetime(2030, 1, 1)}, "run_at must be timezone-aware"),
    (
        {"run_at": NOW.timestamp() * 1000},
        "run_at must be a time within 100 years from now (seconds, not milliseconds)",
    ),
    ({"run_at": math.nan}, "run_at must be a time within 100 years"),
    ({"timeout": "5"}, "timeout must be a number of seconds above 0, up to 100 years, not '5'"),
    ({"timeout": 0}, "timeout must be a number of seconds above 0"),
    ({"timeout": -1}, "timeout must be a number of seconds above 0"),
    ({"timeout": math.inf}, "timeout must be a number of seconds above 0"),
    (
        {"priority": 2**63},
        "priority must be a whole number from -2,147,483,648 to 2,147,483,647, not 9223372036854775808",
    ),
    ({"priority": 10**20}, "priority must be a whole number from -2,147,483,648"),
    ({"priority": -(2**53)}, "priority must be a whole number"),
    ({"priority": 1.5}, "priority must be a whole number"),
    ({"priority": "9"}, "priority must be a whole number"),
    ({"priority": True}, "priority must be a whole number"),
    ({"attempts": 0}, "attempts must be a whole number from 1 to 1,000, not 0"),
    ({"attempts": -1}, "attempts must be a whole number from 1 to 1,000"),
    ({"attempts": 2.0}, "attempts must be a whole number"),
    ({"attempts": 10**20}, "attempts must be a whole number"),
    ({"backoff": "sometimes"}, "backoff must be one of fixed, linear, exponential, fibonacci"),
    ({"backoff": lambda n: n}, "a callable backoff cannot be stored with a job"),
    ({"backoff_delay": math.nan}, "backoff_delay must be a number of seconds from 0"),
    ({"backoff_max": -5}, "backoff_max must be a number of seconds from 0"),
    ({"jitter": 2}, "jitter must be a share from 0 to 1 (or True for 1), not 2"),
    ({"jitter": math.nan}, "jitter must be a share from 0 to 1"),
    (
        {"queue": 5},
        "queue must be a queue name: 1 to 128 letters, digits, '_', '-', '.' or ':', not 5",
    ),
    ({"queue": ""}, "queue must be a queue name"),
    ({"queue": "a}b"}, "queue must be a queue name"),
    ({"queue": "{a}"}, "queue must be a queue name"),
    ({"queue": "x" * 129}, "queue must be a queue name"),
    ({"queue": "two words"}, "queue must be a queue name"),
    ({"queue": "new\nline"}, "queue must be a queue name"),
    ({"queue": "émoji"}, "queue must be a queue name"),
    ({"job_id": ""}, "job_id must be a job id: 1 to 255 printable characters"),
    ({"job_id": 5}, "job_id must be a job id"),
    ({"job_id": "a\nb"}, "job_id must be a job id"),
    ({"job_id": "tab\there"}, "job_id must be a job id"),
    ({"job_id": "nul\0"}, "job_id must be a job id"),
    ({"job_id": "\ud800"}, "job_id must be a job id"),
    ({"job_id": "x" * 256}, "job_id must be a job id"),
]


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_a_bad_job_option_is_one_line_and_stores_nothing(store_app, options, message):
    app = store_app

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    keep = add.enqueue(1, 2)  # a job already stored: untouched by what follows
    for attempt in (
        lambda: app.enqueue("add", [1, 2], **options),
        lambda: add.options(**options).enqueue(1, 2),
        lambda: app.enqueue_many([add.s(3, 4), add.options(**options).s(1, 2)]),
    ):
        with pytest.raises(ConfigurationError) as caught:
            attempt()
        assert one_line(caught.value).startswith(message), caught.value
    assert app.stats() == {"default": {**dict.fromkeys(app.stats()["default"], 0), "waiting": 1}}
    assert keep.refresh().state == "waiting"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda app: app.enqueue("add", "ab"),
            "args must be a list or tuple of positional arguments, not 'ab'",
        ),
        (lambda app: app.enqueue("add", {"x": 1}), "args must be a list or tuple"),
        (lambda app: app.enqueue("add", 5), "args must be a list or tuple"),
        (
            lambda app: app.enqueue("add", kwargs=[1]),
            "kwargs must be a dict of keyword arguments, not [1]",
        ),
        (
            lambda app: app.enqueue("add", kwargs={1: 2}),
            "kwargs must be a dict whose keys are argument names (strings), not {1: 2}",
        ),
        (lambda app: app.enqueue(5), "task must be a task name"),
        (lambda app: app.enqueue(""), "task must be a task name"),
        (lambda app: app.enqueue("two\nlines"), "task must be a task name"),
        (
            lambda app: app.enqueue("add", attempt=3),
            "enqueue got an unknown option 'attempt' (did you mean 'attempts'?)",
        ),
        (
            lambda app: app.enqueue_many([Signature("add", (1,), {}, {"dealy": 5})]),
            "enqueue got an unknown option 'dealy' (did you mean 'delay'?)",
        ),
        (
            lambda app: app.enqueue_many(["add"]),
            "each call must be a signature such as task.s(1, 2), not 'add'",
        ),
        (lambda app: app.jobs(queue="a}b"), "queue must be a queue name"),
        (lambda app: app.jobs(limit=-1), "limit must be a whole number from 0"),
        (lambda app: app.retry_dead(queue=5), "queue must be a queue name"),
    ],
)
def test_bad_calls_are_one_line_and_store_nothing(store_app, call, message):
    with pytest.raises(ConfigurationError) as caught:
        call(store_app)
    assert one_line(caught.value).startswith(message), caught.value
    assert store_app.stats() == {}


def test_arguments_are_counted_in_bytes_and_must_have_a_utf8_form(store_app):
    app = Conveyor(store_app.url, max_payload=1_000)
    with pytest.raises(PayloadError, match="1,209 bytes as JSON, more than the 1,000-byte limit"):
        app.enqueue("t", ["é" * 600])  # 600 characters, 1,200 bytes
    with pytest.raises(PayloadError, match=r"argument 0 is a string with an unpaired surrogate"):
        app.enqueue("t", ["\udc80"])
    with pytest.raises(
        PayloadError, match=r"argument 'k' key '\\udc80' is a string with an unpaired"
    ):
        app.enqueue("t", kwargs={"k": {"\udc80": 1}})
    app.enqueue("t", ["é" * 400])  # 800 bytes: fits
    assert app.stats()["default"]["waiting"] == 1
    app.close()


@pytest.mark.parametrize(
    ("define", "message"),
    [
        (
            lambda app: app.task(atempts=5),
            "@app.task got an unknown option 'atempts' (did you mean 'attempts'?)",
        ),
        (
            lambda app: app.task(attempts=0),
            "attempts must be a whole number from 1 to 1,000, not 0",
        ),
        (lambda app: app.task(timeout="30"), "timeout must be a number of seconds above 0"),
        (
            lambda app: app.task(backoff="quadratic"),
            "backoff must be one of fixed, linear, exponential, fibonacci or a callable",
        ),
        (lambda app: app.task(queue="a b"), "queue must be a queue name"),
        (lambda app: app.task(name="two\nlines"), "name must be a task name"),
        (lambda app: app.task(priority=2**31), "priority must be a whole number"),
        (lambda app: app.task(5), "@app.task must be used on a function, not 5"),
        (lambda app: app.queue("a}b"), "queue name must be a queue name"),
        (
            lambda app: app.queue("bulk", keep_completed=-1),
            "keep_completed must be a whole number from 0",
        ),
        (
            lambda app: app.queue("bulk", keep_dead_for=math.inf),
            "keep_dead_for must be a number of seconds above 0",
        ),
        (
            lambda app: app.queue("bulk", atempts=1),
            "app.queue got an unknown option 'atempts' (did you mean 'attempts'?)",
        ),
        (
            lambda app: Conveyor("memory://", max_payload=0),
            "max_payload must be a whole number from 64",
        ),
        (
            lambda app: Conveyor("memory://", max_result=-1),
            "max_result must be a whole number from 64",
        ),
        (
            lambda app: Conveyor("memory://", max_stalled=-1),
            "max_stalled must be a whole number from 0",
        ),
    ],
)
def test_bad_definitions_are_refused_at_declaration(define, message):
    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError) as caught:
        define(app)
    assert one_line(caught.value).startswith(message), caught.value
    assert app.tasks == {} and app.queues == {}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"concurrency": 0}, "concurrency must be a whole number from 1 to 10,000, not 0"),
        ({"concurrency": 10**20}, "concurrency must be a whole number from 1 to 10,000"),
        ({"lease": 0}, "lease must be a number of seconds from 0.1, up to 100 years, not 0"),
        ({"lease": math.nan}, "lease must be a number of seconds from 0.1"),
        ({"grace": -5}, "grace must be a number of seconds from 0"),
        ({"max_stalled": -1}, "max_stalled must be a whole number from 0 to 1,000, not -1"),
        ({"poll_interval": 0}, "poll_interval must be a number of seconds from 0.01"),
        ({"max_abandoned_threads": -1}, "max_abandoned_threads must be a whole number from 0"),
        ({"queues": ["a}b"]}, "queues must be a queue name"),
        ({"queues": "default"}, "queues must be a list of queue names, not 'default'"),
    ],
)
def test_bad_worker_settings_are_refused_before_anything_runs(settings, message):
    with pytest.raises(ConfigurationError) as caught:
        Worker(Conveyor("memory://"), **settings)
    assert one_line(caught.value).startswith(message), caught.value


# -- the command line ----------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copy(APPS / "cli_app.py", tmp_path / "cli_app.py")
    return tmp_path


def conveyor(folder: Path, *args: str, url: str | None = None) -> subprocess.CompletedProcess:
    env = {"CONVEYOR_URL": url or f"sqlite:///{folder}/cli.db", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [*CONVEYOR, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=60
    )


def assert_one_line(done: subprocess.CompletedProcess, *mentions: str, status: int = 2) -> str:
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{done.stderr}"
    for text in mentions:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("flags", "mention"),
    [
        (["-c", "0"], "-c/--concurrency must be a whole number from 1 to 10,000, not 0"),
        (["-c", "-3"], "-c/--concurrency must be a whole number"),
        (["--lease", "0"], "--lease must be a number of seconds from 0.1"),
        (["--lease", "nan"], "--lease must be a number of seconds from 0.1"),
        (
            ["--grace", "-5"],
            "--grace must be a number of seconds from 0, up to 100 years, not -5.0",
        ),
        (["--max-stalled", "-1"], "--max-stalled must be a whole number from 0 to 1,000, not -1"),
        (["--poll", "0"], "--poll must be a number of seconds from 0.01"),
        (["--poll", "inf"], "--poll must be a number of seconds"),
        (
            ["--max-abandoned-threads", "-1"],
            "--max-abandoned-threads must be a whole number from 0",
        ),
        (["-q", ""], "-q/--queues must be a queue name"),
        (["-q", ",,"], "-q/--queues must be a queue name"),
        (["-q", "a}b"], "-q/--queues must be a queue name"),
    ],
)
def test_bad_worker_flags_are_one_line_with_status_2(folder, flags, mention):
    assert_one_line(conveyor(folder, "worker", "cli_app:app", "--burst", *flags), mention)
    assert not (folder / "cli.db").exists()  # refused before the store was opened


def test_an_unknown_log_level_is_refused_and_any_case_is_taken(folder):
    done = conveyor(folder, "worker", "cli_app:app", "--burst", "--log-level", "LOUD")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "'LOUD' is not one of" in done.stderr
    assert (
        conveyor(folder, "worker", "cli_app:app", "--burst", "--log-level", "debug").returncode == 0
    )


@pytest.mark.parametrize(
    ("flags", "mention"),
    [
        (
            ["--priority", "1" * 20],
            "--priority must be a whole number from -2,147,483,648 to 2,147,483,647, not 11111111111111111111",
        ),
        (
            ["--delay", "nan"],
            "--delay must be a number of seconds from 0, up to 100 years, not nan",
        ),
        (["--delay", "-1"], "--delay must be a number of seconds"),
        (["--delay", "1e300"], "--delay must be a number of seconds"),
        (["--queue", ""], "--queue must be a queue name"),
        (["--queue", "x}"], "--queue must be a queue name"),
        (["--job-id", ""], "--job-id must be a job id"),
        (["--args", '"ab"'], "--args must be a JSON array, not 'ab'"),
        (["--args", "[1,"], "--args is not valid JSON"),
        (["--kwargs", "[1]"], "--kwargs must be a JSON object, not [1]"),
    ],
)
def test_bad_enqueue_flags_are_one_line_with_status_2_and_store_nothing(folder, flags, mention):
    assert_one_line(conveyor(folder, "enqueue", "cli_app:app", "add", *flags), mention)
    app = Conveyor(f"sqlite:///{folder}/cli.db")
    assert app.stats() == {}
    app.close()


def test_enqueue_by_name_of_a_task_the_app_does_not_know_warns_and_stores(folder):
    done = conveyor(folder, "enqueue", "cli_app:app", "ad", "--args", "[1, 2]")
    assert done.returncode == 0, done.stderr
    line = assert_one_line(done, "cli_app:app defines no task 'ad' (did you mean 'add'?)", status=0)
    assert "goes to queue 'default', not any queue the task declares elsewhere" in line
    assert "dead-letter list" in line
    known = conveyor(folder, "enqueue", "cli_app:app", "add", "--args", "[1, 2]")
    assert known.returncode == 0 and known.stderr == ""


@pytest.mark.parametrize(
    "command", [["stats"], ["jobs", "--json"], ["retry", "--all-dead"], ["cancel", "x"]]
)
def test_commands_on_existing_jobs_never_create_a_store(folder, command):
    typo = folder / "convey0r.db"
    done = conveyor(folder, command[0], "cli_app:app", *command[1:], url=f"sqlite:///{typo}")
    assert_one_line(done, f"no database at {typo}", "never creates one")
    assert not typo.exists()
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".db") == []


def test_every_command_can_say_which_store_it_uses(folder):
    assert conveyor(folder, "enqueue", "cli_app:app", "add", "--args", "[1, 2]").returncode == 0
    absolute = f"sqlite:///{folder}/cli.db"
    for command in (
        ["stats"],
        ["jobs"],
        ["enqueue", "add", "--args", "[1, 2]"],
        ["worker", "--burst"],
    ):
        done = conveyor(
            folder, "-v", command[0], "cli_app:app", *command[1:], url="sqlite:///cli.db"
        )
        assert done.returncode == 0, done.stderr
        assert f"conveyor: store {absolute}" in done.stderr.splitlines()[0]
    table = conveyor(folder, "stats", "cli_app:app", url="sqlite:///cli.db")
    assert f"store: {absolute}" in table.stdout.splitlines()


# -- a call the task's function cannot take ---------------------------------


def test_a_call_the_function_cannot_take_is_refused_at_enqueue_on_every_path():
    app = Conveyor("memory://")

    @app.task(name="add")
    def add(x: int, y: int = 1) -> int:
        return x + y

    @app.task(name="greet")
    async def greet(name: str, *, loud: bool) -> str:
        return name

    attempts = [
        (lambda: add.enqueue("a", "b", "c"), "too many positional arguments"),
        (lambda: add.enqueue(), "missing a required argument: 'x'"),
        (lambda: add.enqueue(1, x=2), "multiple values for argument 'x'"),
        (lambda: add.options(delay=5).enqueue(z=1), "missing a required argument: 'x'"),
        (lambda: app.enqueue("add", ["a", "b", "c"]), "too many positional arguments"),
        (lambda: app.enqueue("add", kwargs={"y": 2}), "missing a required argument: 'x'"),
        (lambda: greet.enqueue("ann"), "missing a required argument: 'loud'"),
        (lambda: app.enqueue_many([add.s(1), add.s(1, 2, 3)]), "too many positional arguments"),
    ]
    for call, why in attempts:
        with pytest.raises(ConfigurationError, match=re.escape(f"({why})")) as info:
            call()
        assert "\n" not in str(info.value)
    assert app.stats() == {}  # not even the good call of the refused batch

    assert add.enqueue(1).args == [1]
    assert add.enqueue(y=2, x=1).kwargs == {"y": 2, "x": 1}
    assert greet.enqueue("ann", loud=True).kwargs == {"loud": True}
    assert app.enqueue("unknown", ["anything", 1, 2]).args == [
        "anything",
        1,
        2,
    ]  # not ours to check


def test_functions_that_take_anything_or_cannot_be_described_are_not_refused():
    app = Conveyor("memory://")

    @app.task(name="anything")
    def anything(*args: object, **kwargs: object) -> None:
        pass

    app.task(name="builtin")(print)  # no signature Python can read: not checked
    assert anything.enqueue(1, 2, three=3).args == [1, 2]
    assert app.enqueue("builtin", [1, 2, 3], {"sep": "-"}).args == [1, 2, 3]
