"""The Redis store: ``redis://``, ``rediss://`` (TLS), ``redis+sentinel://``, Cluster.

This module holds ``RedisBroker``, the contract's operations. Every move of a
job is one Lua script, ``lua/<operation>.lua``, whose header names its KEYS,
ARGV and reply; scripts run with EVALSHA and are loaded again after a
NOSCRIPT (a restarted server). The operations batch the script calls into
pipelines (one round trip each) and read the replies. Around them:

- ``redis_scripts``: the key layout, and one function per script naming its
  KEYS and ARGV in the order of its header;
- ``redis_topology``: one server (or Sentinel) or a Cluster, chosen once from
  the URL: the client, running calls, and every place a Cluster differs;
- ``redis_waits``: the idle waits and wake-ups (no polling);
- ``redis_connection``: URLs, clients, what an error from Redis means,
  and pipelines an event loop reads (``SentPipeline``);
- ``redis_async``: the worker's door, reading those pipelines on its loop.

``seq`` orders ``list`` across queues: wall-clock microseconds, strictly
increasing within a process. ``list`` reads the ids of the states and queues
it filters on and sorts them here: O(jobs in those states).

A job id is unique in the whole store on one server or behind Sentinel, and
within its queue in a Cluster (``redis_topology``). The enqueue script looks
for an id the caller chose; a generated id (96 random bits) is not looked up.

``claim`` promotes the due jobs of its own queues every time, those of other
queues at most once a second per process.

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

import builtins
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import hiredis

from conveyor.brokers import redis_scripts as scripts
from conveyor.brokers.base import (
    ENDED_STATES,
    NO_CONTROLS,
    STATES,
    WAITING,
    AttemptError,
    Broker,
    Controls,
    EnqueueResult,
    JobRecord,
    Lease,
    NewJob,
    Recovered,
    Tick,
    purge_states,
)
from conveyor.brokers.redis_connection import Pipeline, parse_url
from conveyor.brokers.redis_opening import Opening
from conveyor.brokers.redis_scripts import (
    Command,
    QueueKeys,
    lease_pairs,
    lease_token,
    leases_by_queue,
    queue_of,
    read_claim,
    read_held,
    record,
    result_triples,
)
from conveyor.brokers.redis_topology import REPLY_MARGIN, Call, as_call, open_topology
from conveyor.brokers.redis_waits import open_waits
from conveyor.clock import Clock, SystemClock

if TYPE_CHECKING:
    from conveyor.brokers.redis_async import RedisAsyncStore

BATCH = 1000  # jobs per script call: a long script blocks the server for everyone
QUEUES_TTL = 1.0  # seconds claim trusts this process's list of queues
SAME_TIME_US = 1000  # a clock this close to a seq, in microseconds, tells the same time

_seq_lock = threading.Lock()
_last_seq = 0


def _next_seqs(n: int) -> range:
    """``n`` fresh seq values: wall-clock microseconds, never repeated in this process."""
    global _last_seq
    with _seq_lock:
        first = max(_last_seq + 1, time.time_ns() // 1000)
        _last_seq = first + n - 1
    return range(first, first + n)


def _seqs_and_made(n: int, now: float) -> tuple[range, int | None]:
    """Seqs for ``n`` new jobs, and their created_at in whole microseconds
    (an integer packs in half the bytes of the float). A seq is wall-clock
    microseconds too: when ``now`` is within a millisecond of the first seq
    (the wall clock), each job's seq tells its created_at already and it is
    not stored twice (None); another clock's time is stored."""
    seqs = _next_seqs(n)
    now_us = round(now * 1e6)
    return seqs, None if abs(now_us - seqs.start) <= SAME_TIME_US else now_us


def _chunked(by_queue: dict[str, list[int]]) -> list[list[int]]:
    """Each queue's indexes in pieces of at most BATCH: one script each (a
    long script would block the server for everyone)."""
    return [idx[n : n + BATCH] for idx in by_queue.values() for n in range(0, len(idx), BATCH)]


class RedisBroker(Broker):
    """The broker contract as Lua scripts on Redis."""

    def __init__(self, url: str, clock: Clock) -> None:
        self.url = url
        self.clock = clock
        self.target = parse_url(url)
        # One server (or Sentinel) or a Cluster: where they differ, the code
        # below asks the topology (redis_topology's docstring lists how).
        self.topology = open_topology(self.target)
        self.ids_unique_across_queues = self.topology.ids_unique_across_queues
        self._keys = self.topology.keys
        self._run = self.topology.run
        self._execute = self.topology.execute
        self._known: frozenset[str] = frozenset()  # queue names seen in P:queues
        self._known_at = self._promoted_at = -1e9  # time.monotonic() of the last look
        # claim_limited.lua's ARGV tail per queue, for the Controls it was made from
        self._args_of: tuple[Controls, dict[str, tuple[Any, ...]]] = (NO_CONTROLS, {})
        self._swept: set[str] = set()  # queues claimed from under those Controls
        # Under controls, claims then take the server's clock (claim_limited.lua).
        self._wall_clock = isinstance(clock, SystemClock)
        # The waits know of the operations only what they are given here.
        self._waits = open_waits(
            self.topology,
            clock,
            claim=self.claim,
            heads=self._heads,
            claim_command=self._claim_command,
        )

    @property
    def location(self) -> str:
        """The URL with any password masked."""
        return self.target.safe

    # -- one call per queue ------------------------------------------------

    def _learn(self, members: set[str]) -> frozenset[str]:
        """Note queue names seen in ``P:queues`` (or enqueued to here)."""
        self._known, self._known_at = self._known | members, time.monotonic()
        return self._known

    def _per_queue(
        self, calls_for: Callable[[QueueKeys], list[Call]], queues: Sequence[str] | None = None
    ) -> dict[str, list[Any]]:
        """``calls_for(keys of a queue)`` for ``queues``, or for every queue in the
        store: one round trip, plus one for queues this process had not seen."""
        if queues is None:
            plan = {q: calls_for(self._keys(q)) for q in sorted(self._known)}
            head = [lambda c: c.smembers(self.topology.queues_key)]
            replies = self._run(head + [c for calls in plan.values() for c in calls])
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
        found = self._per_queue(lambda k: [as_call(command(k))], queues)
        return [reply for (reply,) in found.values()]

    # -- producing -------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        now = self.clock.now()
        seqs, made = _seqs_and_made(len(jobs), now)
        states = ["waiting" if j.run_at is None or j.run_at <= now else "delayed" for j in jobs]
        first: dict[str, int] = {}  # id -> its first job here; later ones repeat that one
        by_queue: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            if first.setdefault(job.id, i) == i:
                by_queue.setdefault(job.queue, []).append(i)
        chunks = _chunked(by_queue)
        store = f"{self.target.prefix}:"
        commands, queues_key = self.topology.register(by_queue)
        for chunk in chunks:
            queue = jobs[chunk[0]].queue
            commands.append(
                scripts.enqueue(
                    self._keys(queue), store=store, queue=queue, created_at=made,
                    jobs=jobs, seqs=seqs, states=states, which=chunk, queues=queues_key,
                    now=now,
                )
            )  # fmt: skip
        read = self.topology.send(commands)
        try:  # while the server stores them: the records, as if every job were new
            records = [
                JobRecord(j.id, seqs[i], j.task, j.queue, states[i], int(j.priority), j.payload,
                          j.options or None, 0, 0, (made or seqs[i]) / 1e6, j.run_at,
                          rate_key=j.rate_key)
                for i, j in enumerate(jobs)
            ]  # fmt: skip
        finally:
            replies = read()[len(commands) - len(chunks) :]
        self.topology.registered(by_queue)
        self._learn(set(by_queue))
        results: list[Any] = [None] * len(jobs)
        for chunk, reply in zip(chunks, replies, strict=True):
            for i, item in zip(chunk, reply, strict=True):
                if item == 1:
                    results[i] = EnqueueResult(records[i], True)
                else:  # the job that holds the id or the key
                    results[i] = EnqueueResult(read_held(jobs[i], item), False)
        for i, job in enumerate(jobs):
            if results[i] is None:  # the same id earlier in this call
                results[i] = EnqueueResult(
                    dataclasses.replace(results[first[job.id]].record), False
                )
        return results

    def fire(self, ticks: Sequence[Tick]) -> list[bool]:
        if not ticks:
            return []
        seqs, made = _seqs_and_made(len(ticks), self.clock.now())
        by_queue: dict[str, list[int]] = {}
        for i, tick in enumerate(ticks):
            by_queue.setdefault(tick.job.queue, []).append(i)
        chunks = _chunked(by_queue)
        commands, queues_key = self.topology.register(by_queue)
        head = len(commands)
        for chunk in chunks:  # one script per queue (and BATCH ticks), one round trip
            queue = ticks[chunk[0]].job.queue
            commands.append(
                scripts.fire(
                    self._keys(queue), store=f"{self.target.prefix}:", queue=queue,
                    created_at=made, ticks=[ticks[i] for i in chunk],
                    seqs=[seqs[i] for i in chunk], queues=queues_key,
                )
            )  # fmt: skip
        replies = self._execute(commands)[head:]
        self.topology.registered(by_queue)
        self._learn(set(by_queue))
        fired = [False] * len(ticks)
        for chunk, reply in zip(chunks, replies, strict=True):
            for i, item in zip(chunk, reply, strict=True):
                fired[i] = item == 1
        return fired

    def last_ticks(self, schedules: Sequence[tuple[str, str]]) -> list[int | None]:
        by_queue: dict[str, list[int]] = {}
        for i, (queue, _) in enumerate(schedules):
            by_queue.setdefault(queue, []).append(i)
        commands = [
            ("HMGET", self._keys(queue).schedules, *(schedules[i][1] for i in idx))
            for queue, idx in by_queue.items()
        ]
        found: list[int | None] = [None] * len(schedules)
        for idx, reply in zip(by_queue.values(), self._execute(commands), strict=True):
            for i, value in zip(idx, reply, strict=True):
                found[i] = None if value is None else int(value)
        return found

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
        before = list(map(as_call, commands))
        replies, claimed = self._claim(before, queues, limit, lease_seconds, worker)
        return self._outcome(len(done), groups, replies), claimed

    def plan_complete_and_claim(
        self,
        done: Sequence[tuple[Lease, str]],
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker: str,
    ) -> Pipeline | None:
        """One server or Sentinel, one queue: the complete and claim scripts
        (and, once a second, the promotion of other queues' due jobs and a
        look at the list of queues) as one pipeline for the worker's event
        loop to send and read. None where it cannot be one: a worker of
        several queues claims from them in turn, a round trip each
        (``complete_and_claim``, on a thread)."""
        if not self.topology.loop_pipelines or len(queues) != 1 or self.topology.scripts_lost:
            return None
        groups, commands = self._complete_commands(done)
        completes, learn = len(commands), False
        if limit > 0:
            if self._promotion_due():
                commands += self._promotions(queues)
                learn = time.monotonic() - self._known_at > QUEUES_TTL
                if learn:  # for the next promotion: this one goes by what it knew
                    commands.append(("SMEMBERS", self.topology.queues_key))
            commands.append(self._claim_command(queues[0], limit, lease_seconds, worker))

        def finish(replies: list[Any]) -> tuple[list[bool], list[JobRecord]]:
            for i, reply in enumerate(replies):
                if isinstance(reply, hiredis.ReplyError):
                    if not str(reply).startswith("NOSCRIPT"):
                        self.topology.raise_(reply)
                    # A restarted server lost the scripts (that one did
                    # nothing): load them and run it again, blocking, this once.
                    replies[i] = self.topology.noscript(as_call(commands[i]))
            if learn:
                self._learn(set(replies[-2]))
            jobs = read_claim(queues[0], replies[-1]) if limit > 0 else []
            return self._outcome(len(done), groups, replies[:completes]), jobs

        return Pipeline(commands, REPLY_MARGIN, finish, self.topology.error)

    def _claim_command(
        self, queue: str, limit: int, lease: float, worker: str, stamp: str | None = None
    ) -> Command:
        """claim.lua for ``queue`` (claim_limited.lua when controls apply to
        it); ``stamp``: the key stamp.lua set before a wait that this claim
        follows (redis_waits). The first claim of a queue under each new
        ``Controls`` (and this process's first) sweeps: jobs held for a task
        limit no longer declared go back to the line (claim_limited.lua)."""
        now = self.clock.now()
        controls = self._control_args(queue)
        sweep = queue not in self._swept
        if sweep:
            self._swept.add(queue)
        return scripts.claim(
            self._keys(queue), now=now, expiry=now + lease, worker=worker,
            token=lease_token(queue), limit=limit, stamp=stamp, controls=controls, sweep=sweep,
            wall_clock=self._wall_clock,
        )  # fmt: skip

    def _control_args(self, queue: str) -> tuple[Any, ...]:
        """claim_limited.lua's ARGV tail for ``queue`` under ``self.controls``
        (empty: none apply), made once per queue for each ``Controls`` the app
        sets (it replaces the whole object)."""
        controls = self.controls
        made_for, args = self._args_of
        if made_for is not controls:
            args = {}
            self._args_of = (controls, args)
            self._swept.clear()
        if controls is NO_CONTROLS:
            return ()
        if (found := args.get(queue)) is None:
            found = args[queue] = scripts.control_args(controls, queue)
        return found

    def _claim(
        self, before: list[Call], queues: Sequence[str], limit: int, lease: float, worker: str
    ) -> tuple[list[Any], list[JobRecord]]:
        """Run ``before``, then claim: the first queue in the same round trip, a
        later one only when the earlier ones did not fill ``limit``."""
        calls, head = list(before), None
        jobs: list[JobRecord] = []
        if limit > 0 and self._promotion_due():
            if time.monotonic() - self._known_at > QUEUES_TTL:
                self._learn(self._run([lambda c: c.smembers(self.topology.queues_key)])[0])
            calls += map(as_call, self._promotions(queues))
        for queue in dict.fromkeys(queues) if limit > 0 else ():
            if len(jobs) >= limit:
                break
            claim = self._claim_command(queue, limit - len(jobs), lease, worker)
            replies = self._run([*calls, as_call(claim)])
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
        groups = leases_by_queue(leases)
        commands = [
            scripts.extend(self._keys(queue), expiry=expiry, pairs=lease_pairs(leases, idx))
            for queue, idx in groups.items()
        ]
        lost = {job_id for reply in self._execute(commands) for job_id in reply}
        held = {i for idx in groups.values() for i in idx}
        return [x.job_id for i, x in enumerate(leases) if i not in held or x.job_id in lost]

    def _complete_commands(
        self, done: Sequence[tuple[Lease, str]]
    ) -> tuple[list[list[int]], list[Command]]:
        """complete.lua per queue the leases name, and the indexes of ``done`` each covers."""
        now, groups = self.clock.now(), leases_by_queue([lease for lease, _ in done])
        caps = self.controls.concurrency
        commands = [
            scripts.complete(
                self._keys(queue), now=now, triples=result_triples(done, idx), capped=queue in caps
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
        state = "dead" if retry_at is None else "delayed" if retry_at > now else "waiting"
        command = scripts.fail(
            self._keys(queue), now=now, job_id=lease.job_id, token=lease.token,
            error=error, state=state, retry_at=retry_at,
        )  # fmt: skip
        return bool(self._execute([command])[0] == 1)

    def release(self, leases: Sequence[Lease]) -> int:
        commands = [
            scripts.release(self._keys(queue), pairs=lease_pairs(leases, idx))
            for queue, idx in leases_by_queue(leases).items()
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
        now = self.clock.now()
        return sum(self._each(partial(scripts.retry, now=now, job_ids=job_ids or ()), queue))

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
        return self._in_batches(
            partial(scripts.trim, state=state, keep=keep, older_than=older_than, limit=BATCH), queue
        )

    def _in_batches(self, command: Callable[[QueueKeys], Command], queue: str) -> int:
        """Run a script that deletes at most BATCH jobs a call (a long script
        would block the server for everyone) on ``queue`` until a call takes
        fewer; how many were deleted. Its reply: the count, or [taken, deleted]."""
        total = 0
        while True:
            reply = self._each(command, queue)[0]
            taken, deleted = reply if isinstance(reply, list) else (reply, reply)
            total += int(deleted)
            if taken < BATCH:
                return total

    def pause(self, queue: str) -> bool:
        k = self._keys(queue)
        # Registered too, so paused() finds a queue that never held a job.
        newly, _ = self._run(
            [
                lambda c: c.set(k.paused, 1, nx=True),
                lambda c: c.sadd(self.topology.queues_key, queue),
            ]
        )
        self._learn({queue})
        return bool(newly)

    def resume(self, queue: str) -> bool:
        return bool(self._each(scripts.resume, queue)[0])

    def paused(self) -> set[str]:
        found = self._per_queue(lambda k: [lambda c: c.exists(k.paused)])
        return {queue for queue, (paused,) in found.items() if paused}

    def purge(self, queue: str, states: Sequence[str]) -> int:
        total = 0
        for state in purge_states(states):
            if state == WAITING:
                command = partial(scripts.purge, limit=BATCH)
            else:  # a ZSET of ids, as trim deletes from: keep none
                command = partial(
                    scripts.trim, state=state, keep=0, older_than=None, limit=BATCH,
                    unended=state not in ENDED_STATES,
                )  # fmt: skip
            total += self._in_batches(command, queue)
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

        # A waiting job is in the list, or in the ZSET as 12 hex digits of ord
        # and its id, or held in a bucket line (a ZSET like it) of a bucket
        # named in 'buckets'.
        keys_of = {"waiting": ("waiting", "prioritized", "buckets")}  # the others: one key each
        names = [n for s in states for n in keys_of.get(s, (s,))]

        def calls_for(k: QueueKeys) -> builtins.list[Call]:
            return [
                as_call(("LRANGE", k.waiting, 0, -1))
                if name == "waiting"
                else as_call(("ZRANGE", k.prefix + name, 0, -1))
                for name in names
            ]

        lines = self._per_queue(calls_for, None if queue is None else [queue])
        held = [  # (queue, the ZSET of a bucket's held jobs)
            (q, f"{self._keys(q).prefix}rl-ready:{bucket}")
            for q, replies in lines.items()
            for name, members in zip(names, replies, strict=True)
            if name == "buckets"
            for bucket in members
        ]
        in_buckets = self._run([as_call(("ZRANGE", key, 0, -1)) for _, key in held]) if held else []
        found = list({  # (queue, id), each once
            **{
                (q, m[12:] if name == "prioritized" else m): None
                for q, replies in lines.items()
                for name, members in zip(names, replies, strict=True)
                if name != "buckets"
                for m in members
            },
            **{(q, m[12:]): None for (q, _), ms in zip(held, in_buckets, strict=True) for m in ms},
        })  # fmt: skip
        keys = [f"{self._keys(q).prefix}job:{job_id}" for q, job_id in found]
        seqs = self._run([as_call(("HGET", key, "q")) for key in keys])
        floor = -1 if after is None else after
        ranked = sorted((int(s), n) for n, s in enumerate(seqs) if s and int(s) > floor)[:limit]
        records = self._run([_hgetall(keys[n]) for _, n in ranked])
        return [
            record(found[n][1], found[n][0], h)
            for (_, n), h in zip(ranked, records, strict=True)
            if h and state in (None, h["s"])
        ]

    @staticmethod
    def _waiting_calls(k: QueueKeys) -> builtins.list[Call]:
        """The three counts that add up to a queue's waiting jobs: its ready
        line's two keys, and the jobs held in its bucket lines."""
        return [
            lambda c: c.llen(k.waiting),
            lambda c: c.zcard(k.prioritized),
            lambda c: c.get(k.held),
        ]

    @staticmethod
    def _waiting(llen: int, zcard: int, held: str | None) -> int:
        return llen + zcard + int(held or 0)

    def counts(self) -> dict[str, dict[str, int]]:
        others = STATES[1:]
        assert STATES[0] == "waiting"
        calls_for = lambda k: [  # noqa: E731
            *self._waiting_calls(k),
            *(lambda c, s=s: c.zcard(k.prefix + s) for s in others),
        ]
        found = {q: [self._waiting(*n[:3]), *n[3:]] for q, n in self._per_queue(calls_for).items()}
        return {q: dict(zip(STATES, n, strict=True)) for q, n in sorted(found.items()) if any(n)}

    def pending(self, queues: Sequence[str]) -> int:
        now = repr(self.clock.now())
        calls_for = lambda k: [  # noqa: E731
            lambda c: c.zcard(k.active),
            lambda c: c.exists(k.paused),
            *self._waiting_calls(k),
            lambda c: c.zcount(k.delayed, "-inf", now),
        ]
        found = self._per_queue(calls_for, queues).values()
        return sum(
            active + (0 if paused else self._waiting(*ready) + due)
            for active, paused, *ready, due in found
        )

    def _heads(self, queues: Sequence[str]) -> tuple[int, float | None]:
        """(jobs claimable now, the earliest time a job that is not may
        become so) over ``queues``, paused ones left out (they hand out
        nothing): the earliest run_at of a delayed job, or when work the
        controls hold back opens (``Opening``). Queues without controls cost
        the same four reads as ever."""
        now = self.clock.now()
        marks = not self.topology.wakes_by_pubsub
        openings = {q: Opening.of(self.controls, q, now, marks) for q in dict.fromkeys(queues)}
        plan = {q: self._head_calls(self._keys(q), o) for q, o in openings.items()}
        found = self._split(plan, self._run([c for calls in plan.values() for c in calls]))
        ready, due = 0, None
        for q, (paused, llen, zcard, delayed, *held) in found.items():
            if paused:
                continue
            line, (opens, at) = llen + zcard, openings[q].read(llen + zcard, held)
            ready += max(line, 1) if opens else 0  # open buckets count too
            for t in (delayed[0][1] if delayed else None, at):
                if t is not None and (due is None or t < due):
                    due = t
        return ready, due

    @staticmethod
    def _head_calls(k: QueueKeys, opening: Opening) -> builtins.list[Call]:
        return [
            lambda c: c.exists(k.paused),
            lambda c: c.llen(k.waiting),
            lambda c: c.zcard(k.prioritized),
            lambda c: c.zrange(k.delayed, 0, 0, withscores=True),
            *opening.calls(k),
        ]

    def next_due(self, queues: Sequence[str]) -> float | None:
        return self._heads(queues)[1]

    # -- waiting (redis_waits) ---------------------------------------------

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        self._waits.wait_for_work(queues, timeout)

    def wait_and_claim(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str, timeout: float
    ) -> builtins.list[JobRecord]:
        return self._waits.wait_and_claim(queues, limit, lease_seconds, worker, timeout)

    def plan_wait(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str, timeout: float
    ) -> Pipeline | None:
        """The idle wait and its claim as a pipeline for the worker's event
        loop to send and read (one server or Sentinel); None where it cannot
        be one. Once planned it counts as waiting (``waiting()``): send it,
        or end it with its ``failed``."""
        return self._waits.plan_wait(queues, limit, lease_seconds, worker, timeout)

    def waiting(self) -> int:
        return self._waits.waiting()

    def interrupt(self) -> None:
        self._waits.interrupt()

    def async_store(self) -> RedisAsyncStore:
        """The worker's door, with the loop-read complete-and-claim and wait."""
        from conveyor.brokers.redis_async import RedisAsyncStore

        return RedisAsyncStore(self)

    def close(self) -> None:
        self._waits.close()
        self.topology.close()


def _hgetall(key: str) -> Call:
    """HGETALL through redis-py, whose reply for it is a dict, not a flat list."""
    return lambda c: c.hgetall(key)
