"""Fixtures for the broker conformance suite: every test runs once per store.

A store is done when this suite passes on it. The suite speaks only the
contract in ``conveyor.brokers.base``; it never looks inside a store.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import orjson
import pytest

from conveyor.brokers import open_broker
from conveyor.brokers.base import AttemptError, Broker, JobRecord, Lease, NewJob
from conveyor.clock import FakeClock

_REDIS_PREFIXES: set[str] = set()


def _fresh_prefix() -> str:
    prefix = f"conveyor-test-{uuid.uuid4().hex[:12]}"
    _REDIS_PREFIXES.add(prefix)
    return prefix


def _redis(request: pytest.FixtureRequest, tmp: Path) -> str:
    """A fresh key prefix on the shared redis-server (its keys go at the end of the run)."""
    request.getfixturevalue("default_redis")  # fails clearly when Redis is not running
    return f"redis://127.0.0.1:6379/0?prefix={_fresh_prefix()}"


def _redis_cluster(request: pytest.FixtureRequest, tmp: Path) -> str:
    """A fresh key prefix on the session's private three-node Redis Cluster."""
    return f"{request.getfixturevalue('redis_cluster').url}&prefix={_fresh_prefix()}"


#: Every store the suite runs against: test id -> URL for a fresh, empty store
#: (given the test's request, for server fixtures, and a per-test temporary
#: folder). Adding a store is one line here. A store that cannot be opened
#: errors the test; it is never skipped.
STORES: dict[str, Callable[[pytest.FixtureRequest, Path], str]] = {
    "memory": lambda request, tmp: "memory://",
    "sqlite": lambda request, tmp: "sqlite:///" + str(tmp / "conformance.db"),
    "redis": _redis,
    "redis-cluster": _redis_cluster,
}


@pytest.fixture(scope="session", autouse=True)
def _drop_redis_test_keys() -> Iterator[None]:
    """Delete the keys of every prefix ``_redis`` handed out on the shared
    server, and only those (the cluster is private and goes with the session)."""
    yield
    if _REDIS_PREFIXES:
        import redis

        client = redis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
        keys = [
            key
            for key in client.scan_iter("conveyor-test-*", count=1000)
            if key.partition(":")[0] in _REDIS_PREFIXES
        ]
        for start in range(0, len(keys), 500):
            client.unlink(*keys[start : start + 500])
        client.close()


START = 1_700_000_000.0  # the FakeClock's time when each test begins
LEASE = 30.0

_ids = itertools.count(1)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture(params=list(STORES), ids=list(STORES))
def broker(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path) -> Iterator[Broker]:
    store = open_broker(STORES[request.param](request, tmp_path), clock)
    try:
        yield store
    finally:
        store.close()


def new_job(
    job_id: str | None = None,
    *,
    queue: str = "default",
    task: str = "tasks.add",
    payload: str = '{"args":[1,2]}',
    priority: int = 0,
    run_at: float | None = None,
    options: str | None = None,
    rate_key: str | None = None,
) -> NewJob:
    """A NewJob with sensible defaults and a unique id unless one is given."""
    return NewJob(
        id=job_id or f"job-{next(_ids)}",
        task=task,
        queue=queue,
        payload=payload,
        priority=priority,
        run_at=run_at,
        options=options,
        rate_key=rate_key,
    )


def add(broker: Broker, *jobs: NewJob) -> list[JobRecord]:
    """Enqueue and return the stored records (asserting each was created)."""
    results = broker.enqueue(jobs)
    assert all(r.created for r in results)
    return [r.record for r in results]


def add_one(broker: Broker, job_id: str | None = None, **fields) -> JobRecord:
    return add(broker, new_job(job_id, **fields))[0]


def claim(
    broker: Broker,
    queues: Sequence[str] = ("default",),
    limit: int = 100,
    lease: float = LEASE,
    worker: str = "w1",
) -> list[JobRecord]:
    return broker.claim(queues, limit, lease, worker)


def claim_one(broker: Broker, queue: str = "default", worker: str = "w1") -> JobRecord:
    jobs = claim(broker, [queue], limit=1, worker=worker)
    assert len(jobs) == 1, f"expected one ready job in {queue!r}, got {len(jobs)}"
    return jobs[0]


def lease_of(job: JobRecord) -> Lease:
    assert job.lease_token, "a claimed job carries a lease token"
    return Lease(job.id, job.lease_token)


def boom(message: str = "boom", type_: str = "ValueError") -> AttemptError:
    return AttemptError(type_, message, f"Traceback...\n{type_}: {message}")


def errors_of(broker: Broker, job_id: str) -> list[dict]:
    job = broker.get(job_id)
    assert job is not None
    return orjson.loads(job.errors)


def state_of(broker: Broker, job_id: str) -> str | None:
    job = broker.get(job_id)
    return None if job is None else job.state


def ids(jobs: Sequence[JobRecord]) -> list[str]:
    return [j.id for j in jobs]


def make_state(broker: Broker, clock: FakeClock, state: str, **fields) -> JobRecord:
    """A fresh job brought into ``state`` through the contract's own moves."""
    if state == "delayed":
        return add_one(broker, run_at=clock.now() + 3600, **fields)
    job = add_one(broker, **fields)
    if state == "waiting":
        return job
    if state == "cancelled":
        assert broker.cancel(job.id)
        return broker.get(job.id)  # type: ignore[return-value]
    queue = job.queue
    claimed = claim(broker, [queue], limit=1_000_000)
    running = next(j for j in claimed if j.id == job.id)
    # Put back whatever else we claimed so only ``job`` changes state.
    broker.release([lease_of(j) for j in claimed if j.id != job.id])
    if state == "completed":
        assert broker.complete([(lease_of(running), '"ok"')]) == [True]
    elif state == "dead":
        assert broker.fail(lease_of(running), boom(), None)
    elif state != "active":
        raise AssertionError(f"unknown state {state!r}")
    result = broker.get(job.id)
    assert result is not None and result.state == state
    return result
