"""A real workload on Redis Cluster and on Redis behind Sentinel.

Through the public API only: 200 jobs over three queues with priorities and
delays, drained by an in-process burst ``Worker`` serving the queues in strict
order with one slot, so the order the jobs ran in is the order the store
handed them out. On the cluster, also: a producer that knows nothing of the
queues finds any job by id, every key of one queue lives in one hash slot
(so each of the store's scripts touches one slot), and different queues
spread over different slots.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from conveyor import Conveyor
from conveyor.worker import Worker
from helpers import jobs_reach_an_idle_worker
from servers import RedisCluster, RedisSentinel

pytestmark = pytest.mark.slow

# Strict order for the worker. The names are chosen so that their hash slots
# (15844, 10322 and 50) fall on the three different nodes.
QUEUES = ["topo-urgent", "topo-default", "topo-bulk"]
JOBS = 200
DELAY = 0.3


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> Iterator[RedisCluster]:
    redis_cluster.flushall()
    yield redis_cluster
    redis_cluster.flushall()


@pytest.fixture
def sentinel(redis_sentinel: RedisSentinel) -> Iterator[RedisSentinel]:
    redis_sentinel.flushall()
    yield redis_sentinel
    redis_sentinel.flushall()


def plan(n: int) -> tuple[str, int, float | None]:
    """Queue, priority and delay of job ``n``."""
    return QUEUES[n % 3], n % 4, DELAY if n % 5 == 0 else None


def run_workload(url: str) -> tuple[Conveyor, list[int]]:
    """Enqueue, wait until the delays are due, drain with a burst worker;
    return the app and the order the jobs ran in."""
    app = Conveyor(url)
    ran: list[int] = []

    @app.task(name="square")
    async def square(n: int) -> int:
        ran.append(n)
        return n * n

    jobs = []
    for n in range(JOBS):
        queue, priority, delay = plan(n)
        jobs.append(
            square.options(queue=queue, priority=priority, delay=delay, job_id=f"topo-{n}").enqueue(
                n
            )
        )
    states = {job.state for job in jobs}
    assert states == {"waiting", "delayed"}, states
    last_due = max(job.record.run_at or 0.0 for job in jobs)
    time.sleep(max(0.0, last_due + 0.05 - app.clock.now()))  # every delay due: a fixed order

    worker = Worker(app, QUEUES, concurrency=1, burst=True, lease=10)
    assert worker.run(install_signals=False) == 0

    assert sorted(ran) == list(range(JOBS)), "every job ran exactly once"
    for n, job in enumerate(jobs):
        job.refresh()
        assert job.state == "completed", job
        assert job.attempts == 1
        assert job.result(timeout=0) == n * n
    expected = sorted(range(JOBS), key=lambda n: (QUEUES.index(plan(n)[0]), -plan(n)[1], n))
    assert ran == expected, "strict queue order, then priority, then enqueue order"
    stats = app.stats()
    for queue in QUEUES:
        assert stats[queue]["completed"] == sum(1 for n in range(JOBS) if plan(n)[0] == queue)
        assert sum(stats[queue].values()) == stats[queue]["completed"], stats
    return app, ran


def test_workload_on_redis_cluster(cluster: RedisCluster) -> None:
    app, _ = run_workload(cluster.url)
    app.close()

    producer = Conveyor(cluster.url)  # no tasks, no queues: ids alone
    try:
        for n in (0, 1, 2, 199):
            job = producer.get_job(f"topo-{n}")
            assert job is not None, f"topo-{n} not found by id on the cluster"
            assert job.queue == plan(n)[0]
            assert job.state == "completed"
            assert job.result(timeout=0) == n * n
        assert producer.get_job("topo-nope") is None
    finally:
        producer.close()

    slots = queue_slots(cluster)
    for queue, found in slots.items():
        assert len(found) == 1, f"the keys of {queue} spread over slots {found}"
    distinct = {next(iter(found)) for found in slots.values()}
    assert len(distinct) == len(QUEUES), f"queues share a slot: {slots}"
    client = cluster.client()
    try:
        nodes = {client.nodes_manager.get_node_from_slot(slot).port for slot in distinct}
    finally:
        client.close()
    assert len(nodes) == len(QUEUES), f"the queues' slots {slots} are on nodes {nodes}"


def queue_slots(cluster: RedisCluster) -> dict[str, set[int]]:
    """The hash slots (CLUSTER KEYSLOT) of the keys that name each queue."""
    clients = cluster.node_clients()
    try:
        keys = [key.decode() for client in clients for key in client.scan_iter(count=1000)]
        assert keys, "the store left no keys on the cluster"
        slots: dict[str, set[int]] = {queue: set() for queue in QUEUES}
        for key in keys:
            owners = [queue for queue in QUEUES if queue in key]
            if len(owners) == 1:
                slots[owners[0]].add(int(clients[0].execute_command("CLUSTER KEYSLOT", key)))
        for queue, found in slots.items():
            assert found, f"no key names queue {queue}: {sorted(keys)[:20]}"
        return slots
    finally:
        for client in clients:
            client.close()


def test_workload_on_redis_behind_sentinel(sentinel: RedisSentinel) -> None:
    assert sentinel.url.startswith("redis+sentinel://127.0.0.1:")
    app, _ = run_workload(sentinel.url)
    app.close()
    master = sentinel.master.client()
    try:
        assert master.dbsize() > 0, "the jobs are on the master the sentinel names"
    finally:
        master.close()


@pytest.mark.parametrize("topology", ["sentinel", "cluster"])
def test_an_idle_worker_takes_each_job_as_it_arrives(topology: str, request) -> None:
    """Behind Sentinel the worker's event loop reads its idle wait from a
    connection to the master; on a Cluster a thread waits on pub/sub."""
    server = request.getfixturevalue(topology)
    app = Conveyor(server.url)
    worker = jobs_reach_an_idle_worker(app, concurrency=2)
    assert (worker.processed, worker.failed) == (6, 2)
    app.close()
