"""Tasks that misbehave cost only their own job, never an innocent one.

In-process workers on memory, SQLite and Redis (``store_app``): a task that
raises ``SystemExit``, ``KeyboardInterrupt`` or any ``BaseException``, whose
error cannot be printed, whose backoff is broken, whose result is too big or
whose thread never returns. Each hostile job runs beside healthy jobs claimed
in the same batch, which must all complete. (A task that kills its whole
process is in ``test_e2e_worker.py``: it needs a real process.)
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest

from conveyor import Conveyor
from conveyor.worker import EXIT_OK, EXIT_STUCK_THREADS, Worker


class Fatal(BaseException):
    """A BaseException subclass of the user's own."""


def _raise(kind: str) -> None:
    if kind == "SystemExit":
        sys.exit(3)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt
    if kind == "GeneratorExit":
        raise GeneratorExit
    if kind == "Fatal":
        raise Fatal("the user's own BaseException")
    if kind == "CancelledError":  # raised by the task itself, not by a cancel
        raise asyncio.CancelledError("the task's own")
    if kind == "StopIteration":
        raise StopIteration("done?")
    raise AssertionError(kind)


KINDS = ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "Fatal", "CancelledError",
         "StopIteration"]  # fmt: skip


def run(app: Conveyor, **options) -> Worker:
    options.setdefault("concurrency", 10)
    worker = Worker(app, burst=True, **options)
    assert worker.run(install_signals=False) == EXIT_OK
    return worker


def healthy_jobs(app: Conveyor, n: int = 5) -> list:
    """Jobs that are still running when the hostile one raises (same batch)."""

    @app.task(name="healthy")
    async def healthy(i: int) -> int:
        await asyncio.sleep(0.05)
        return i

    @app.task(name="healthy-sync")
    def healthy_sync(i: int) -> int:
        time.sleep(0.05)
        return i

    return [healthy.enqueue(i) if i % 2 else healthy_sync.enqueue(i) for i in range(n)]


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_base_exception_fails_its_job_and_the_worker_goes_on(store_app, kind, flavour):
    app = store_app

    if flavour == "async":

        @app.task(name="hostile", attempts=2, backoff="fixed", backoff_delay=0)
        async def hostile(kind: str) -> None:
            await asyncio.sleep(0.01)
            _raise(kind)

    else:

        @app.task(name="hostile", attempts=2, backoff="fixed", backoff_delay=0)
        def hostile(kind: str) -> None:
            time.sleep(0.01)
            _raise(kind)

    bad = hostile.enqueue(kind)
    good = healthy_jobs(app)
    worker = run(app)
    assert [job.result(timeout=1) for job in good] == list(range(5))
    bad.refresh()
    # An async function that raises StopIteration raises RuntimeError to its caller.
    expected = "RuntimeError" if (kind, flavour) == ("StopIteration", "async") else kind
    assert (bad.state, bad.attempts) == ("dead", 2)
    assert [e["type"] for e in bad.errors] == [expected, expected]
    assert all(expected in e["traceback"] for e in bad.errors)
    assert (worker.processed, worker.failed) == (5, 2)


class Unprintable(ValueError):
    def __str__(self) -> str:
        raise RuntimeError("str() of this error fails")


class BadRepr(Exception):
    def __str__(self) -> str:
        raise Fatal("even str() raises a BaseException")


@pytest.mark.parametrize("error", [Unprintable, BadRepr])
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_an_error_that_cannot_be_printed_is_recorded_with_a_fallback(store_app, error, flavour):
    app = store_app
    if flavour == "async":

        @app.task(name="bad", attempts=1)
        async def bad() -> None:
            raise error("x")

    else:

        @app.task(name="bad", attempts=1)
        def bad() -> None:
            raise error("x")

    job = bad.enqueue()
    good = healthy_jobs(app)
    run(app)
    assert [j.result(timeout=1) for j in good] == list(range(5))
    job.refresh()
    assert (job.state, job.attempts) == ("dead", 1)  # one run: not orphaned, not re-run
    (entry,) = job.errors
    assert entry["type"] == error.__name__
    assert entry["message"] == f"<unprintable {error.__name__}>"
    assert error.__name__ in entry["traceback"]


def _backoffs():
    def raises(n: int) -> float:
        raise ZeroDivisionError("my backoff is broken")

    return {
        "raises": (raises, "ZeroDivisionError: my backoff is broken"),
        "a string": (lambda n: "5", "returned '5' for run 1"),
        "None": (lambda n: None, "returned None for run 1"),
        "nan": (lambda n: float("nan"), "returned nan for run 1"),
        "inf": (lambda n: float("inf"), "returned inf for run 1"),
        "negative": (lambda n: -1, "returned -1 for run 1"),
        "True": (lambda n: True, "returned True for run 1"),
    }


@pytest.mark.parametrize("name", list(_backoffs()))
def test_a_broken_backoff_ends_the_job_with_its_own_error_and_why(store_app, name):
    app = store_app
    backoff, why = _backoffs()[name]

    @app.task(name="flaky", attempts=5, backoff=backoff)
    def flaky() -> None:
        raise ValueError("the real error")

    job = flaky.enqueue()
    good = healthy_jobs(app)
    run(app)
    assert [j.result(timeout=1) for j in good] == list(range(5))
    job.refresh()
    assert (job.state, job.attempts) == ("dead", 1)
    (entry,) = job.errors
    assert entry["type"] == "ValueError"
    assert entry["message"].startswith("the real error [not retried: the backoff failed: ")
    assert why in entry["message"]
    assert "ValueError: the real error" in entry["traceback"]
    assert "The backoff failed" in entry["traceback"]


def test_huge_and_undecodable_error_messages_are_stored_cut_and_valid(store_app):
    app = store_app

    @app.task(name="loud", attempts=1)
    def loud(kind: str) -> None:
        if kind == "huge":
            raise ValueError("x" * 5_000_000)
        raise ValueError("lone surrogate: \ud800 and more")

    huge, odd = loud.enqueue("huge"), loud.enqueue("surrogate")
    run(app)
    for job in (huge, odd):
        job.refresh()
        assert job.state == "dead"
    message = huge.errors[0]["message"]
    assert len(message) < 5_000 and message.endswith("characters cut ...]")
    assert odd.errors[0]["message"] == "lone surrogate: \\ud800 and more"


def test_a_result_over_the_limit_fails_the_job_clearly(tmp_path):
    app = Conveyor(f"sqlite:///{tmp_path}/r.db", max_result=1000)

    @app.task(name="big", attempts=2, backoff="fixed", backoff_delay=0)
    def big(n: int) -> str:
        return "é" * n  # two bytes a character: the limit counts bytes

    @app.task(name="ok")
    def ok() -> str:
        return "é" * 400

    too_big, fits = big.enqueue(600), ok.enqueue()
    run(app)
    assert fits.result(timeout=1) == "é" * 400
    too_big.refresh()
    assert (too_big.state, too_big.attempts) == ("dead", 2)
    assert too_big.errors[0]["type"] == "ResultTooLarge"
    assert "1,202 bytes as JSON, more than the 1,000-byte limit" in too_big.errors[0]["message"]
    assert too_big.record.result is None


def test_results_that_json_cannot_carry_fail_the_job_and_a_tasks_own_payload_error_is_its_own(
    store_app,
):
    app = store_app

    @app.task(name="returns-a-set", attempts=1)
    def returns_a_set() -> set:
        return {1, 2}

    @app.task(name="enqueues-badly", attempts=1)
    def enqueues_badly() -> None:
        app.enqueue("x", args=[object()])  # PayloadError of the task's own

    a, b = returns_a_set.enqueue(), enqueues_badly.enqueue()
    run(app)
    a.refresh()
    b.refresh()
    assert a.errors[0]["type"] == "ResultNotSerializable"
    assert b.errors[0]["type"] == "PayloadError"


def test_stuck_sync_threads_are_capped_and_the_worker_stops_for_a_restart(tmp_path):
    """Threads of sync jobs past their timeout cannot be killed: beyond the
    cap the worker claims nothing more, releases what it holds and exits 3."""
    app = Conveyor(f"sqlite:///{tmp_path}/stuck.db")
    stuck = threading.Event()

    @app.task(name="hang", timeout=0.2, attempts=1)
    def hang(i: int) -> None:
        stuck.wait(30)  # a C-level wait: the timeout's interrupt cannot end it

    jobs = [hang.enqueue(i) for i in range(8)]
    worker = Worker(app, concurrency=2, burst=True, max_abandoned_threads=2, grace=0.1)
    before = threading.active_count()
    try:
        assert worker.run(install_signals=False) == EXIT_STUCK_THREADS
        threads_left = threading.active_count() - before
        states = [job.refresh().state for job in jobs]
    finally:
        stuck.set()
    # -c 2: two stuck threads are within the cap, the next two go beyond it
    assert threads_left <= 4
    assert states.count("dead") == 4
    assert states.count("waiting") == 4  # never started: nothing lost
    assert all(job.errors[0]["type"] == "JobTimeout" for job in jobs if job.state == "dead")
