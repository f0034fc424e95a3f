"""The Redis store's keys, and each Lua script's KEYS and ARGV named in one place.

Every move of a job is one Lua script, ``lua/<name>.lua``, whose header
names its KEYS, ARGV and reply. Here is one function per script, taking
named parameters and listing KEYS and ARGV in the order of that header, with
its comments: the operations (``redis_store``) call these, never build a
script's arguments themselves. Each returns the EVALSHA command as a tuple,
sent as it is (``execute_command``: redis-py refuses ``.evalsha()`` in Cluster
pipelines) or packed for a pipeline read by an event loop.

Keys (``P`` is ``?prefix=``, default ``conveyor``). Every key of queue ``Q``
carries the hash tag ``{Q}``, so a script touches one Cluster slot and queues
spread over the shards:

- ``P:{Q}:job:<id>``: one HASH per job, holding only the fields that are set.
  Field names are one letter, because every job pays for them (16 of the
  239 bytes of a small waiting job): ``t`` task, ``d`` data (payload),
  ``s`` state, ``q`` seq, ``n`` ord, ``c`` created_at, ``p`` priority,
  ``o`` options, ``r`` run_at, ``a`` attempts (tries), ``k`` stalls,
  ``b`` started_at, ``e`` finished_at, ``f`` lease token (the fence),
  ``l`` lease expiry, ``w`` worker, ``v`` result (value), ``x`` errors,
  ``l`` lease expiry, ``w`` worker, ``v`` result (value), ``x`` errors,
  ``u`` unique key (only on jobs enqueued with ``unique_for``), ``g``
  rate_key (its bucket's key, when the producer gave one).
  The scripts name them through constants (``lua/_shared.lua``). ``seq`` and
  ``created_at`` are whole microseconds, integers Redis packs in half the
  bytes of a float; ``created_at`` is left out when the job's ``seq`` already
  tells it, to within a millisecond (the wall clock's case: ``enqueue`` in
  ``redis_store``).
- Ready jobs (``lua/_shared.lua`` tells the whole rule): ``P:{Q}:waiting``, a
  LIST of the ids of new priority-0 jobs in enqueue order (a few bytes a job:
  most jobs), and ``P:{Q}:prioritized``, a ZSET scored ``-priority`` whose
  members are the job's ``ord`` in 12 hex digits, then its id: jobs of other
  priorities, and every job ready again (due, released, recovered, retried).
  ``ord`` is taken from ``P:{Q}:counter`` at enqueue, so equal priorities
  leave in enqueue order whatever the number of producers, and a released
  job gets its place back.
- ``P:{Q}:delayed`` by run_at (promoted inside ``claim``), ``P:{Q}:active`` by
  lease expiry (``recover`` is one range query), ``P:{Q}:completed|dead|
  cancelled`` by finished_at (``trim``).
- ``P:{Q}:marker``: a ZSET holding one member while the queue may have ready
  work nobody claimed.
- ``P:{Q}:paused``: a STRING that exists while the queue is paused (``claim``
  hands out none of its jobs).
- ``P:{Q}:schedules``: a HASH, schedule name -> the last tick claimed for
  it (whole seconds since the epoch), for the schedules whose jobs go to
  ``Q`` (``fire``).
- ``P:{Q}:unique:<key>``: a HASH per unique key held in the queue, the lock
  of ``options(unique_for=...)`` (its fields: ``lua/_shared.lua``); no TTL
  while its job has not ended, then one of ``unique_for`` (+1 s).
- Held-back work (``lua/_limits.lua`` tells the whole rule), only where
  the app declared controls: ``P:{Q}:starts``, a ZSET log of the queue's
  starts in its rate window; ``P:{Q}:capped``, a STRING set while the
  queue's concurrency cap is full with work behind (a completion then wakes
  a waiter); jobs of a rate-limited task whose bucket is full, moved out of
  the ready line into ``P:{Q}:rl-ready:<bucket>`` (same members as
  ``prioritized``), with ``P:{Q}:rl-log:<bucket>`` its starts,
  ``P:{Q}:buckets`` (ZSET: buckets holding jobs, scored by when each next
  has a slot) and ``P:{Q}:held`` (STRING: how many jobs those lines hold).
- ``P:queues``: SET of queue names, so ``get``, ``counts``, ``cancel``... can
  pipeline one call per queue.

A lease token is ``<16 hex>:<queue>``, so a ``Lease`` tells which queue's keys
to use.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Sequence
from importlib.resources import files
from typing import Any, NamedTuple

import orjson

from conveyor.brokers.base import (
    AttemptError,
    Controls,
    JobRecord,
    Lease,
    NewJob,
    Tick,
    held_record,
)

NAMES = ["enqueue", "claim", "claim_limited", "extend", "complete", "fail", "release",
         "recover", "cancel", "retry", "promote", "trim", "purge", "resume", "stamp",
         "fire"]  # fmt: skip
#: The scripts that read or move held-back work: they start with _limits.lua too.
HOLDING = {"claim_limited", "cancel", "purge"}
LUA = files("conveyor.brokers").joinpath("lua")
SHARED = LUA.joinpath("_shared.lua").read_text()  # helpers every script starts with
LIMITS = LUA.joinpath("_limits.lua").read_text()
SOURCES = {
    name: SHARED + (LIMITS if name in HOLDING else "") + LUA.joinpath(f"{name}.lua").read_text()
    for name in NAMES
}
SHAS = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in SOURCES.items()}

#: One Redis command: its name and arguments, as ``execute_command`` takes them.
Command = tuple[Any, ...]


class QueueKeys(NamedTuple):
    """The keys of one queue (the module docstring tells what each holds)."""

    prefix: str  # of every key of the queue, 'P:{Q}:'; a job is prefix + "job:" + id
    waiting: str  # LIST: new jobs of priority 0
    prioritized: str  # ZSET: every other ready job
    delayed: str
    active: str
    completed: str
    dead: str
    cancelled: str
    counter: str
    marker: str  # ZSET: set while work may be ready; idle workers BZPOPMIN it
    channel: str  # pub/sub, not a key: where scripts PUBLISH new work; '' = none

    @property
    def paused(self) -> str:  # STRING: exists while the queue is paused
        return self.prefix + "paused"

    @property
    def schedules(self) -> str:  # HASH: schedule name -> last tick claimed
        return self.prefix + "schedules"

    # Held-back work (the module docstring): keys only controlled queues use.

    @property
    def starts(self) -> str:  # ZSET: the queue's starts in its rate window
        return self.prefix + "starts"

    @property
    def buckets(self) -> str:  # ZSET: buckets holding jobs, by when each has a slot
        return self.prefix + "buckets"

    @property
    def held(self) -> str:  # STRING: jobs the bucket lines hold
        return self.prefix + "held"

    @property
    def capped(self) -> str:  # STRING: the concurrency cap is full, work behind
        return self.prefix + "capped"

    @classmethod
    def of(cls, store_prefix: str, queue: str, channel: str) -> QueueKeys:
        """The keys of ``queue`` under ``?prefix=`` ``store_prefix``."""
        p = f"{store_prefix}:{{{queue}}}:"
        return cls(
            p, p + "waiting", p + "prioritized", p + "delayed", p + "active", p + "completed",
            p + "dead", p + "cancelled", p + "counter", p + "marker", channel,
        )  # fmt: skip


# -- one function per script: KEYS, then ARGV, in the order of its header ------


def enqueue(
    k: QueueKeys,
    *,
    store: str,
    queue: str,
    created_at: int | None,
    jobs: Sequence[NewJob],
    seqs: Sequence[int],
    states: Sequence[str],
    which: Sequence[int],
    queues: str | None = None,
    now: float = 0.0,
) -> Command:
    """enqueue.lua: store new jobs of one queue, in order, each id at most once.

    The jobs are ``jobs[i]`` for each i of ``which``, with seq ``seqs[i]`` and
    state ``states[i]``; ``created_at`` None: each job's seq tells it.
    ``queues``: the SET of queue names, when the script may add this queue to
    it and look for a chosen id in every queue (one server or Sentinel).
    ``now``: the time a unique key's hold is judged by (jobs with a
    ``unique_key`` only). Replies one item per job: 1 when stored, else
    what ``read_held`` reads."""
    rows: list[Any] = []
    uniques: list[Any] = []
    for n, i in enumerate(which, 1):  # ARGV[5]'s 10 strings per job
        job = jobs[i]
        if job.unique_key is not None:
            uniques.append((n, job.unique_key, job.unique_for))
        rows += (
            job.id, str(seqs[i]), job.task, job.payload, str(int(job.priority)),
            job.options or "",  # '' = none
            "" if job.run_at is None else repr(job.run_at),  # '' = none
            states[i],  # 'waiting' or 'delayed'
            "" if job.generated_id else "1",  # '1' when the caller chose the id
            job.rate_key or "",  # '' = none (JSON text is never empty)
        )  # fmt: skip
    keys = [
        k.waiting,  # KEYS[1] waiting  LIST
        k.prioritized,  # KEYS[2] prioritized  ZSET
        k.delayed,  # KEYS[3] delayed  ZSET  score run_at, member id
        k.counter,  # KEYS[4] counter  STRING  the queue's FIFO counter
    ]
    if queues:
        keys.append(queues)  # KEYS[5] (optional) queues  SET of every queue name
    return (
        "EVALSHA", SHAS["enqueue"], len(keys), *keys,
        store,  # ARGV[1] store prefix 'P:'
        queue,  # ARGV[2] queue
        # ARGV[3] created_at in whole microseconds; '' = each job's seq tells it
        "" if created_at is None else created_at,
        k.channel,  # ARGV[4] channel to PUBLISH on when work appears ('' = none)
        # ARGV[5] the jobs as one JSON array of 10 strings per job; a single
        # job as those 10 strings in ARGV[5..14] instead (no JSON to encode)
        *(rows if len(rows) == 10 else (orjson.dumps(rows),)),
        # then, when some carry a unique key: now, and a JSON array of
        # [job number (1-based), key, unique_for]
        *((repr(now), orjson.dumps(uniques)) if uniques else ()),
    )  # fmt: skip


def claim(
    k: QueueKeys,
    *,
    now: float,
    expiry: float,
    worker: str,
    token: str,
    limit: int,
    stamp: str | None = None,
    controls: tuple[Any, ...] = (),
    sweep: bool = False,
    wall_clock: bool = False,
) -> Command:
    """claim.lua: promote the queue's due delayed jobs, then lease up to
    ``limit`` (>= 1) of its ready jobs in claim order. ``stamp``: the key
    stamp.lua set before a wait this claim is queued behind (``now`` and
    ``expiry`` are then moved on by the time since; the key gone, the wait
    was interrupted and nothing is claimed). ``controls``: ``control_args``
    for the queue; given, claim_limited.lua runs instead and holds jobs back
    by them (empty: claim.lua, which knows of no controls and pays nothing for
    them). ``sweep``: claim_limited.lua, which first puts the jobs held for a
    task without a limit in ``controls`` back in line. ``wall_clock``: the
    caller's clock is the wall clock, so claim_limited.lua takes the server's
    (the same for every worker, read when the claim runs). Replies pairs, in
    claim order: id, the job's HGETALL (``read_claim`` reads them)."""
    if sweep and not controls:
        controls = ("", "", "")  # no limit at all
    keys: tuple[str, ...] = (
        k.waiting,  # KEYS[1] waiting  LIST
        k.prioritized,  # KEYS[2] prioritized  ZSET
        k.delayed,  # KEYS[3] delayed  ZSET  score run_at
        k.active,  # KEYS[4] active  ZSET  score lease expiry
    )
    if controls:
        flags = ("s" if sweep else "") + ("w" if wall_clock else "")
        controls = (flags, *controls)
        keys += (
            k.starts,  # KEYS[5] starts  ZSET  score start time
            k.buckets,  # KEYS[6] buckets  ZSET  score when the bucket next has a slot
            k.held,  # KEYS[7] held  STRING
            k.capped,  # KEYS[8] capped  STRING
        )
    if stamp:
        keys += (stamp,)  # KEYS[5] (KEYS[9] with controls, optional) stamp  STRING
    return (
        "EVALSHA", SHAS["claim_limited" if controls else "claim"], len(keys), *keys,
        k.prefix,  # ARGV[1] key prefix of the queue
        repr(now),  # ARGV[2] now
        repr(expiry),  # ARGV[3] lease expiry
        worker,  # ARGV[4] worker
        token,  # ARGV[5] lease token
        limit,  # ARGV[6] limit (>= 1)
        k.channel,  # ARGV[7] channel to PUBLISH on when jobs are left for others
        *controls,  # ARGV[8..] (claim_limited.lua only) flags, then the controls
    )  # fmt: skip


def control_args(controls: Controls, queue: str) -> tuple[Any, ...]:
    """claim_limited.lua's ARGV[9..] for ``queue``: its rate's limit and
    period ('' = none), its concurrency cap ('' = none), then task, limit,
    period of every task rate (a job of any task may be in any queue). Empty
    when none applies: the queue's claims run claim.lua."""
    if not controls.touch(queue):
        return ()
    rate = controls.queue_rates.get(queue)
    cap = controls.concurrency.get(queue)
    tasks = controls.task_rates
    return (
        "" if rate is None else rate.limit,  # ARGV[9] the queue's rate: limit
        "" if rate is None else repr(float(rate.period)),  # ARGV[10] its period
        "" if cap is None else cap,  # ARGV[11] the queue's concurrency cap
        # ARGV[12..] task, limit, period of each task rate
        *(x for task, r in tasks.items() for x in (task, r.limit, repr(float(r.period)))),
    )


def extend(k: QueueKeys, *, expiry: float, pairs: Sequence[str]) -> Command:
    """extend.lua: push back the expiry of held leases of one queue.
    ``pairs``: id, token, id, token... Replies the ids whose lease was lost."""
    return (
        "EVALSHA", SHAS["extend"], 1,
        k.active,  # KEYS[1] active  ZSET  score lease expiry, member id
        k.prefix,  # ARGV[1] key prefix of the queue
        repr(expiry),  # ARGV[2] new expiry
        *pairs,  # ARGV[3..] pairs: id, token
    )  # fmt: skip


def complete(k: QueueKeys, *, now: float, triples: Sequence[str], capped: bool = False) -> Command:
    """complete.lua: held jobs of one queue end as completed with their
    result. ``triples``: id, token, result JSON... ``capped``: the queue has
    a concurrency cap (the slots freed may wake a waiter). Replies one 1
    (completed) or 0 (lease lost, nothing changed) per job."""
    return (
        "EVALSHA", SHAS["complete"], 2,
        k.active,  # KEYS[1] active  ZSET  score lease expiry, member id
        k.completed,  # KEYS[2] completed  ZSET  score finished_at, member id
        k.prefix,  # ARGV[1] key prefix of the queue
        repr(now),  # ARGV[2] now
        "1" if capped else "",  # ARGV[3] '1': the queue has a concurrency cap
        k.channel,  # ARGV[4] channel to PUBLISH on when work appears ('' = none)
        *triples,  # ARGV[5..] triples: id, token, result
    )  # fmt: skip


def fail(
    k: QueueKeys,
    *,
    now: float,
    job_id: str,
    token: str,
    error: AttemptError,
    state: str,
    retry_at: float | None,
) -> Command:
    """fail.lua: record a failed run of a held job, then retry it later or
    send it dead. ``state``: 'delayed', 'waiting' or 'dead'. Replies 1, or 0
    when the lease was lost (nothing changed)."""
    entry = {"type": error.type, "message": error.message, "traceback": error.traceback}
    # Without its opening brace: the script puts "attempt" first.
    entry_json = "," + orjson.dumps({**entry, "at": now}).decode()[1:]
    return (
        "EVALSHA", SHAS["fail"], 4,
        k.prioritized,  # KEYS[1] prioritized  ZSET
        k.delayed,  # KEYS[2] delayed  ZSET  score run_at
        k.active,  # KEYS[3] active  ZSET  score lease expiry
        k.dead,  # KEYS[4] dead  ZSET  score finished_at
        k.prefix,  # ARGV[1] key prefix of the queue
        repr(now),  # ARGV[2] now
        job_id,  # ARGV[3] id
        token,  # ARGV[4] token
        entry_json,  # ARGV[5] the error as JSON without its first field
        state,  # ARGV[6] next state
        "" if retry_at is None else repr(retry_at),  # ARGV[7] retry_at ('' when dead)
        k.channel,  # ARGV[8] channel to PUBLISH on when work appears ('' = none)
    )  # fmt: skip


def release(k: QueueKeys, *, pairs: Sequence[str]) -> Command:
    """release.lua: held jobs of one queue go back to waiting, in their old
    place, without spending an attempt. ``pairs``: id, token... Replies how
    many were released."""
    return (
        "EVALSHA", SHAS["release"], 2,
        k.prioritized,  # KEYS[1] prioritized  ZSET
        k.active,  # KEYS[2] active  ZSET  score lease expiry
        k.prefix,  # ARGV[1] key prefix of the queue
        k.channel,  # ARGV[2] channel to PUBLISH on when work appears ('' = none)
        *pairs,  # ARGV[3..] pairs: id, token
    )  # fmt: skip


def recover(k: QueueKeys, *, now: float, max_stalled: int) -> Command:
    """recover.lua: active jobs of one queue whose lease expired. Replies
    triples: id, new state ('waiting' or 'dead'), seq."""
    return (
        "EVALSHA", SHAS["recover"], 3,
        k.prioritized,  # KEYS[1] prioritized  ZSET
        k.active,  # KEYS[2] active  ZSET  score lease expiry
        k.dead,  # KEYS[3] dead  ZSET  score finished_at
        k.prefix,  # ARGV[1] key prefix of the queue
        repr(now),  # ARGV[2] now
        max_stalled,  # ARGV[3] max_stalled
        k.channel,  # ARGV[4] channel to PUBLISH on when work appears ('' = none)
    )  # fmt: skip


def cancel(k: QueueKeys, *, job_id: str, now: float) -> Command:
    """cancel.lua: a waiting or delayed job of one queue ends as cancelled.
    Replies 1, or 0 when the job is not here or has started."""
    return (
        "EVALSHA", SHAS["cancel"], 4,
        k.waiting,  # KEYS[1] waiting  LIST
        k.prioritized,  # KEYS[2] prioritized  ZSET
        k.delayed,  # KEYS[3] delayed  ZSET  score run_at
        k.cancelled,  # KEYS[4] cancelled  ZSET  score finished_at
        k.prefix,  # ARGV[1] key prefix of the queue
        job_id,  # ARGV[2] id
        repr(now),  # ARGV[3] now
        k.channel,  # ARGV[4] channel ('' = none)
    )  # fmt: skip


def retry(k: QueueKeys, *, now: float, job_ids: Sequence[str]) -> Command:
    """retry.lua: dead (or, by id, cancelled) jobs of one queue start over in
    waiting; a unique key still held for one at ``now`` is its again.
    ``job_ids`` empty: every dead job of the queue. Replies how many moved."""
    return (
        "EVALSHA", SHAS["retry"], 3,
        k.prioritized,  # KEYS[1] prioritized  ZSET
        k.dead,  # KEYS[2] dead  ZSET  score finished_at
        k.cancelled,  # KEYS[3] cancelled  ZSET  score finished_at
        k.prefix,  # ARGV[1] key prefix of the queue
        k.channel,  # ARGV[2] channel to PUBLISH on when work appears ('' = none)
        repr(now),  # ARGV[3] now
        *job_ids,  # ARGV[4..] job ids; none means every dead job of the queue
    )  # fmt: skip


def promote(
    k: QueueKeys, *, due_by: float | None = None, job_ids: Sequence[str] | None = None
) -> Command:
    """promote.lua: delayed jobs of one queue become waiting now: those due
    by ``due_by`` when it is given, else those of ``job_ids``, else all of
    them. Replies how many moved."""
    if due_by is not None:
        which: tuple[Any, ...] = ("due", repr(due_by))  # run_at <= ARGV[4]
    elif job_ids is not None:
        which = ("ids", *job_ids)  # the ids in ARGV[4..]
    else:
        which = ("all",)
    return (
        "EVALSHA", SHAS["promote"], 2,
        k.prioritized,  # KEYS[1] prioritized  ZSET
        k.delayed,  # KEYS[2] delayed  ZSET  score run_at, member id
        k.prefix,  # ARGV[1] key prefix of the queue
        k.channel,  # ARGV[2] channel to PUBLISH on when work appears ('' = none)
        *which,  # ARGV[3] 'due', 'all' or 'ids', then ARGV[4..]
    )  # fmt: skip


def trim(
    k: QueueKeys,
    *,
    state: str,
    keep: int | None,
    older_than: float | None,
    limit: int,
    unended: bool = False,
) -> Command:
    """trim.lua: delete ended jobs of one queue in ``state``: all but the
    ``keep`` most recently finished, and all finished before ``older_than``,
    at most ``limit`` of them. ``unended``: the state's jobs have not ended
    (purge of delayed jobs), so their unique keys are freed. Replies how
    many were deleted."""
    return (
        "EVALSHA", SHAS["trim"], 1,
        k.prefix + state,  # KEYS[1] the state's ZSET  score finished_at, member id
        k.prefix,  # ARGV[1] key prefix of the queue
        "" if keep is None else keep,  # ARGV[2] keep ('' = no limit)
        "" if older_than is None else repr(older_than),  # ARGV[3] older_than ('' = none)
        limit,  # ARGV[4] limit: most jobs deleted by this call
        *(("1",) if unended else ()),  # ARGV[5] (optional) '1': free their unique keys
    )  # fmt: skip


def purge(k: QueueKeys, *, limit: int) -> Command:
    """purge.lua: delete up to ``limit`` of one queue's waiting jobs (those
    held in bucket lines too). Replies
    [ids taken off its ready keys (call again while that is ``limit``), jobs
    deleted]."""
    return (
        "EVALSHA", SHAS["purge"], 2,
        k.waiting,  # KEYS[1] waiting  LIST
        k.prioritized,  # KEYS[2] prioritized  ZSET
        k.prefix,  # ARGV[1] key prefix of the queue
        limit,  # ARGV[2] limit: most jobs deleted by this call
    )  # fmt: skip


def resume(k: QueueKeys) -> Command:
    """resume.lua: take the queue's paused mark away and wake an idle worker.
    Replies 1, or 0 when it was not paused."""
    return (
        "EVALSHA", SHAS["resume"], 1,
        k.paused,  # KEYS[1] paused  STRING
        k.prefix,  # ARGV[1] key prefix of the queue
        k.channel,  # ARGV[2] channel to PUBLISH on ('' = none)
    )  # fmt: skip


def fire(
    k: QueueKeys,
    *,
    store: str,
    queue: str,
    created_at: int | None,
    ticks: Sequence[Tick],
    seqs: Sequence[int],
    queues: str | None = None,
) -> Command:
    """fire.lua: claim schedule ticks of one queue, enqueueing the job of
    each tick later than its schedule's last one. ``seqs``: one per tick;
    ``created_at`` None: each job's seq tells it. ``queues``: the SET of
    queue names (one server or Sentinel). Replies one 1 (fired) or 0 per tick."""
    rows: list[Any] = []
    for tick, seq in zip(ticks, seqs, strict=True):  # ARGV[5..]'s 9 strings per tick
        job = tick.job
        rows += (
            tick.schedule, str(tick.at), job.id, str(seq), job.task, job.payload,
            str(int(job.priority)), job.options or "",  # '' = none
            job.rate_key or "",  # '' = none
        )  # fmt: skip
    keys = [
        k.waiting,  # KEYS[1] waiting  LIST
        k.prioritized,  # KEYS[2] prioritized  ZSET
        k.counter,  # KEYS[3] counter  STRING  the queue's FIFO counter
        k.schedules,  # KEYS[4] schedules  HASH  name -> last tick
    ]
    if queues:
        keys.append(queues)  # KEYS[5] (optional) queues  SET of every queue name
    return (
        "EVALSHA", SHAS["fire"], len(keys), *keys,
        store,  # ARGV[1] store prefix 'P:'
        queue,  # ARGV[2] queue
        "" if created_at is None else created_at,  # ARGV[3] created_at ('' = seq tells)
        k.channel,  # ARGV[4] channel to PUBLISH on when work appears ('' = none)
        *rows,  # ARGV[5..] 9 strings per tick
    )  # fmt: skip


def stamp(key: str, *, wall_clock: bool = False) -> Command:
    """stamp.lua: note the server's clock in ``key`` for the claim queued
    behind a BZPOPMIN in the same pipeline (see ``claim``'s ``stamp``).
    ``wall_clock``: the claimer's clock is the wall clock, so the claim takes
    the server's clock when it runs (exact) rather than moving the time the
    claimer read before the wait on by the wait's length."""
    return (
        "EVALSHA", SHAS["stamp"], 1,
        key,  # KEYS[1] the stamp  STRING
        "1" if wall_clock else "",  # ARGV[1] '1': the claimer's clock is the wall clock
    )  # fmt: skip


# -- lease tokens, and what the scripts hand back -----------------------------


class _Tokens:
    """Lease tokens unique to this process: 64 random bits drawn once (again
    in a forked child), then a counter. A token only has to differ from every
    other one (it fences a lease; it guards no secret), and drawing random
    bits for each claim costs a system call."""

    def __init__(self) -> None:
        self._renew()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._base = int.from_bytes(os.urandom(8))
        self._count = itertools.count(1)

    def next(self) -> str:
        return f"{(self._base + next(self._count)) & 0xFFFFFFFFFFFFFFFF:016x}"


_tokens = _Tokens()


def lease_token(queue: str) -> str:
    """A fresh lease token for a job of ``queue``: ``<16 hex>:<queue>``."""
    return f"{_tokens.next()}:{queue}"


def queue_of(token: str) -> str | None:
    """The queue a lease token was handed out for; None for a token we never made."""
    return token[17:] if len(token) > 17 and token[16] == ":" else None


def leases_by_queue(leases: Sequence[Lease]) -> dict[str, list[int]]:
    """The indexes of ``leases`` by the queue their token names (a token we
    never made names none: its lease is lost)."""
    groups: dict[str, list[int]] = {}
    for i, lease in enumerate(leases):
        if (queue := queue_of(lease.token)) is not None:
            groups.setdefault(queue, []).append(i)
    return groups


def lease_pairs(leases: Sequence[Lease], idx: list[int]) -> list[str]:
    """id, token, id, token... of ``leases[i]`` for each i of ``idx``: the
    ARGV of extend.lua and release.lua."""
    return [x for i in idx for x in (leases[i].job_id, leases[i].token)]


def result_triples(done: Sequence[tuple[Lease, str]], idx: list[int]) -> list[str]:
    """id, token, result... of ``done[i]`` for each i of ``idx``: complete.lua's ARGV."""
    return [x for i in idx for x in (done[i][0].job_id, done[i][0].token, done[i][1])]


def pairs(flat: list[str]) -> dict[str, str]:
    """A HASH from its flat HGETALL reply: field, value, field, value..."""
    it = iter(flat)
    return dict(zip(it, it, strict=True))


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)


def record(job_id: str, queue: str, h: dict[str, str]) -> JobRecord:
    """A job from its HASH (field letters: the module docstring)."""
    g, seq = h.get, h["q"]
    return JobRecord(
        job_id, int(seq), h["t"], queue, h["s"], int(g("p", 0)), h["d"], g("o"),
        int(g("a", 0)), int(g("k", 0)), int(g("c", seq)) / 1e6, _float(g("r")),
        _float(g("b")), _float(g("e")), g("f"), _float(g("l")), g("w"),
        g("v"), g("x", "[]"), g("g"),
    )  # fmt: skip


def read_held(new: NewJob, item: list[Any]) -> JobRecord:
    """enqueue.lua's reply for a job not stored: [queue, HGETALL] of the job
    holding its id; [queue, HGETALL, id] of the job ``id`` holding its key;
    [queue, HGETALL of the key's lock, id, 'lock'] when retention deleted it."""
    queue, fields = item[0], pairs(item[1])
    if len(item) < 4:
        return record(item[2] if len(item) == 3 else new.id, queue, fields)
    return held_record(new, item[2], fields["s"], float(fields["c"]), _float(fields.get("e")))


def read_claim(queue: str, flat: list[Any]) -> list[JobRecord]:
    """claim.lua's reply: id, the job's fields as a flat list, id, ..."""
    return [record(flat[i], queue, pairs(flat[i + 1])) for i in range(0, len(flat), 2)]
