"""Flow control through the app: ``app.queue(rate_limit=, concurrency=)`` and
``@app.task(rate_limit=, rate_key=)`` declare what the store enforces
(``broker.controls``), checked at declaration; a producer files each job of
a keyed task under its argument's value, however the argument was passed."""

from __future__ import annotations

import math

import pytest

from conveyor import ConfigurationError, Conveyor
from conveyor.brokers.base import NO_CONTROLS, Controls, RateLimit
from conveyor.clock import FakeClock
from conveyor.task import MAX_RATE_KEY

BAD_RATES = ["fast", "0/s", "-1/s", "1e30/s", "10/x", "10/0s", "10 per second", "10/s\n", ""]
BAD_RATES += ["99999999999999999999/s", "1000001/s", "1/1000000000h"]
BAD_CAPS = [0, -1, True, math.nan, 1.5, "4", 10**20]


@pytest.fixture
def app():
    app = Conveyor("memory://", clock=FakeClock())
    yield app
    app.close()


def one_line(info: pytest.ExceptionInfo[ConfigurationError], *mentions: str) -> None:
    message = str(info.value)
    assert "\n" not in message
    for text in mentions:
        assert text in message, message


@pytest.mark.parametrize("rate", [*BAD_RATES, 10, None.__class__, 1.5])
def test_a_bad_queue_rate_is_refused_naming_it_and_nothing_changes(app, rate):
    with pytest.raises(ConfigurationError) as info:
        app.queue("bulk", rate_limit=rate)
    one_line(info, "rate_limit must be a rate such as", repr(rate)[:20])
    assert "bulk" not in app.queues and app.broker.controls is NO_CONTROLS


@pytest.mark.parametrize("cap", BAD_CAPS)
def test_a_bad_concurrency_is_refused_naming_it(app, cap):
    with pytest.raises(ConfigurationError) as info:
        app.queue("bulk", concurrency=cap)
    one_line(info, "concurrency must be a whole number from 1", repr(cap)[:10])
    assert "bulk" not in app.queues and app.broker.controls is NO_CONTROLS


@pytest.mark.parametrize("rate", BAD_RATES)
def test_a_bad_task_rate_is_refused_naming_it(app, rate):
    with pytest.raises(ConfigurationError) as info:

        @app.task(rate_limit=rate)
        def sync(customer): ...

    one_line(info, "rate_limit must be a rate such as", repr(rate)[:20])
    assert app.tasks == {}


def test_a_rate_key_must_name_an_argument(app):
    with pytest.raises(ConfigurationError) as info:

        @app.task(rate_limit="1/s", rate_key="customer")
        def sync(account, payload): ...

    one_line(info, "rate_key='customer' names no argument of sync(account, payload)")
    for key, func in [("args", lambda *args: None), ("kw", lambda **kw: None)]:
        with pytest.raises(ConfigurationError, match=f"rate_key={key!r} names no argument"):
            app.task(rate_limit="1/s", rate_key=key, name=f"t-{key}")(func)
    with pytest.raises(ConfigurationError, match="rate_key must be the name of one"):
        app.task(rate_limit="1/s", rate_key="not a name")(lambda x: None)
    assert app.tasks == {} and app.broker.controls is NO_CONTROLS


def test_a_rate_key_without_a_rate_limit_is_refused(app):
    with pytest.raises(ConfigurationError) as info:

        @app.task(rate_key="customer")
        def sync(customer): ...

    one_line(info, "rate_key='customer' needs a rate_limit=")
    assert app.tasks == {}


@pytest.mark.parametrize(
    ("text", "limit", "period"),
    [("10/s", 10, 1.0), ("100/m", 100, 60.0), ("5/h", 5, 3600.0), ("3/10s", 3, 10.0),
     ("1/0.5s", 1, 0.5), ("7/2m", 7, 120.0), ("1000000/h", 1_000_000, 3600.0)],
)  # fmt: skip
def test_rates_are_read_into_limits_and_periods(app, text, limit, period):
    app.queue("q", rate_limit=text)
    assert app.broker.controls.queue_rates == {"q": RateLimit(limit, period)}


def test_each_declaration_hands_the_store_the_controls(app):
    broker = app.broker  # opened first: later declarations still reach it
    app.queue("critical", rate_limit="10/s")
    app.queue("default", rate_limit="100/s")
    app.queue("bulk", rate_limit="10/m", concurrency=4)

    @app.task(rate_limit="100/s", rate_key="customer")
    def sync_customer(customer, payload): ...

    @app.task
    def plain(x): ...

    assert broker.controls == Controls(
        queue_rates={
            "critical": RateLimit(10, 1.0),
            "default": RateLimit(100, 1.0),
            "bulk": RateLimit(10, 60.0),
        },
        concurrency={"bulk": 4},
        task_rates={sync_customer.name: RateLimit(100, 1.0)},
    )
    app.queue("bulk")  # declared again without limits: they go
    assert "bulk" not in broker.controls.queue_rates and broker.controls.concurrency == {}


def test_a_store_opened_later_gets_the_controls(app):
    app.queue("bulk", concurrency=2)
    assert app.broker.controls.concurrency == {"bulk": 2}


def test_the_key_is_the_arguments_value_however_it_is_passed(app):
    @app.task(rate_limit="1/s", rate_key="customer")
    def sync(account, customer="nobody", *, payload=None): ...

    keys = [
        sync.enqueue(1, "acme").record.rate_key,
        sync.enqueue(1, customer="acme").record.rate_key,
        sync.enqueue(account=1, customer="acme", payload=[1]).record.rate_key,
        sync.enqueue(1).record.rate_key,  # the default
        sync.enqueue(1, {"b": 1, "a": [2, "}"]}).record.rate_key,  # canonical: keys sorted
        sync.enqueue(1, 12345678901234567890).record.rate_key,
        sync.enqueue(1, None).record.rate_key,
    ]
    assert keys == [
        '"acme"', '"acme"', '"acme"', '"nobody"', '{"a":[2,"}"],"b":1}',
        "12345678901234567890", "null",
    ]  # fmt: skip


def test_a_long_key_is_stored_as_its_hash(app):
    @app.task(rate_limit="1/s", rate_key="doc")
    def index(doc): ...

    first = index.enqueue("x" * 5000).record.rate_key
    assert first.startswith("sha256:") and len(first) <= MAX_RATE_KEY
    assert index.enqueue("x" * 5000).record.rate_key == first
    assert index.enqueue("x" * 5001).record.rate_key != first
    assert index.enqueue("x" * 10).record.rate_key == '"xxxxxxxxxx"'


def test_jobs_enqueued_by_name_share_one_bucket(app):
    """A producer without the task's code cannot know the key: None, and the
    store puts the job in the task's shared bucket."""
    producer = Conveyor("memory://")
    assert producer.enqueue("tasks.sync", kwargs={"customer": "acme"}).record.rate_key is None
    producer.close()


def test_the_store_holds_the_limits_through_the_app(app):
    app.queue("bulk", rate_limit="2/m")

    @app.task(queue="bulk", rate_limit="1/m", rate_key="customer")
    def sync(customer): ...

    for customer in ["a", "a", "b", "c"]:
        sync.enqueue(customer)
    claimed = app.broker.claim(["bulk"], 10, 30.0, "w")
    assert [j.rate_key for j in claimed] == ['"a"', '"b"']  # queue: 2 a minute; "a" once
    app.clock.advance(60)
    assert [j.rate_key for j in app.broker.claim(["bulk"], 10, 30.0, "w")] == ['"a"', '"c"']


def test_drain_and_inline_lift_the_limits_as_they_skip_delays(app):
    """A unit test of a task on a "1/m" queue must not wait a minute a job."""
    from conveyor.testing import drain, inline

    app.queue("bulk", rate_limit="1/m", concurrency=1)
    ran = []

    @app.task(queue="bulk", rate_limit="1/h", rate_key="n")
    def work(n):
        ran.append(n)

    for _ in range(3):
        work.enqueue(0)
    assert drain(app, skip_delays=True) == 3
    with inline(app):
        assert work.enqueue(0).state == "completed"
    assert ran == [0, 0, 0, 0]
    assert app.broker.controls is app.controls and app.controls.concurrency == {"bulk": 1}
