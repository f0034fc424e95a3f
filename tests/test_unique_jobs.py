"""Unique jobs through the app: ``options(unique_for=...)`` on every way to
enqueue, the key (stable across processes and machines), bad values, and
producers in separate processes racing for one key. The store's rules are
the conformance suite's (tests/conformance/test_unique.py)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from conveyor import Conveyor, FakeClock
from conveyor.errors import ConfigurationError
from conveyor.unique import unique_key
from servers import isolated_redis_url

# sha256 of '["send-email",["a@b.c"],{"lang":"en","subject":"hi"}]': pinned, so
# a change of the key's recipe (which would let old and new producers each
# store a job while they share a store) cannot pass unnoticed.
KNOWN_KEY = "85e951517b5a8cd240e10ac43baa7b1c9a3a3db35f4e0a606a685d982b7067fb"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def app(clock: FakeClock) -> Iterator[Conveyor]:
    app = Conveyor("memory://", clock=clock)
    yield app
    app.close()


def define(app: Conveyor) -> Any:
    @app.task(name="send-email")
    def send_email(to: str, subject: str = "", lang: str = "en") -> None: ...

    return send_email


# -- the key ----------------------------------------------------------------


def test_the_key_is_a_hash_of_task_and_arguments_in_canonical_json() -> None:
    key = unique_key("send-email", ["a@b.c"], {"subject": "hi", "lang": "en"})
    assert key == unique_key("send-email", ("a@b.c",), {"lang": "en", "subject": "hi"})
    assert len(key) == 64 and int(key, 16) >= 0
    assert key != unique_key("send-email", ["a@b.c"], {"subject": "hi", "lang": "fr"})
    assert key != unique_key("send-sms", ["a@b.c"], {"subject": "hi", "lang": "en"})
    nested = unique_key("t", [{"b": 1, "a": [{"y": 2, "x": 1}]}], {})
    assert nested == unique_key("t", [{"a": [{"x": 1, "y": 2}], "b": 1}], {})


def test_the_key_is_the_same_in_every_process() -> None:
    code = (
        "from conveyor.unique import unique_key;"
        "print(unique_key('send-email', ['a@b.c'], {'subject': 'hi', 'lang': 'en'}))"
    )
    keys = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("0", "1", "random")
    }
    assert keys == {KNOWN_KEY}


# -- every way to enqueue -----------------------------------------------------


def test_one_job_per_key_until_unique_for_after_it_ended(app: Conveyor, clock: FakeClock) -> None:
    send_email = define(app)
    unique = send_email.options(unique_for=60)
    first = unique.enqueue(to="a@b.c", subject="hi")
    same = unique.enqueue(subject="hi", to="a@b.c")  # keyword order does not matter
    assert same.id == first.id and same.state == "waiting"
    assert unique.enqueue("a@b.c", subject="bye").id != first.id
    assert unique.enqueue("a@b.c", subject="hi").id != first.id  # by position: another call
    assert send_email.enqueue(to="a@b.c", subject="hi").id != first.id  # no unique_for
    assert app.stats()["default"]["waiting"] == 4

    assert app.broker.cancel(first.id)
    clock.advance(59)
    assert unique.enqueue(to="a@b.c", subject="hi").id == first.id
    clock.advance(1)
    assert unique.enqueue(to="a@b.c", subject="hi").id != first.id


def test_by_name_in_bulk_and_in_async_code(app: Conveyor) -> None:
    send_email = define(app)
    first = app.enqueue("send-email", ["a@b.c"], unique_for=60)
    assert app.enqueue("send-email", kwargs={"to": "a@b.c"}, unique_for=60).id != first.id
    assert app.enqueue("send-email", ["a@b.c"], unique_for=60).id == first.id

    jobs = app.enqueue_many(
        [
            send_email.options(unique_for=60).s("x@y.z"),
            send_email.s("x@y.z"),
            send_email.options(unique_for=60).s("x@y.z"),
            send_email.options(unique_for=60).s("a@b.c"),
        ]
    )
    assert jobs[0].id == jobs[2].id != jobs[1].id
    assert jobs[3].id == first.id

    async def produce() -> list[str]:
        one = await send_email.options(unique_for=60).enqueue_async("x@y.z")
        two = await app.enqueue_async("send-email", ["x@y.z"], unique_for=60)
        return [one.id, two.id]

    assert asyncio.run(produce()) == [jobs[0].id, jobs[0].id]


def test_a_job_id_is_the_key(app: Conveyor, clock: FakeClock) -> None:
    send_email = define(app)
    held = send_email.options(job_id="welcome-ada", unique_for=3600)
    first = held.enqueue("ada@example.com")
    assert app.broker.cancel(first.id)
    clock.advance(600)
    # Different arguments, same id: within the hour the ended job is returned.
    again = held.enqueue("someone@else.org")
    assert (again.id, again.state, again.args) == ("welcome-ada", "cancelled", ["ada@example.com"])
    # Without unique_for the contract's id dedup replaces an ended job.
    assert send_email.options(job_id="welcome-ada").enqueue("x@y.z").state == "waiting"


def test_a_key_is_held_per_queue(app: Conveyor) -> None:
    send_email = define(app)
    one = send_email.options(unique_for=60, queue="one").enqueue("a@b.c")
    two = send_email.options(unique_for=60, queue="two").enqueue("a@b.c")
    assert one.id != two.id and (one.queue, two.queue) == ("one", "two")


def test_a_job_trimmed_by_retention_still_holds_its_key(clock: FakeClock) -> None:
    app = Conveyor("memory://", clock=clock)
    send_email = define(app)
    first = send_email.options(unique_for=60).enqueue("a@b.c")
    app.broker.cancel(first.id)
    app.broker.trim("default", "cancelled", keep=0)
    assert app.get_job(first.id) is None

    held = send_email.options(unique_for=60).enqueue("a@b.c")
    assert (held.id, held.state, held.args) == (first.id, "cancelled", ["a@b.c"])
    with pytest.raises(LookupError, match="no longer stored"):
        held.refresh()
    assert app.stats() == {}


# -- bad values ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (-1, "-1"),
        (0, "0"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (True, "True"),
        (10**20, "100000000000000000000"),
        ("60", "'60'"),
        ([60], "[60]"),
    ],
)
def test_a_bad_unique_for_is_refused_and_nothing_is_stored(
    app: Conveyor, value: Any, shown: str
) -> None:
    send_email = define(app)
    attempts = [
        lambda: send_email.options(unique_for=value),
        lambda: app.enqueue("send-email", ["a@b.c"], unique_for=value),
        lambda: app.enqueue_many([send_email.s("a@b.c"), send_email.options(unique_for=value)]),
    ]
    for attempt in attempts:
        with pytest.raises(ConfigurationError) as info:
            attempt()
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith("unique_for must be a number of seconds above 0"), message
        assert message.endswith(f"not {shown}"), message
    assert app.stats() == {}


def test_unique_for_is_not_a_task_or_queue_option(app: Conveyor) -> None:
    with pytest.raises(ConfigurationError, match="unknown option 'unique_for'"):
        app.task(unique_for=60)  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="unknown option 'unique_for'"):
        app.queue("bulk", unique_for=60)  # type: ignore[call-arg]


# -- producers in separate processes ------------------------------------------

PRODUCERS = 4
ROUNDS = 25


def _produce(url: str, barrier: Any, out: Any) -> None:
    """One producer process: each round, once every producer is ready,
    enqueue the round's call with unique_for; report the id it got."""
    app = Conveyor(url)
    ids = []
    for n in range(ROUNDS):
        barrier.wait(timeout=30)
        ids.append(app.enqueue("send-email", [f"user{n}@example.com"], unique_for=3600).id)
    app.close()
    out.put(ids)


@pytest.fixture(params=["sqlite", "redis"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/race.db"
    else:
        request.getfixturevalue("default_redis")
        with isolated_redis_url(name="unique-race") as url:
            yield url


def test_producers_racing_for_a_key_get_one_job(shared_url: str) -> None:
    Conveyor(shared_url).open().close()  # the store exists before the race
    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(PRODUCERS), context.Queue()
    producers = [
        context.Process(target=_produce, args=(shared_url, barrier, out)) for _ in range(PRODUCERS)
    ]
    for process in producers:
        process.start()
    got = [out.get(timeout=60) for _ in producers]
    for process in producers:
        process.join(timeout=30)
        assert process.exitcode == 0

    app = Conveyor(shared_url)
    stored = app.jobs(limit=1000)
    app.close()
    assert len(stored) == ROUNDS
    for n in range(ROUNDS):
        assert len({ids[n] for ids in got}) == 1, f"round {n}: {[ids[n] for ids in got]}"
    assert {ids[n] for ids in got for n in range(ROUNDS)} == {job.id for job in stored}


# -- a job ended by code that did not know the lock ---------------------------


def _forget_the_end(url: str) -> None:
    """Make the lock look as if the job ended under an older conveyor, which
    ended jobs without telling their lock."""
    if url.startswith("sqlite"):
        raw = sqlite3.connect(url.removeprefix("sqlite:///"))
        raw.execute(
            "UPDATE conveyor_unique SET state = NULL, finished_at = NULL, expires_at = NULL"
        )
        raw.commit()
        raw.close()
    else:
        prefix = url.partition("prefix=")[2]
        client = redis.Redis.from_url(url.partition("?")[0])
        (lock,) = client.keys(f"{prefix}:{{default}}:unique:*")
        client.hdel(lock, "s", "e", "x")
        client.persist(lock)
        client.close()


def test_a_job_ended_without_telling_its_lock_holds_unique_for_after_its_end(
    shared_url: str, clock: FakeClock
) -> None:
    app = Conveyor(shared_url, clock=clock)
    send_email = define(app)
    first = send_email.options(unique_for=60).enqueue("a@b.c")
    assert app.broker.cancel(first.id)
    _forget_the_end(shared_url)

    clock.advance(59)
    assert send_email.options(unique_for=60).enqueue("a@b.c").id == first.id
    clock.advance(1)
    assert send_email.options(unique_for=60).enqueue("a@b.c").id != first.id
    app.close()
