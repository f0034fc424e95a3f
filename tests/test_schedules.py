"""Schedules: declaring them (every mistake a one-line ConfigurationError,
nothing registered), when their ticks fall (cron in a time zone, daylight
saving time, every=N aligned to the epoch), and the worker's scheduler
firing them on a FakeClock: one job per tick, missed ticks skipped or run
once, several schedulers at once."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from conveyor import ConfigurationError, Conveyor, FakeClock
from conveyor.schedules import ON_TIME, Schedule, tick_job_id
from conveyor.worker import Worker
from conveyor.worker.control import Control
from conveyor.worker.scheduler import Scheduler
from servers import isolated_redis_url

PARIS = ZoneInfo("Europe/Paris")


def at(*fields: int, tz: ZoneInfo = PARIS) -> int:
    return int(datetime(*fields, tzinfo=tz).timestamp())  # type: ignore[misc]


def utc(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def ticks(schedule: Schedule, start: int, n: int) -> list[str]:
    found, t = [], start
    for _ in range(n):
        t = schedule.next_after(t)
        found.append(utc(t))
    return found


def cron(expression: str, tz: str | None = "Europe/Paris") -> Schedule:
    return Schedule.declare("s", "t", "default", expression, tz=tz)


# -- when ticks fall -----------------------------------------------------------


def test_every_ticks_at_multiples_of_n_seconds_since_the_epoch():
    s = Schedule.declare("s", "t", "default", every=30)
    assert s.next_after(1_000_000_000) == 1_000_000_020  # 1e9 is 20 s past a multiple of 30
    assert s.next_after(1_000_000_020) == 1_000_000_050  # strictly after
    assert s.latest(1_000_000_020) == 1_000_000_020  # at or before
    assert s.latest(1_000_000_049.99) == 1_000_000_020
    # Workers started at different moments agree on the ticks.
    assert {s.next_after(1_000_000_020 + k * 0.7) for k in range(42)} == {1_000_000_050}
    assert Schedule.declare("s", "t", "default", every=30.0).every == 30


def test_cron_in_a_time_zone():
    s = cron("0 9 * * MON-FRI")
    # Friday 2026-12-04 12:00 Paris: next Monday 09:00 Paris = 08:00 UTC.
    assert ticks(s, at(2026, 12, 4, 12, 0), 2) == ["2026-12-07 08:00:00", "2026-12-08 08:00:00"]
    assert s.latest(at(2026, 12, 7, 9, 0)) == at(2026, 12, 7, 9, 0)
    assert s.latest(at(2026, 12, 7, 8, 59, 59)) == at(2026, 12, 4, 9, 0)
    assert cron("0 9 * * *", tz=None).tz == "UTC"


def test_six_fields_put_seconds_first():
    s = cron("*/20 * * * * *")
    assert ticks(s, at(2026, 1, 1, 0, 0), 3) == [
        "2025-12-31 23:00:20",
        "2025-12-31 23:00:40",
        "2025-12-31 23:01:00",
    ]


def test_a_local_time_skipped_in_spring_fires_once_when_the_clocks_jump():
    # Europe/Paris, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 never happens.
    s = cron("30 2 * * *")
    assert ticks(s, at(2026, 3, 28, 12, 0), 3) == [
        "2026-03-29 01:00:00",  # 03:00 CEST, the moment the clocks jump
        "2026-03-30 00:30:00",  # 02:30 CEST
        "2026-03-31 00:30:00",
    ]
    hourly = cron("0 * * * *")  # every real hour, none lost, none doubled
    assert ticks(hourly, at(2026, 3, 29, 0, 30), 3) == [
        "2026-03-29 00:00:00",  # 01:00 CET
        "2026-03-29 01:00:00",  # 03:00 CEST
        "2026-03-29 02:00:00",  # 04:00 CEST
    ]


def test_a_local_time_repeated_in_autumn_fires_once_at_its_first_occurrence():
    # Europe/Paris, 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    s = cron("30 2 * * *")
    assert ticks(s, at(2026, 10, 24, 12, 0), 2) == [
        "2026-10-25 00:30:00",  # 02:30 CEST, the first one; not 01:30 UTC again
        "2026-10-26 01:30:00",  # 02:30 CET
    ]
    assert s.latest(at(2026, 10, 25, 12, 0)) == int(
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC).timestamp()
    )
    hourly = cron("0 * * * *")  # the repeated hour is a real hour: it fires again
    assert ticks(hourly, at(2026, 10, 25, 1, 30), 3) == [
        "2026-10-25 00:00:00",  # 02:00 CEST
        "2026-10-25 01:00:00",  # 02:00 CET
        "2026-10-25 02:00:00",  # 03:00 CET
    ]


def test_tick_job_ids_are_iso_utc():
    assert tick_job_id("poll-feeds", 1_700_000_000) == "periodic:poll-feeds:2023-11-14T22:13:20Z"


# -- declaring ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "options", "message"),
    [
        (("61 * * * *",), {}, "bad minute field '61' (minute is 0-59)"),
        (("* 24 * * *",), {}, "bad hour field '24'"),
        (("* * 0 * *",), {}, "bad day-of-month field '0'"),
        (("0 0 30 2 *",), {}, "bad day-of-month field '30'"),
        (("* * * 13 *",), {}, "bad month field '13'"),
        (("* * * * 9",), {}, "bad day-of-week field '9'"),
        (("60 * * * * *",), {}, "bad second field '60'"),
        (("*/0 * * * *",), {}, "bad minute field '*/0'"),
        (("* * * *",), {}, "4 fields, not 5"),
        (("* * * * * * *",), {}, "7 fields, not 5"),
        (("",), {}, "0 fields"),
        ((5,), {}, "cron must be a cron expression"),
        (("* * * * *",), {"tz": "Mars/Olympus"}, "not 'Mars/Olympus' (unknown)"),
        (("* * * * *",), {"tz": "../../etc/passwd"}, "not '../../etc/passwd'"),
        (("* * * * *",), {"tz": ""}, "tz must be an IANA time zone name"),
        (("* * * * *",), {"tz": 1}, "tz must be an IANA time zone name"),
        ((), {"every": 0}, "every must be a whole number from 1"),
        ((), {"every": -1}, "not -1"),
        ((), {"every": float("nan")}, "not nan"),
        ((), {"every": float("inf")}, "not inf"),
        ((), {"every": 1.5}, "not 1.5"),
        ((), {"every": True}, "not True"),
        ((), {"every": "30"}, "not '30'"),
        ((), {"every": 10**20}, "not 100000000000000000000"),
        ((), {}, "not neither"),
        (("* * * * *",), {"every": 5}, "not both"),
        ((), {"every": 5, "tz": "Europe/Paris"}, "tz applies to cron schedules"),
        ((), {"every": 5, "missed": "later"}, "missed must be one of 'skip', 'run_once'"),
        ((), {"every": 5, "name": "a\nb"}, "name must be a schedule name"),
        ((), {"every": 5, "name": ""}, "name must be a schedule name"),
        ((), {"every": 5, "name": "x" * 201}, "name must be a schedule name"),
        ((), {"every": 5, "queue": "a}b"}, "queue must be a queue name"),
    ],
)
def test_bad_declarations_are_refused_at_once_with_nothing_registered(args, options, message):
    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError) as caught:
        app.periodic(*args, **options)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert app.schedules == {} and app.tasks == {}


def test_a_schedule_name_is_declared_once_and_a_task_taking_arguments_is_refused():
    app = Conveyor("memory://")

    @app.periodic(every=5, name="poll")
    def poll() -> None: ...

    with pytest.raises(ConfigurationError, match="a schedule named 'poll' is already declared"):

        @app.periodic(every=10, name="poll")
        def other() -> None: ...

    with pytest.raises(ConfigurationError, match="called without arguments"):

        @app.periodic(every=10)
        def needs(x: int) -> None: ...

    assert list(app.schedules) == ["poll"]
    assert list(app.tasks) == ["poll"]


def test_declared_on_a_task_it_keeps_the_tasks_name_queue_and_options():
    app = Conveyor("memory://")

    @app.periodic("*/5 * * * *", tz="Europe/Paris", missed="run_once")
    @app.task(name="report", queue="reports", attempts=1)
    def report() -> None: ...

    @app.periodic(every=30, name="poll-feeds", queue="feeds")
    def poll() -> None: ...

    assert app.schedules["report"] == Schedule(
        "report", "report", "reports", "*/5 * * * *", None, "Europe/Paris", "run_once"
    )
    assert app.schedules["poll-feeds"].queue == "feeds"
    assert app.tasks["poll-feeds"].fn is poll.fn
    job = app.tick_job(app.schedules["report"], 1_700_000_100)
    assert (job.id, job.task, job.queue, job.run_at) == (
        "periodic:report:2023-11-14T22:15:00Z",
        "report",
        "reports",
        None,
    )


# -- the scheduler, on a FakeClock ---------------------------------------------

START = 1_700_000_000  # a multiple of 10


@pytest.fixture(params=["memory", "sqlite", "redis"])
def clocked(request, tmp_path):
    """(app on a FakeClock, clock): the app has no tasks yet."""
    clock = FakeClock(START + 0.5)
    if request.param == "redis":
        with isolated_redis_url() as url:
            app = Conveyor(url, clock=clock)
            yield app, clock
            app.close()
        return
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/s.db"
    app = Conveyor(url, clock=clock)
    yield app, clock
    app.close()


def fired(app: Conveyor) -> list[str]:
    return sorted(job.id for job in app.jobs(limit=10_000))


async def settle(app: Conveyor, expected: int) -> None:
    """Until the store holds ``expected`` jobs (the schedulers fire on
    threads): a fact, not a sleep."""
    for _ in range(500):
        if len(await asyncio.to_thread(fired, app)) >= expected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {expected} jobs, found {fired(app)}")


def run_schedulers(app: Conveyor, clock: FakeClock, steps: list[float], count: int = 1) -> None:
    """``count`` schedulers at once; after each has started, advance the
    clock by each of ``steps`` in turn, letting them fire in between."""

    async def main() -> None:
        stores = [app.broker.async_store() for _ in range(count)]
        control = Control()
        runs = [asyncio.create_task(Scheduler(app, s, control).run()) for s in stores]
        try:
            await asyncio.sleep(0.2)
            for step in steps:
                before = len(await asyncio.to_thread(fired, app))
                clock.advance(step)
                await settle(app, before + 1)
                await asyncio.sleep(0.05)  # a late second job would show now
        finally:
            control.stop()
            for run in runs:
                run.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
            for s in stores:
                s.close()

    asyncio.run(main())


def test_each_tick_fires_one_job_whatever_the_number_of_schedulers(clocked):
    app, clock = clocked

    @app.periodic(every=10, name="poll")
    def poll() -> None: ...

    run_schedulers(app, clock, [10, 10, 10], count=3)
    # At START + 0.5 the tick START is on time: it fires at once, then one per step.
    assert fired(app) == [tick_job_id("poll", START + 10 * k) for k in range(4)]
    assert app.schedule_status()[0]["last_run"] == "2023-11-14T22:13:50Z"


def test_missed_ticks_are_skipped_by_default(clocked):
    app, clock = clocked

    @app.periodic(every=10, name="poll")
    def poll() -> None: ...

    app.broker.fire([_tick(app, "poll", START - 3600)])  # an hour ago, then no worker
    clock.set(START + ON_TIME + 15)  # the latest tick is START + 70: on time
    run_schedulers(app, clock, [10])
    assert fired(app) == [
        tick_job_id("poll", START - 3600),
        tick_job_id("poll", START + 70),  # the hour in between: skipped
        tick_job_id("poll", START + 80),
    ]


def test_a_skip_schedule_fires_no_tick_older_than_on_time(clocked):
    app, clock = clocked

    @app.periodic("0 * * * *", name="hourly")  # START + 0.5 is 22:13:20.5 UTC
    def hourly() -> None: ...

    @app.periodic(every=3600, name="run-once", missed="run_once")
    def run_once() -> None: ...

    app.broker.fire([_tick(app, "run-once", START - 7 * 3600 - 800)])
    run_schedulers(app, clock, [])  # just starting: 22:00 is 800 s ago, missed
    # run_once: one job for the 7 ticks missed since, at the newest (22:00 UTC).
    assert fired(app) == [
        "periodic:run-once:2023-11-14T15:00:00Z",
        "periodic:run-once:2023-11-14T22:00:00Z",
    ]
    clock.set(at(2023, 11, 14, 23, 0, 30, tz=UTC))
    run_schedulers(app, clock, [])
    assert "periodic:hourly:2023-11-14T23:00:00Z" in fired(app)


@pytest.mark.parametrize("missed", ["skip", "run_once"])
def test_a_held_up_scheduler_fires_each_tick_on_time_late_and_no_older_one(clocked, missed):
    app, clock = clocked

    @app.periodic(every=10, name="poll", missed=missed)
    def poll() -> None: ...

    # Its loop held up for 35 s, then for 200 s: the clock jumps at once.
    run_schedulers(app, clock, [35, 200])
    late = [START + 10, START + 20, START + 30]  # all three on time: each fires
    # At START + 235.5, ticks from START + 180 are on time (60 s); the
    # eleven before are missed: skipped, or the newest fires once.
    once = [START + 170] if missed == "run_once" else []
    expected = [START, *late, *once, *range(START + 180, START + 240, 10)]
    assert fired(app) == sorted(tick_job_id("poll", t) for t in expected)


def test_a_run_once_schedule_never_fired_before_does_not_catch_up(clocked):
    app, clock = clocked

    @app.periodic(every=3600, name="fresh", missed="run_once")
    def fresh() -> None: ...

    clock.set(START + 1000)  # the latest tick is 1000 s ago and none was ever recorded
    run_schedulers(app, clock, [3600])
    assert fired(app) == ["periodic:fresh:2023-11-14T23:00:00Z"]


def test_a_worker_fires_schedules_and_runs_their_jobs(clocked, caplog):
    app, clock = clocked
    ran: list[str] = []

    @app.periodic(every=10, name="poll", queue="elsewhere")
    def poll() -> None:
        ran.append("poll")

    worker = Worker(app, queues=["elsewhere"], concurrency=1, poll_interval=0.05)
    quiet = Worker(app, queues=["default"], schedules=False)
    assert Worker(app, burst=True).schedules is False  # a burst worker drains, no more

    async def main() -> None:
        runs = [asyncio.create_task(w.run_async()) for w in (worker, quiet)]
        try:
            for k in range(1, 3):
                await settle(app, k)
                clock.advance(10)
            await settle(app, 3)
            for _ in range(500):
                if len(ran) == 3:
                    break
                await asyncio.sleep(0.01)
        finally:
            worker.stop()
            quiet.stop()
            await asyncio.gather(*runs)

    with caplog.at_level(logging.INFO, logger="conveyor.worker"):
        asyncio.run(main())
    assert ran == ["poll"] * 3
    assert [job.state for job in app.jobs()] == ["completed"] * 3
    assert "schedule poll: enqueued periodic:poll:2023-11-14T22:13:20Z" in caplog.text


def _tick(app: Conveyor, name: str, at_: int):
    from conveyor.brokers.base import Tick

    return Tick(name, at_, app.tick_job(app.schedules[name], at_))


# -- conveyor schedules APP ------------------------------------------------------

CLI_APP = """
from conveyor import Conveyor

app = Conveyor()


@app.periodic("30 2 * * *", tz="Europe/Paris", name="[nightly]")
def nightly() -> None: ...


@app.periodic(every=30, name="poll-feeds", queue="feeds")
def poll() -> None: ...
"""


@pytest.fixture
def cli_app(tmp_path, monkeypatch):
    (tmp_path / "sched_app.py").write_text(CLI_APP)
    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("CONVEYOR_URL", url)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [str(tmp_path), *sys.path])
    sys.modules.pop("sched_app", None)
    store = Conveyor(url)
    store.stats()  # the store exists
    yield store
    store.close()
    sys.modules.pop("sched_app", None)


def test_cli_schedules_json_shows_next_and_last_run(cli_app):
    from click.testing import CliRunner

    from conveyor.brokers.base import NewJob, Tick
    from conveyor.cli import main

    job = NewJob("periodic:poll-feeds:2023-11-14T22:13:00Z", "poll-feeds", "feeds", "[[],{}]")
    assert cli_app.broker.fire([Tick("poll-feeds", 1_699_999_980, job)]) == [True]
    result = CliRunner().invoke(main, ["schedules", "sched_app:app", "--json"])
    assert result.exit_code == 0, result.output
    found = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(found) == {"[nightly]", "poll-feeds"}
    assert found["poll-feeds"]["last_run"] == "2023-11-14T22:13:00Z"
    assert found["poll-feeds"]["schedule"] == "every 30s"
    assert found["poll-feeds"]["queue"] == "feeds"
    assert found["[nightly]"]["last_run"] is None
    assert found["[nightly]"]["tz"] == "Europe/Paris"
    next_run = datetime.fromisoformat(found["[nightly]"]["next_run"]).astimezone(PARIS)
    assert (next_run.hour, next_run.minute) in ((2, 30), (3, 0))  # 03:00 on a spring-forward day
    assert datetime.fromisoformat(found["poll-feeds"]["next_run"]).timestamp() % 30 == 0


def test_cli_schedules_table(cli_app):
    from click.testing import CliRunner

    from conveyor.cli import main

    result = CliRunner().invoke(main, ["schedules", "sched_app:app"])
    assert result.exit_code == 0, result.output
    for text in ("[nightly]", "30 2 * * *", "Europe/Paris", "poll-feeds", "every 30s", "never"):
        assert text in result.stdout


def test_a_worker_told_no_schedules_fires_none(clocked, caplog):
    app, clock = clocked

    @app.periodic(every=10, name="poll")
    def poll() -> None: ...

    worker = Worker(app, concurrency=1, poll_interval=0.05, schedules=False)

    async def main() -> None:
        run = asyncio.create_task(worker.run_async())
        try:
            for _ in range(3):
                await asyncio.sleep(0.1)
                clock.advance(10)
            await asyncio.sleep(0.2)
        finally:
            worker.stop()
            await run

    with caplog.at_level(logging.INFO, logger="conveyor.worker"):
        asyncio.run(main())
    assert fired(app) == []
    assert "scheduler" not in caplog.text
