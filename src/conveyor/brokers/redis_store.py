"""The Redis store: ``redis://``, ``rediss://`` (TLS), ``redis+sentinel://``, Cluster.

Every move of a job is one Lua script, ``lua/<operation>.lua``, whose header
names its KEYS, ARGV and reply; scripts run with EVALSHA and are loaded again
after a NOSCRIPT (a restarted server). ``redis_scripts`` names each script's
KEYS and ARGV (and tells the key layout); this module calls those, batches
the calls into pipelines (one round trip each) and reads the replies.

``seq`` orders ``list`` across queues: wall-clock microseconds, strictly
increasing within a process. ``list`` reads the ids of the states and queues
it filters on and sorts them here: O(jobs in those states).

A job id is unique in the whole store on one server or behind Sentinel (the
enqueue script looks in every queue for an id the caller chose; a generated
id, 96 random bits, is not looked up). In a Cluster it is unique within its
queue only: the other queues live in other slots.

``claim`` promotes the due jobs of its own queues every time, those of other
queues at most once a second per process.

No polling. An idle worker calls ``wait_and_claim``: one pipeline stamps the
server clock, blocks in BZPOPMIN on its queues' markers, and claims; Redis
runs the claim the moment a script sets a marker, with no round trip back to
the worker first. In a Cluster one BZPOPMIN cannot watch keys of several
slots, so the scripts also publish on ``P:ready:<queue>`` when they set a
marker, and one pub/sub thread per broker wakes the waiters.

Errors, on every path to Redis, are told apart in one place
(``redis_connection.store_error``), and only once one happened:
``StoreMisconfigured`` when the server refuses us for good (password, user,
permission, database, another program's key under the prefix: workers
stop), ``StoreUnavailable`` when it cannot serve us for now (workers retry).
Redis does not undo a script that fails half-way: one that meets another
program's key may leave the writes it made before (a job's HASH, a claim).

URL options: ``?prefix=NAME``; ``?cluster=1`` for Redis Cluster (name any
node); the others go to redis-py. Sentinel:
``redis+sentinel://[[user]:password@]host:port[,host:port]/service[/db]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn

import hiredis
import orjson
import redis
from redis.exceptions import NoScriptError

from conveyor.brokers import redis_scripts as scripts
from conveyor.brokers.base import (
    ENDED_STATES,
    STATES,
    AttemptError,
    Broker,
    EnqueueResult,
    JobRecord,
    Lease,
    NewJob,
    Recovered,
)
from conveyor.brokers.redis_connection import (
    REDIS_ERRORS,
    SentPipeline,
    Waker,
    connect,
    parse_url,
    store_error,
)
from conveyor.brokers.redis_scripts import (
    SOURCES,
    Command,
    QueueKeys,
    lease_token,
    pairs,
    queue_of,
    read_claim,
    record,
)
from conveyor.clock import Clock, SystemClock
from conveyor.errors import StoreMisconfigured, StoreUnavailable

if TYPE_CHECKING:
    from conveyor.brokers.redis_async import RedisAsyncStore

BATCH = 1000  # jobs per script call: a long script blocks the server for everyone
MAX_BLOCK = 5.0  # seconds one BZPOPMIN may block
REPLY_MARGIN = 10.0  # seconds a reply may come after that, as the socket timeout
QUEUES_TTL = 1.0  # seconds claim trusts this process's list of queues
Call = Callable[[Any], Any]  # one command, given the client or a pipeline

_seq_lock = threading.Lock()
_last_seq = 0


def _next_seqs(n: int) -> range:
    """``n`` fresh seq values: wall-clock microseconds, never repeated in this process."""
    global _last_seq
    with _seq_lock:
        first = max(_last_seq + 1, time.time_ns() // 1000)
        _last_seq = first + n - 1
    return range(first, first + n)


def _call(command: Command) -> Call:
    # execute_command: redis-py refuses .evalsha() in Cluster pipelines
    return lambda client: client.execute_command(*command)


def _id_token_pairs(leases: Sequence[Lease], idx: list[int]) -> list[str]:
    """id, token, id, token... of ``leases[i]`` for each i of ``idx``."""
    return [x for i in idx for x in (leases[i].job_id, leases[i].token)]


def _by_queue(leases: Sequence[Lease]) -> dict[str, list[int]]:
    """The indexes of ``leases`` by the queue their token names (a token we
    never made names none: its lease is lost)."""
    groups: dict[str, list[int]] = {}
    for i, lease in enumerate(leases):
        if (queue := queue_of(lease.token)) is not None:
            groups.setdefault(queue, []).append(i)
    return groups


class RedisBroker(Broker):
    """The broker contract as Lua scripts on Redis."""

    def __init__(self, url: str, clock: Clock) -> None:
        self.url = url
        self.clock = clock
        self.target = parse_url(url)
        self.ids_unique_across_queues = not self.target.cluster
        try:
            self._r = connect(self.target)  # a Cluster client asks a node for the slots
        except REDIS_ERRORS as exc:
            self._raise(exc)
        self._queues_key = f"{self.target.prefix}:queues"
        self._keys_cache: dict[str, QueueKeys] = {}
        self._known: frozenset[str] = frozenset()  # queue names seen in P:queues
        self._known_at = self._promoted_at = -1e9  # time.monotonic() of the last look
        self._added: frozenset[str] = frozenset()  # Cluster: queues this process added
        self._waker = Waker(self)  # Cluster only: pub/sub wakes the waiters
        self._interrupt_key = f"{self.target.prefix}:interrupt:{secrets.token_hex(8)}"
        self._interrupted = False  # the key may exist: close() deletes it
        self._stamps: set[str] = set()  # of the waits in progress (wait_and_claim)
        self._waits_lock = threading.Lock()
        self._blocked = 0  # threads inside _sleep
        self._scripts_lost = False  # a wait's reply said NOSCRIPT (see _send_wait)
        self._local = threading.local()

    @property
    def location(self) -> str:
        """The URL with any password masked."""
        return self.target.safe

    # -- plumbing --------------------------------------------------------

    def _keys(self, queue: str) -> QueueKeys:
        if (keys := self._keys_cache.get(queue)) is None:
            channel = f"{self.target.prefix}:ready:{queue}" if self.target.cluster else ""
            keys = self._keys_cache[queue] = QueueKeys.of(self.target.prefix, queue, channel)
        return keys

    def _run(self, calls: Sequence[Call]) -> list[Any]:
        """Run calls in one round trip, in order; a script the server lost is loaded again."""
        try:
            if len(calls) <= 1:
                return [self._noscript(call) for call in calls]
            pipe = self._r.pipeline(transaction=False)
            for call in calls:
                call(pipe)
            return self._settle(calls, pipe.execute(raise_on_error=False))
        except REDIS_ERRORS as exc:
            self._raise(exc)

    def _execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """``_run`` for commands given as tuples."""
        return self._run(list(map(_call, commands)))

    def _send(self, commands: Sequence[tuple[Any, ...]]) -> Callable[[], list[Any]]:
        """Send ``commands`` now; the returned function reads their replies.
        One round trip, as a pipeline, but the server runs them while this
        thread goes on (it must call the function, whatever happens). On one
        server or Sentinel they go on this thread's connection; in a Cluster,
        as a pipeline when the replies are read."""
        calls = [lambda c, command=command: c.execute_command(*command) for command in commands]
        if self.target.cluster:
            return lambda: self._run(calls)
        try:
            connection = self._client().connection
        except REDIS_ERRORS as exc:
            self._raise(exc)
        packed = [hiredis.pack_command(command) for command in commands]

        def send() -> None:
            try:
                connection.send_packed_command(packed)
            except REDIS_ERRORS as exc:
                connection.disconnect()
                self._raise(exc)

        def collect() -> list[Any]:
            replies: list[Any] = []
            try:
                for _ in commands:
                    try:
                        replies.append(connection.read_response())
                    except redis.ResponseError as exc:
                        replies.append(exc)
            except REDIS_ERRORS as exc:
                connection.disconnect()
                self._raise(exc)
            return replies

        def read() -> list[Any]:
            try:
                replies = collect()
            except StoreUnavailable:  # a connection the server had closed: as redis-py's
                send()  # retry, once more on a new one (the scripts are safe to repeat)
                replies = collect()
            return self._settle(calls, replies)

        try:
            send()
        except StoreUnavailable:
            send()
        return read

    def _settle(self, calls: Sequence[Call], replies: list[Any]) -> list[Any]:
        """The replies of ``calls`` sent together: a script the server lost
        (NOSCRIPT: it did nothing) is run again; another error is raised."""
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                replies[i] = self._noscript(calls[i])
            elif isinstance(reply, Exception):
                self._raise(reply)
        return replies

    def _error(self, exc: BaseException) -> BaseException:
        """What to raise for an error from Redis: the conveyor error it means
        (``store_error``: StoreMisconfigured or StoreUnavailable), else
        ``exc`` itself, a raw reply of the loop-read path as redis-py's
        ResponseError. Only ever called once something went wrong."""
        if (error := store_error(exc, self.target, getattr(self, "_r", None))) is not None:
            return error
        return redis.ResponseError(str(exc)) if isinstance(exc, hiredis.ReplyError) else exc

    def _raise(self, exc: BaseException) -> NoReturn:
        """Raise what ``_error`` makes of ``exc`` (chained to it, when it is another)."""
        error = self._error(exc)
        if error is exc:
            raise exc
        raise error from exc

    def _client(self) -> Any:
        """For single commands: this thread's own connection on one server or
        Sentinel (taking one from the pool for every command costs a check of
        the socket, a quarter of a round trip here); the client itself in a
        Cluster, whose commands go to different nodes."""
        if self.target.cluster:
            return self._r
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # new thread, or a forked child
            local.client = redis.Redis(
                connection_pool=self._r.connection_pool, single_connection_client=True
            )
            local.pid = os.getpid()
        return local.client

    def _noscript(self, call: Call) -> Any:
        """Run one call on this thread's connection; a script the server lost
        is loaded again. Errors are raised as ``_error`` makes them: this is
        also how the replies of ``_send`` and the loop-read calls rerun one."""
        try:
            client = self._client()
            try:
                return call(client)
            except NoScriptError:
                self._load_scripts()
                return call(client)
        except REDIS_ERRORS as exc:
            self._raise(exc)

    def _load_scripts(self) -> None:
        try:
            for source in SOURCES.values():
                self._r.script_load(source)  # on every primary of a Cluster
        except REDIS_ERRORS as exc:  # e.g. a user who may run scripts but not load them
            self._raise(exc)
        self._scripts_lost = False

    def _learn(self, members: set[str]) -> frozenset[str]:
        self._known, self._known_at = self._known | members, time.monotonic()
        return self._known

    def _per_queue(
        self, calls_for: Callable[[QueueKeys], list[Call]], queues: Sequence[str] | None = None
    ) -> dict[str, list[Any]]:
        """``calls_for(keys of a queue)`` for ``queues``, or for every queue in the
        store: one round trip, plus one for queues this process had not seen."""
        if queues is None:
            plan = {q: calls_for(self._keys(q)) for q in sorted(self._known)}
            head = [lambda c: c.smembers(self._queues_key)]
            replies = self._run(head + [call for calls in plan.values() for call in calls])
            queues, replies = sorted(self._learn(replies[0]) - plan.keys()), replies[1:]
            out = self._split(plan, replies)
        else:
            out = {}
        plan = {q: calls_for(self._keys(q)) for q in dict.fromkeys(queues)}
        return out | self._split(plan, self._run([c for cs in plan.values() for c in cs]))

    @staticmethod
    def _split(plan: dict[str, list[Call]], replies: list[Any]) -> dict[str, list[Any]]:
        out, i = {}, 0
        for queue, calls in plan.items():
            out[queue], i = replies[i : i + len(calls)], i + len(calls)
        return out

    def _each(self, command: Callable[[QueueKeys], Command], queue: str | None = None) -> list[Any]:
        """The replies of the script ``command(keys of a queue)`` builds, run on
        ``queue``, or on every queue."""
        queues = None if queue is None else [queue]
        found = self._per_queue(lambda k: [_call(command(k))], queues)
        return [reply for (reply,) in found.values()]

    # -- producing -------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        now = self.clock.now()
        seqs = _next_seqs(len(jobs))
        # created_at: whole microseconds (an integer packs in half the bytes of
        # the float). On the wall clock each job's seq is that already, so it
        # is not stored twice ('' tells the script); another clock's time is.
        made: int | str = "" if type(self.clock) is SystemClock else round(now * 1e6)
        states = ["waiting" if j.run_at is None or j.run_at <= now else "delayed" for j in jobs]
        first: dict[str, int] = {}  # id -> its first job here; later ones repeat that one
        by_queue: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            if first.setdefault(job.id, i) == i:
                by_queue.setdefault(job.queue, []).append(i)
        chunks = [
            idx[n : n + BATCH] for idx in by_queue.values() for n in range(0, len(idx), BATCH)
        ]
        store = f"{self.target.prefix}:"
        commands, queues_key = [], None if self.target.cluster else self._queues_key
        if self.target.cluster and (new := set(by_queue) - self._added):
            commands.append(("SADD", self._queues_key, *new))  # the scripts cannot
            self._added |= new
        for chunk in chunks:
            queue = jobs[chunk[0]].queue
            k = self._keys(queue)
            rows: list[str] = []
            for i in chunk:
                job = jobs[i]
                run_at = "" if job.run_at is None else repr(job.run_at)
                rows += (job.id, str(seqs[i]), job.task, job.payload, str(int(job.priority)),
                         job.options or "", run_at, states[i], "" if job.generated_id else "1")  # fmt: skip
            commands.append(
                scripts.enqueue(
                    k, store=store, queue=queue, created_at=made, rows=rows, queues=queues_key
                )
            )
        read = self._send(commands)
        try:  # while the server stores them: the records, as if every job were new
            records = [
                JobRecord(j.id, seqs[i], j.task, j.queue, states[i], int(j.priority), j.payload,
                          j.options or None, 0, 0, (made or seqs[i]) / 1e6, j.run_at)
                for i, j in enumerate(jobs)
            ]  # fmt: skip
        finally:
            replies = read()[len(commands) - len(chunks) :]
        self._learn(set(by_queue))
        results: list[Any] = [None] * len(jobs)
        for chunk, reply in zip(chunks, replies, strict=True):
            for i, item in zip(chunk, reply, strict=True):
                if item == 1:
                    results[i] = EnqueueResult(records[i], True)
                else:  # [queue, fields] of the job that holds the id
                    results[i] = EnqueueResult(record(jobs[i].id, item[0], pairs(item[1])), False)
        for i, job in enumerate(jobs):
            if results[i] is None:  # the same id earlier in this call
                results[i] = EnqueueResult(
                    dataclasses.replace(results[first[job.id]].record), False
                )
        return results

    # -- consuming -------------------------------------------------------

    def claim(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str
    ) -> list[JobRecord]:
        return self._claim([], queues, limit, lease_seconds, worker)[1]

    def complete_and_claim(
        self,
        done: Sequence[tuple[Lease, str]],
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker: str,
    ) -> tuple[list[bool], list[JobRecord]]:
        groups, commands = self._complete_commands(done)
        before = list(map(_call, commands))
        replies, claimed = self._claim(before, queues, limit, lease_seconds, worker)
        return self._outcome(len(done), groups, replies), claimed

    def send_complete_and_claim(
        self,
        done: Sequence[tuple[Lease, str]],
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker: str,
    ) -> SentPipeline | None:
        """One server or Sentinel, one queue: the complete and claim scripts
        (and, once a second, the promotion of other queues' due jobs and a
        look at the list of queues) as one pipeline whose replies the
        worker's event loop reads. A worker of several queues claims from
        them in turn, a round trip each: ``complete_and_claim``, on a thread."""
        if self.target.cluster or len(queues) != 1 or self._scripts_lost:
            return None
        groups, commands = self._complete_commands(done)
        completes, learn = len(commands), False
        if limit > 0:
            if self._promotion_due():
                commands += self._promotions(queues)
                learn = time.monotonic() - self._known_at > QUEUES_TTL
                if learn:  # for the next promotion: this one goes by what it knew
                    commands.append(("SMEMBERS", self._queues_key))
            commands.append(self._claim_command(queues[0], limit, lease_seconds, worker))

        def finish(replies: list[Any]) -> tuple[list[bool], list[JobRecord]]:
            for i, reply in enumerate(replies):
                if isinstance(reply, hiredis.ReplyError):
                    if not str(reply).startswith("NOSCRIPT"):
                        self._raise(reply)
                    # A restarted server lost the scripts (that one did
                    # nothing): load them and run it again, blocking, this once.
                    replies[i] = self._noscript(_call(commands[i]))
            if learn:
                self._learn(set(replies[-2]))
            jobs = read_claim(queues[0], replies[-1]) if limit > 0 else []
            return self._outcome(len(done), groups, replies[:completes]), jobs

        return SentPipeline(self._r.connection_pool, commands, REPLY_MARGIN, finish, self._error)

    def _claim_command(
        self, queue: str, limit: int, lease: float, worker: str, stamp: str | None = None
    ) -> tuple[Any, ...]:
        """claim.lua for ``queue``; ``stamp``: the key stamp.lua set before a
        wait that this claim follows (see wait_and_claim)."""
        now = self.clock.now()
        return scripts.claim(
            self._keys(queue), now=now, expiry=now + lease, worker=worker,
            token=lease_token(queue), limit=limit, stamp=stamp,
        )  # fmt: skip

    def _claim(
        self, before: list[Call], queues: Sequence[str], limit: int, lease: float, worker: str
    ) -> tuple[list[Any], list[JobRecord]]:
        """Run ``before``, then claim: the first queue in the same round trip, a
        later one only when the earlier ones did not fill ``limit``."""
        calls, head, jobs = list(before), None, []
        if limit > 0 and self._promotion_due():
            if time.monotonic() - self._known_at > QUEUES_TTL:
                self._learn(self._run([lambda c: c.smembers(self._queues_key)])[0])
            calls += map(_call, self._promotions(queues))
        for queue in dict.fromkeys(queues) if limit > 0 else ():
            if len(jobs) >= limit:
                break
            claim = self._claim_command(queue, limit - len(jobs), lease, worker)
            replies = self._run([*calls, _call(claim)])
            head, calls = head or replies[: len(before)], []
            jobs += read_claim(queue, replies[-1])
        return (self._run(calls)[: len(before)] if head is None else head), jobs

    def _promotion_due(self) -> bool:
        """Whether a claim should promote the due jobs of other queues too:
        once a second per process, so delayed jobs of queues no worker claims
        from still become waiting."""
        if time.monotonic() - self._promoted_at <= QUEUES_TTL:
            return False
        self._promoted_at = time.monotonic()
        return True

    def _promotions(self, queues: Sequence[str]) -> list[Command]:
        """promote.lua for the due jobs of every known queue but ``queues``."""
        now = self.clock.now()
        return [
            scripts.promote(k, due_by=now)
            for k in map(self._keys, sorted(self._known - set(queues)))
        ]

    def extend(self, leases: Sequence[Lease], lease_seconds: float) -> list[str]:
        expiry = self.clock.now() + lease_seconds
        groups = _by_queue(leases)
        commands = [
            scripts.extend(
                self._keys(queue),
                expiry=expiry,
                pairs=_id_token_pairs(leases, idx),
            )
            for queue, idx in groups.items()
        ]
        lost = {job_id for reply in self._execute(commands) for job_id in reply}
        held = {i for idx in groups.values() for i in idx}
        return [x.job_id for i, x in enumerate(leases) if i not in held or x.job_id in lost]

    def _complete_commands(
        self, done: Sequence[tuple[Lease, str]]
    ) -> tuple[list[list[int]], list[Command]]:
        """complete.lua per queue the leases name, and the indexes of ``done`` each covers."""
        now, groups = self.clock.now(), _by_queue([lease for lease, _ in done])
        commands = [
            scripts.complete(
                self._keys(queue),
                now=now,
                triples=[x for i in idx for x in (done[i][0].job_id, done[i][0].token, done[i][1])],
            )
            for queue, idx in groups.items()
        ]
        return list(groups.values()), commands

    @staticmethod
    def _outcome(n: int, groups: list[list[int]], replies: list[Any]) -> list[bool]:
        outcome = [False] * n
        for idx, reply in zip(groups, replies, strict=True):
            for i, ok in zip(idx, reply, strict=True):
                outcome[i] = ok == 1
        return outcome

    def complete(self, done: Sequence[tuple[Lease, str]]) -> list[bool]:
        groups, commands = self._complete_commands(done)
        return self._outcome(len(done), groups, self._execute(commands))

    def fail(self, lease: Lease, error: AttemptError, retry_at: float | None) -> bool:
        if (queue := queue_of(lease.token)) is None:
            return False
        now = self.clock.now()
        entry = {"type": error.type, "message": error.message, "traceback": error.traceback}
        entry_json = "," + orjson.dumps({**entry, "at": now}).decode()[1:]  # "attempt" goes first
        state = "dead" if retry_at is None else "delayed" if retry_at > now else "waiting"
        command = scripts.fail(
            self._keys(queue), now=now, job_id=lease.job_id, token=lease.token,
            error=entry_json, state=state, retry_at=retry_at,
        )  # fmt: skip
        return self._execute([command])[0] == 1

    def release(self, leases: Sequence[Lease]) -> int:
        commands = [
            scripts.release(
                self._keys(queue),
                pairs=_id_token_pairs(leases, idx),
            )
            for queue, idx in _by_queue(leases).items()
        ]
        return sum(self._execute(commands))

    def recover(self, max_stalled: int) -> list[Recovered]:
        replies = self._each(
            partial(scripts.recover, now=self.clock.now(), max_stalled=max_stalled)
        )
        found = sorted(
            (int(f[i + 2]), f[i], f[i + 1]) for f in replies for i in range(0, len(f), 3)
        )
        return [Recovered(job_id, state) for _, job_id, state in found]

    # -- controlling -----------------------------------------------------

    def cancel(self, job_id: str) -> bool:
        return 1 in self._each(partial(scripts.cancel, job_id=job_id, now=self.clock.now()))

    def retry(self, job_ids: Sequence[str] | None = None, *, queue: str | None = None) -> int:
        if job_ids is not None and not job_ids:
            return 0
        return sum(self._each(partial(scripts.retry, job_ids=job_ids or ()), queue))

    def promote(self, job_ids: Sequence[str] | None = None, *, queue: str | None = None) -> int:
        if job_ids is not None and not job_ids:
            return 0
        return sum(self._each(partial(scripts.promote, job_ids=job_ids), queue))

    def trim(
        self, queue: str, state: str, keep: int | None = None, older_than: float | None = None
    ) -> int:
        if state not in ENDED_STATES:
            raise ValueError(f"trim deletes ended jobs only, not {state!r} ones")
        keep = None if keep is None else max(keep, 0)
        command = partial(scripts.trim, state=state, keep=keep, older_than=older_than, limit=BATCH)
        total = 0
        while True:  # BATCH a call: a long script would block the server for everyone
            deleted = self._each(command, queue)[0]
            total += deleted
            if deleted < BATCH:
                return total

    # -- reading ---------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        found = self._per_queue(lambda k: [lambda c: c.hgetall(f"{k.prefix}job:{job_id}")])
        return next((record(job_id, q, h) for q, (h,) in found.items() if h), None)

    def list(
        self,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> list[JobRecord]:
        states = [s for s in STATES if state in (None, s)]
        if limit <= 0 or not states:
            return []

        # A waiting job is in the list, or in the ZSET as 12 hex digits of ord and its id.
        keys_of = {"waiting": ("waiting", "prioritized")}  # the others: one key each
        names = [n for s in states for n in keys_of.get(s, (s,))]
        calls_for = lambda k: [  # noqa: E731
            (lambda c: c.lrange(k.waiting, 0, -1))
            if name == "waiting"
            else (lambda c, key=k.prefix + name: c.zrange(key, 0, -1))
            for name in names
        ]
        found = list({  # (queue, id), each once
            (q, m[12:] if name == "prioritized" else m): None
            for q, replies in self._per_queue(calls_for, None if queue is None else [queue]).items()
            for name, members in zip(names, replies, strict=True)
            for m in members
        })  # fmt: skip
        keys = [f"{self._keys(q).prefix}job:{job_id}" for q, job_id in found]
        seqs = self._run([lambda c, key=key: c.hget(key, "q") for key in keys])
        floor = -1 if after is None else after
        ranked = sorted((int(s), n) for n, s in enumerate(seqs) if s and int(s) > floor)[:limit]
        records = self._run([lambda c, key=keys[n]: c.hgetall(key) for _, n in ranked])
        return [
            record(found[n][1], found[n][0], h)
            for (_, n), h in zip(ranked, records, strict=True)
            if h and state in (None, h["s"])
        ]

    @staticmethod
    def _ready_calls(k: QueueKeys) -> list[Call]:
        """The two counts that add up to a queue's waiting jobs."""
        return [lambda c: c.llen(k.waiting), lambda c: c.zcard(k.prioritized)]

    def counts(self) -> dict[str, dict[str, int]]:
        others = STATES[1:]
        assert STATES[0] == "waiting"
        calls_for = lambda k: [  # noqa: E731
            *self._ready_calls(k),
            *(lambda c, s=s: c.zcard(k.prefix + s) for s in others),
        ]
        found = {q: [n[0] + n[1], *n[2:]] for q, n in self._per_queue(calls_for).items()}
        return {q: dict(zip(STATES, n, strict=True)) for q, n in sorted(found.items()) if any(n)}

    def pending(self, queues: Sequence[str]) -> int:
        now = repr(self.clock.now())
        calls_for = lambda k: [  # noqa: E731
            *self._ready_calls(k),
            lambda c: c.zcard(k.active),
            lambda c: c.zcount(k.delayed, "-inf", now),
        ]
        return sum(sum(replies) for replies in self._per_queue(calls_for, queues).values())

    def _heads(self, queues: Sequence[str]) -> tuple[int, float | None]:
        """(waiting jobs, earliest run_at of a delayed job) over ``queues``."""
        calls_for = lambda k: [  # noqa: E731
            *self._ready_calls(k),
            lambda c: c.zrange(k.delayed, 0, 0, withscores=True),
        ]
        found = self._per_queue(calls_for, queues).values()
        ready = sum(a + b for a, b, _ in found)
        return ready, min((h[0][1] for _, _, h in found if h), default=None)

    def next_due(self, queues: Sequence[str]) -> float | None:
        return self._heads(queues)[1]

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        ready, due = self._heads(queues)
        if not ready:
            self._sleep(queues, self._until_due(timeout, due))

    def wait_and_claim(
        self,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker: str,
        timeout: float,
    ) -> list[JobRecord]:
        if self.target.cluster:
            return self._wait_then_claim(queues, limit, lease_seconds, worker, timeout)
        deadline = time.monotonic() + timeout
        while limit > 0 and timeout >= 0.001:
            wait = self._send_wait(queues, limit, lease_seconds, worker, timeout)
            woken_by, claimed = wait.wait()
            if woken_by == self._interrupt_key:
                return claimed
            if len(claimed) < limit and len(queues) > 1:
                more = self._claim([], queues[1:], limit - len(claimed), lease_seconds, worker)
                claimed += more[1]
            if claimed:
                return claimed
            # A stale marker (its job went to a busy worker, or it announced a
            # sooner delayed job): wait again, until the next due job.
            timeout = self._until_due(deadline - time.monotonic(), self.next_due(queues))
        return self.claim(queues, limit, lease_seconds, worker) if limit > 0 else []

    def send_wait(
        self,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker: str,
        timeout: float,
    ) -> SentPipeline | None:
        if self.target.cluster or limit <= 0:
            return None
        return self._send_wait(queues, limit, lease_seconds, worker, timeout, jobs_only=True)

    def _send_wait(
        self,
        queues: Sequence[str],
        limit: int,
        lease: float,
        worker: str,
        timeout: float,
        jobs_only: bool = False,
    ) -> SentPipeline:
        """One server or Sentinel: the idle wait, sent as one pipeline on a
        connection of its own. It stamps the server clock, blocks in BZPOPMIN
        on the queues' markers (and this broker's interrupt key), and claims
        from the first queue: the server runs the claim the moment a script
        sets a marker, with no round trip back here in between (the claim
        moves the clock it was given on by the time the wait took). The
        caller just claimed and found nothing, so a job enqueued since then
        has set its marker: no look is needed first. Its result: the key
        that woke it (None: the timeout) and the jobs claimed; or the jobs
        only."""
        if self._scripts_lost:  # a wait found them gone: load them before this one
            self._load_scripts()
        stamp = f"{self.target.prefix}:stamp:{secrets.token_hex(8)}"
        markers = [self._keys(q).marker for q in queues] + [self._interrupt_key]
        block = round(min(max(timeout, 0.001), MAX_BLOCK), 3)
        commands = [
            scripts.stamp(stamp),
            ("BZPOPMIN", *markers, block),
            self._claim_command(queues[0], limit, lease, worker, stamp),
        ]

        def finish(replies: list[Any]) -> Any:
            self._stamps.discard(stamp)
            _, popped, claim = replies
            errors = [r for r in replies if isinstance(r, hiredis.ReplyError)]
            if any(str(e).startswith("NOSCRIPT") for e in errors):
                self._scripts_lost = True  # a restarted server: the claim took nothing
            jobs = [] if isinstance(claim, hiredis.ReplyError) else read_claim(queues[0], claim)
            other = [e for e in errors if not str(e).startswith("NOSCRIPT")]
            if other and not jobs:  # jobs it claimed are the caller's all the same
                self._raise(other[0])  # the worker backs off, loudly, or stops
            woken_by = popped[0] if isinstance(popped, list) and popped else None
            return jobs if jobs_only else (woken_by, jobs)

        def failed(exc: BaseException) -> BaseException:
            self._stamps.discard(stamp)
            return self._error(exc)

        self._stamps.add(stamp)  # interrupt() deletes it: the claim then takes nothing
        return SentPipeline(self._r.connection_pool, commands, block + REPLY_MARGIN, finish, failed)

    def _wait_then_claim(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str, timeout: float
    ) -> list[JobRecord]:
        """Cluster: wake by pub/sub, then claim; again after a stale wake."""
        deadline = time.monotonic() + timeout
        while self._sleep(queues, timeout) and limit > 0:
            if claimed := self.claim(queues, limit, lease_seconds, worker):
                return claimed
            timeout = self._until_due(deadline - time.monotonic(), self.next_due(queues))
            if timeout < 0.001:
                break
        return []

    def _until_due(self, timeout: float, due: float | None) -> float:
        # Blocking is real time; the store clock only says when the next
        # delayed job is due (a test's FakeClock may stand still).
        return timeout if due is None else min(timeout, due - self.clock.now())

    def _sleep(self, queues: Sequence[str], timeout: float) -> bool:
        """Block until work may be ready in ``queues``, for up to ``timeout``
        seconds; False when interrupted. One server or Sentinel: BZPOPMIN on
        the queues' markers and this broker's interrupt key, on this thread's
        connection. Cluster: one BZPOPMIN cannot watch keys of several slots,
        so the pub/sub thread wakes the waiters."""
        if timeout < 0.001:  # BZPOPMIN 0 would block for ever
            return True
        with self._waits_lock:
            self._blocked += 1
        try:
            return self._block(queues, timeout)
        finally:
            with self._waits_lock:
                self._blocked -= 1

    def _block(self, queues: Sequence[str], timeout: float) -> bool:
        if self.target.cluster:
            channels = {self._keys(q).channel for q in queues}
            deadline = time.monotonic() + timeout

            def look() -> float | None:  # once subscribed: what happened before?
                ready, due = self._heads(queues)
                return -1.0 if ready else due

            return self._waker.wait(channels, deadline, look, self.clock)
        keys = [self._keys(q).marker for q in queues] + [self._interrupt_key]
        timeout = min(timeout, MAX_BLOCK)
        popped = self._run([lambda c: c.bzpopmin(keys, round(timeout, 3))])[0]
        return not popped or popped[0] != self._interrupt_key

    def waiting(self) -> int:
        """Threads blocked in ``_sleep``, and waits sent (``_send_wait``)
        whose replies are not read yet."""
        return self._blocked + len(self._stamps)

    def interrupt(self) -> None:
        if self.target.cluster:
            self._waker.interrupt()
        else:  # wakes the BZPOPMIN of any thread of this broker; its claim takes nothing
            stamps = list(self._stamps)
            wake = [lambda c: c.delete(*stamps)] if stamps else []
            self._interrupted = True
            self._run([*wake, lambda c: c.zadd(self._interrupt_key, {"0": 0})])

    def async_store(self) -> RedisAsyncStore:
        """The worker's door, with the loop-read complete-and-claim and wait."""
        from conveyor.brokers.redis_async import RedisAsyncStore

        return RedisAsyncStore(self)

    def close(self) -> None:
        self._waker.close()
        # The interrupt key exists only after interrupt(): else no round trip
        # (nor a wait on a host that is gone) on the way out.
        if self._interrupted:
            with contextlib.suppress(StoreUnavailable, StoreMisconfigured):
                self._run([lambda c: c.delete(self._interrupt_key)])
        self._r.close()
