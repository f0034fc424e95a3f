"""The public producer API: enqueue, options, dedup, results, bad input."""

import datetime

import pytest

from conveyor import (
    ConfigurationError,
    Conveyor,
    FakeClock,
    JobCancelled,
    JobFailed,
    PayloadError,
)
from conveyor.testing import drain


@pytest.fixture
def clock():
    return FakeClock(1_000_000.0)


@pytest.fixture
def app(clock):
    app = Conveyor("memory://", clock=clock)
    yield app
    app.close()


def test_default_url_comes_from_environment_then_local_file(monkeypatch):
    monkeypatch.setenv("CONVEYOR_URL", "memory://")
    assert Conveyor().url == "memory://"
    monkeypatch.delenv("CONVEYOR_URL")
    assert Conveyor().url == "sqlite:///conveyor.db"


def test_unknown_scheme_is_one_line_naming_the_url():
    with pytest.raises(ConfigurationError) as info:
        Conveyor("mongodb://localhost/jobs")
    message = str(info.value)
    assert "mongodb://localhost/jobs" in message and "\n" not in message


def test_task_names_default_to_module_and_qualname(app):
    @app.task
    def add(x, y):
        return x + y

    assert add.name == f"{__name__}.test_task_names_default_to_module_and_qualname.<locals>.add"
    assert add(2, 3) == 5  # calling a task runs it here


def test_duplicate_task_names_are_refused(app):
    app.task(name="x")(lambda: 1)
    with pytest.raises(ConfigurationError, match="already registered"):
        app.task(name="x")(lambda: 2)


def test_enqueue_stores_a_waiting_job(app, clock):
    @app.task(name="add")
    def add(x, y):
        return x + y

    job = add.enqueue(2, y=3)
    assert job.state == "waiting"
    assert (job.task, job.queue, job.args, job.kwargs) == ("add", "default", [2], {"y": 3})
    assert app.get_job(job.id).record.created_at == clock.now()
    assert app.get_job("no-such-id") is None


def test_options_queue_priority_delay_and_run_at(app, clock):
    @app.task(name="t", queue="bulk", priority=1)
    def t():
        pass

    assert t.enqueue().queue == "bulk"
    assert t.enqueue().priority == 1
    job = t.options(queue="critical", priority=9, delay=10).enqueue()
    assert (job.queue, job.priority, job.state) == ("critical", 9, "delayed")
    assert job.record.run_at == clock.now() + 10
    when = datetime.datetime.fromtimestamp(clock.now() + 60, datetime.UTC)
    assert app.enqueue("t", run_at=when).record.run_at == pytest.approx(clock.now() + 60)


def test_queue_defaults_apply_to_priority_and_run_options(app):
    app.queue("critical", priority=10, attempts=5, timeout=7)
    job = app.enqueue("unknown-here", queue="critical")
    assert job.priority == 10
    options = app.run_options("unknown-here", "critical", None)
    assert (options.attempts, options.timeout) == (5, 7)


def test_run_options_layering_job_over_task_over_queue_over_defaults(app):
    app.queue("q", attempts=4, timeout=100, backoff="linear")

    @app.task(name="t", queue="q", attempts=2)
    def t():
        pass

    assert app.run_options("t", "q", None).attempts == 2
    assert app.run_options("t", "q", None).timeout == 100
    assert app.run_options("t", "q", None).backoff.kind == "linear"
    job = t.options(attempts=7, backoff="fixed", backoff_delay=3).enqueue()
    resolved = app.run_options("t", "q", job.record.options)
    assert (resolved.attempts, resolved.backoff.kind, resolved.backoff.delay) == (7, "fixed", 3)
    plain = app.run_options("other", "default", None)
    assert (plain.attempts, plain.timeout, plain.backoff.kind, plain.backoff.delay) == (
        3,
        None,
        "exponential",
        1.0,
    )


def test_dedup_returns_the_existing_job_until_it_ends(app):
    first = app.enqueue("t", args=[1], job_id="report-42")
    again = app.enqueue("t", args=[2], job_id="report-42")
    assert again.id == first.id and again.args == [1]
    assert app.stats()["default"]["waiting"] == 1
    assert first.cancel()
    replaced = app.enqueue("t", args=[3], job_id="report-42")
    assert replaced.state == "waiting" and replaced.args == [3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay": -1}, "delay must be a number of seconds from 0, up to 100 years, not -1"),
        ({"delay": 1, "run_at": 5.0}, "not both"),
        ({"run_at": datetime.datetime(2030, 1, 1)}, "timezone-aware"),
        ({"attempts": 0}, "attempts must be a whole number from 1 to 1,000, not 0"),
        ({"timeout": 0}, "timeout must be a number of seconds above 0, up to 100 years, not 0"),
        ({"backoff": "sometimes"}, "backoff must be one of fixed, linear, exponential, fibonacci"),
        ({"job_id": ""}, "job_id must be a job id: 1 to 255 printable characters"),
    ],
)
def test_bad_options_are_refused_and_nothing_is_stored(app, kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        app.enqueue("t", **kwargs)
    assert app.stats() == {}


def test_a_callable_backoff_belongs_on_the_task(app):
    with pytest.raises(ConfigurationError, match="callable backoff cannot be stored"):
        app.enqueue("t", backoff=lambda n: n)


def test_unserialisable_argument_is_refused_naming_it_and_nothing_is_stored(app):
    app.enqueue("keep", args=[1])

    @app.task(name="send")
    def send(to, when):
        pass

    with pytest.raises(PayloadError, match=r"argument 'when' has type datetime.datetime"):
        send.enqueue("a@b.c", when=datetime.datetime.now())
    assert app.stats()["default"]["waiting"] == 1


def test_payload_over_the_limit_is_refused(clock):
    app = Conveyor("memory://", clock=clock, max_payload=100)
    with pytest.raises(PayloadError, match="more than the 100-byte limit"):
        app.enqueue("t", args=["x" * 200])
    assert app.stats() == {}


def test_result_returns_value_or_raises(app):
    @app.task(name="ok")
    def ok(x):
        return {"double": x * 2}

    @app.task(name="bad", attempts=1)
    def bad():
        raise ValueError("no luck")

    good, failing = ok.enqueue(21), bad.enqueue()
    waiting = app.enqueue("ok", args=[1], delay=100)
    cancelled = ok.enqueue(1)
    cancelled.cancel()
    drain(app)
    assert good.result(timeout=1) == {"double": 42}
    with pytest.raises(JobFailed, match="ValueError: no luck") as info:
        failing.result(timeout=1)
    assert "Traceback" in info.value.remote_traceback
    with pytest.raises(JobCancelled):
        cancelled.result(timeout=1)
    with pytest.raises(TimeoutError):
        waiting.result(timeout=0.05)


def test_cancel_only_waiting_or_delayed(app):
    @app.task(name="t")
    def t():
        return 1

    delayed = t.options(delay=5).enqueue()
    assert delayed.cancel() and delayed.state == "cancelled"
    done = t.enqueue()
    drain(app)
    assert not done.cancel()
    assert done.state == "completed"


def test_retry_from_dead_keeps_the_id_and_history(app):
    calls = []

    @app.task(name="flaky", attempts=1)
    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first time")
        return "ok"

    job = flaky.enqueue()
    drain(app)
    assert job.refresh().state == "dead"
    assert job.retry()
    assert job.state == "waiting" and job.attempts == 0
    drain(app)
    assert job.result(timeout=1) == "ok"
    assert [e["message"] for e in job.refresh().errors] == ["first time"]


def test_stats_lists_every_state_for_each_queue(app):
    app.enqueue("a", queue="one")
    app.enqueue("b", queue="two", delay=5)
    stats = app.stats()
    assert set(stats) == {"one", "two"}
    for counts in stats.values():
        assert set(counts) == {"waiting", "delayed", "active", "completed", "dead", "cancelled"}
    assert stats["two"]["delayed"] == 1


def test_to_dict_has_the_cli_json_fields(app):
    job = app.enqueue("t")
    assert {"id", "task", "queue", "state", "attempts", "error", "result"} <= set(job.to_dict())


def test_enqueue_many_stores_every_call_with_its_options(app):
    @app.task(name="add")
    def add(x, y):
        return x + y

    jobs = app.enqueue_many(
        [add.s(1, 2), add.options(priority=7, queue="bulk").s(3, y=4), add.options(delay=5).s(0, 0)]
    )
    assert [(j.args, j.kwargs, j.queue, j.priority, j.state) for j in jobs] == [
        ([1, 2], {}, "default", 0, "waiting"),
        ([3], {"y": 4}, "bulk", 7, "waiting"),
        ([0, 0], {}, "default", 0, "delayed"),
    ]
    assert drain(app, ["default", "bulk"], skip_delays=True) == 3
    assert [j.result(timeout=1) for j in jobs] == [3, 7, 0]


def test_enqueue_many_stores_nothing_when_one_call_is_bad(app):
    @app.task(name="t")
    def t(x):
        pass

    with pytest.raises(PayloadError, match="argument 0 has type set"):
        app.enqueue_many([t.s(1), t.s({2})])
    assert app.stats() == {}
