"""The Redis key layout against hostile but accepted names.

The app accepts a queue name of 1-128 characters from ``A-Z a-z 0-9 _ - . :``
(no braces, no spaces), and a job id or task name of 1-255 printable
characters: ``{``, ``}``, ``:job:``, ``/``, ``%``, spaces and any script are
all fine there. The store builds keys from them (``P:{Q}:job:<id>``), splits
lease tokens (``<16 hex>:<queue>``) and ready-set members (``<12 hex
ord><id>``) back into names, and keeps the queue names in ``P:queues``. Here,
at the broker level on one server and on a Cluster, no accepted name may
address another queue's or another job's keys:

- every key under the prefix belongs to exactly one queue (``P:{Q}:...``,
  the hash tag exactly ``Q``; on the Cluster, in ``Q``'s slot), or is
  ``P:queues``;
- every job comes back from ``get`` and ``list`` as it went in;
- claiming, completing, failing, releasing and cancelling a job changes its
  own record and no other;
- ids that differ only in their hostile parts never dedup against each other,
  and an id sent twice does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
import redis

from conveyor.brokers import open_broker
from conveyor.brokers.base import AttemptError, Broker, JobRecord, Lease, NewJob, Tick
from servers import RedisCluster

QUEUES = ["a", "a:job", "a.b-c_d", "job", "waiting", "queues", ":", "a:", "ready", "Q" * 128]
KINDS = {"waiting", "prioritized", "delayed", "active", "completed", "dead", "cancelled",
         "counter", "marker", "schedules"}  # fmt: skip
HOSTILE_IDS = [
    "}:job:x", "x", "{other}", "other", "a:job:b", "b", "a", "x}:waiting", "{a:job}:job:x",
    "{a}", "{", "}", "{}", "job:", ":", "é ü 漢字", "🎉", "%s%n", "%(x)s", "a b", "/%2F/..",
    '"quoted" \\ back', "null", "[1,2]", "0", "1e3", "0000000000ff", "000000000001x",
    "x" * 255, "waiting", "ready:a",
]  # fmt: skip
TASKS = ["t", "}:job:x", "{a}", "é ü 漢字", "%s", "t" * 255]


class Store:
    """A broker on a fresh prefix, and a look at the keys under it."""

    def __init__(self, broker: Broker, prefix: str) -> None:
        self.broker, self.prefix = broker, prefix

    def scan(self) -> list[tuple[str, int]]:
        """(key, its hash slot, -1 off a Cluster) for every key under the prefix."""
        raise NotImplementedError


class OneServer(Store):
    def __init__(self, broker: Broker, prefix: str, client: redis.Redis) -> None:
        super().__init__(broker, prefix)
        self.client = client

    def scan(self) -> list[tuple[str, int]]:
        return [(key, -1) for key in self.client.scan_iter(f"{self.prefix}:*", count=1000)]


class Cluster(Store):
    def __init__(self, broker: Broker, prefix: str, cluster: RedisCluster) -> None:
        super().__init__(broker, prefix)
        self.nodes = [node.client(decode_responses=True) for node in cluster.nodes]

    def slot(self, key: str) -> int:
        return self.nodes[0].execute_command("CLUSTER", "KEYSLOT", key)

    def scan(self) -> list[tuple[str, int]]:
        return [
            (key, self.slot(key))
            for node in self.nodes  # each node holds the keys of its own slots
            for key in node.scan_iter(f"{self.prefix}:*", count=1000)
        ]


@pytest.fixture(params=["one-server", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    prefix = f"keys-{uuid.uuid4().hex[:12]}"
    if request.param == "one-server":
        request.getfixturevalue("default_redis")
        client = redis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
        broker = open_broker(f"redis://127.0.0.1:6379/0?prefix={prefix}")
        made: Store = OneServer(broker, prefix, client)
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        broker = open_broker(f"{cluster.url}&prefix={prefix}")
        made = Cluster(broker, prefix, cluster)
    try:
        yield made
    finally:
        broker.close()
        if isinstance(made, OneServer):
            keys = [key for key, _ in made.scan()]
            if keys:
                made.client.delete(*keys)
            made.client.close()
        else:
            request.getfixturevalue("redis_cluster").flushall()
            for node in made.nodes:
                node.close()


def plan() -> list[NewJob]:
    """Every hostile id in queue "a"; in every other queue, ids made of its
    name and hostile parts. Hostile task names and payloads, all priorities."""
    jobs = []
    for q in QUEUES:
        ids = HOSTILE_IDS if q == "a" else [f"{q}}}", f"{{{q}}}:waiting", f"}}:job:{q}", f"{q}é%s"]
        for n, job_id in enumerate(ids):
            payload = orjson.dumps([[job_id, q], {"k": "}:{"}]).decode()
            task = TASKS[n % len(TASKS)]
            jobs.append(NewJob(job_id[:255], task, q, payload, priority=(0, 5, -3)[n % 3]))
    return jobs


def owner(key: str, prefix: str) -> tuple[str, str]:
    """(queue, rest) of a queue's key ``P:{Q}:rest``, as Redis Cluster reads
    the hash tag: from the first '{' to the first '}' after it."""
    assert key.startswith(prefix + ":{"), key
    tag_start = key.index("{") + 1
    tag_end = key.index("}", tag_start)
    queue, rest = key[tag_start:tag_end], key[tag_end + 1 :]
    assert rest.startswith(":"), key
    return queue, rest[1:]


def check_layout(store: Store, jobs: list[NewJob]) -> None:
    ids_of: dict[str, set[str]] = {}
    for job in jobs:
        ids_of.setdefault(job.queue, set()).add(job.id)
    for key, slot in store.scan():
        if key == f"{store.prefix}:queues":
            continue
        queue, rest = owner(key, store.prefix)
        assert queue in QUEUES, key
        if rest.startswith("job:"):
            assert rest[4:] in ids_of[queue], key  # a job of this queue, by its whole id
        else:
            assert rest in KINDS, key
        if isinstance(store, Cluster):  # every key of a queue in the queue's slot
            assert slot == store.slot(f"{{{queue}}}"), (key, slot)
    assert set(store.broker.topology.client.smembers(f"{store.prefix}:queues")) == set(QUEUES)


def records(broker: Broker) -> dict[tuple[str, str], JobRecord]:
    found = broker.list(limit=10_000)
    return {(r.queue, r.id): r for r in found}


def only_changed(before: dict, after: dict, which: tuple[str, str]) -> None:
    assert after.keys() == before.keys()
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {which}, (which, changed)


def test_hostile_names_keep_to_their_own_keys(store: Store) -> None:
    broker, jobs = store.broker, plan()
    assert len({j.id for j in jobs}) == len(jobs)  # no id twice: each must be created
    results = broker.enqueue(jobs[::2])  # many jobs of a queue go as one JSON argument
    results += [broker.enqueue([job])[0] for job in jobs[1::2]]  # one, as plain arguments
    assert all(r.created for r in results), [r.record.id for r in results if not r.created]

    # Each job comes back as it went in, from get and from list.
    for job in jobs:
        got = broker.get(job.id)
        assert got is not None, job.id
        assert (got.id, got.task, got.queue, got.payload, got.priority) == (
            job.id, job.task, job.queue, job.payload, job.priority
        )  # fmt: skip
    listed = records(broker)
    assert set(listed) == {(j.queue, j.id) for j in jobs}
    check_layout(store, jobs)

    # An id sent again dedups to its own job, and to no other.
    for job in jobs:
        [again] = broker.enqueue([NewJob(job.id, "other-task", job.queue, "[[],{}]")])
        assert not again.created and again.record.id == job.id, job.id
        assert (again.record.queue, again.record.task) == (job.queue, job.task)
    assert records(broker) == listed

    # Cancel a third of the jobs: each changes its own record only.
    before = listed
    for job in jobs[::3]:
        assert broker.cancel(job.id), job.id
        after = records(broker)
        only_changed(before, after, (job.queue, job.id))
        assert after[(job.queue, job.id)].state == "cancelled"
        before = after

    # Claim the rest one at a time, then complete, fail or release each.
    released: set[tuple[str, str]] = set()
    outcomes = 0
    broker._promoted_at = time.monotonic() + 3600  # no other queue's promotion meanwhile
    for queue in QUEUES:
        while claimed := broker.claim([queue], 1, 60.0, "w"):
            [record] = claimed
            which = (record.queue, record.id)
            after = records(broker)
            only_changed(before, after, which)
            assert record.queue == queue and after[which].state == "active"
            lease, before = Lease(record.id, record.lease_token or ""), after

            if which not in released and outcomes % 3 == 2:
                assert broker.release([lease]) == 1
                released.add(which)
                expect = "waiting"
            elif outcomes % 3 == 0:
                assert broker.complete([(lease, orjson.dumps(record.id).decode())]) == [True]
                expect = "completed"
            else:
                assert broker.fail(lease, AttemptError("E", record.id), None)
                expect = "dead"
            outcomes += 1
            after = records(broker)
            only_changed(before, after, which)
            assert after[which].state == expect
            before = after

    ended = {"completed", "dead", "cancelled"}
    assert all(r.state in ended for r in before.values()), {
        k: r.state for k, r in before.items() if r.state not in ended
    }
    for job in jobs:
        got = broker.get(job.id)
        assert (got.id, got.task, got.queue, got.payload) == (
            job.id, job.task, job.queue, job.payload
        )  # fmt: skip
        if got.state == "completed":
            assert orjson.loads(got.result or "null") == job.id
    check_layout(store, jobs)


def test_ids_that_differ_only_in_hostile_parts_never_dedup(store: Store) -> None:
    broker = store.broker
    pairs = [("x", "}:job:x"), ("x", "x}:waiting"), ("other", "{other}"), ("b", "a:job:b"),
             ("a", "{a}"), ("x", "x "), ("é", "e\u0301"), ("x", "X")]  # fmt: skip
    for n, (plain, hostile) in enumerate(pairs):
        for queue in ("a", "a:job"):
            made = broker.enqueue(
                [NewJob(f"{plain}-{n}-{queue}", "t", queue, "[[],{}]"),
                 NewJob(f"{hostile}-{n}-{queue}", "t", queue, "[[],{}]")]
            )  # fmt: skip
            assert [r.created for r in made] == [True, True], (plain, hostile, queue)
    assert sum(c["waiting"] for c in broker.counts().values()) == 4 * len(pairs)


def test_the_same_id_in_two_queues_whose_names_share_a_start(store: Store) -> None:
    """On one server an id is unique in the whole store: the second enqueue
    finds the first job (in its own queue). In a Cluster it is unique within
    its queue: two jobs, each in its own slot."""
    broker = store.broker
    [first] = broker.enqueue([NewJob("{a:job}:job:x", "t", "a", "[[],{}]")])
    [second] = broker.enqueue([NewJob("{a:job}:job:x", "u", "a:job", "[[],{}]")])

    assert first.created and first.record.queue == "a"
    if broker.ids_unique_across_queues:
        assert not second.created and second.record.queue == "a"
        assert second.record.task == "t"
    else:
        assert second.created and second.record.queue == "a:job"
        assert {c: n["waiting"] for c, n in broker.counts().items()} == {"a": 1, "a:job": 1}


def test_schedule_ticks_of_hostile_queues_and_names_keep_to_their_queue(store: Store) -> None:
    """A tick's record is a field of its queue's own HASH, whatever the
    schedule's name; its job is a job of that queue."""
    broker, names = store.broker, ["}", "{a}", "}:job:x", "a:schedules", "é%s", "x" * 200]
    ticks = [
        Tick(name, 1_700_000_000, NewJob(f"periodic:{name}:{q}", "t", q, "[[],{}]"))
        for q in QUEUES
        for name in names
    ]
    assert broker.fire(ticks) == [True] * len(ticks)
    assert broker.fire(ticks) == [False] * len(ticks)
    assert broker.last_ticks([(t.job.queue, t.schedule) for t in ticks]) == [1_700_000_000] * len(
        ticks
    )
    check_layout(store, [t.job for t in ticks])


def test_unique_locks_live_in_their_queues_slot_and_expire(store: Store) -> None:
    broker = store.broker
    client = broker.topology.client
    plain = NewJob("plain", "t", "a", "[[],{}]")
    jobs = [plain]
    for n, queue in enumerate(QUEUES):
        key = HOSTILE_IDS[n]
        jobs.append(NewJob(f"u{n}", "t", queue, "[[],{}]", unique_key=key, unique_for=60.0))
    assert all(r.created for r in broker.enqueue(jobs))

    locks = {}
    for key, slot in store.scan():
        if key == f"{store.prefix}:queues":
            continue
        queue, rest = owner(key, store.prefix)
        if isinstance(store, Cluster):
            assert slot == store.slot(f"{{{queue}}}"), (key, slot)
        if rest.startswith("unique:"):
            locks[(queue, rest[len("unique:") :])] = key
    assert set(locks) == {(j.queue, j.unique_key) for j in jobs[1:]}
    assert "u" not in client.hgetall(f"{store.prefix}:{{a}}:job:plain")  # no key, no field
    first = locks[("a", HOSTILE_IDS[0])]
    assert client.hget(first, "j") == "u0" and client.ttl(first) == -1  # held while it lives

    assert broker.cancel("u0")
    assert 60 <= client.ttl(first) <= 61  # unique_for, and a second to spare
