"""Flow control for the SQLite store: ``Broker.controls`` enforced inside the
claim's own transaction (so every process and thread sees one truth).

- A rate limit keeps the start times of its window in ``conveyor_starts``,
  one row per job start, pruned as they leave it: the window slides (a start
  at ``t`` counts while ``now - period < t``), so no window edge lets
  2 x limit through. A queue's window is bucket ``('queue', queue, '')``, a
  task's ``('task', task, rate_key or '')``.
- A concurrency cap counts the queue's active jobs whose lease has not
  expired: a dead worker's share comes back when its lease runs out.
- Per-task buckets: a claim walks the queue's ready jobs in order; a job whose
  bucket is full is *held*: its state becomes ``'held'`` (every reader sees
  ``'waiting'``: ``sqlite.py`` maps it), which takes it out of the ready
  index, and its bucket goes into ``conveyor_buckets`` with the time its
  window opens. So one key's backlog at the head of the line is stepped
  over once, not by every claim. When the bucket opens, a claim puts back
  (in order) as many of its held jobs as its window has room for, and the
  bucket's next opening is when that room would be used up again.

A queue without controls never comes here: ``sqlite.py`` runs its one
``claim_ready`` statement as before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from conveyor.brokers.base import Controls, RateLimit
from conveyor.brokers.sqlite_file import SQL

Bucket = tuple[str, str, str]  # (kind, name, key): conveyor_starts' columns
#: The stored state of a waiting job set aside while its bucket is full.
HELD = "held"


def _starts(conn: sqlite3.Connection, bucket: Bucket, rate: RateLimit, now: float) -> int:
    """The starts in ``bucket``'s window now."""
    count: int = conn.execute(SQL.window_count, (*bucket, now - rate.period)).fetchone()[0]
    return count


def _room(conn: sqlite3.Connection, bucket: Bucket, rate: RateLimit, now: float) -> int:
    """How many more starts the window allows now, forgetting those that left it."""
    conn.execute(SQL.window_prune, (*bucket, now - rate.period))
    return rate.limit - _starts(conn, bucket, rate, now)


def _opening(conn: sqlite3.Connection, bucket: Bucket, rate: RateLimit, now: float) -> float:
    """When the window has room again: the start whose leaving frees a slot,
    plus the period (now when it has room already)."""
    count = _starts(conn, bucket, rate, now)
    if count < rate.limit:
        return now
    params = (*bucket, now - rate.period, count - rate.limit)
    at: float = conn.execute(SQL.window_nth, params).fetchone()[0]
    return at + rate.period


def _tasks(rates: Mapping[str, RateLimit]) -> str:
    return orjson.dumps(list(rates)).decode()


def _unhold(conn: sqlite3.Connection, rates: Mapping[str, RateLimit], now: float) -> None:
    """Put back in line the held jobs of every bucket whose window opened:
    as many as it has room for (all, when its task lost its limit)."""
    for task, key in conn.execute(SQL.opened_buckets, (now,)).fetchall():
        rate_key = key or None  # '' is the shared bucket: jobs without a key
        rate = rates.get(task)
        if rate is None:
            conn.execute(SQL.unhold_bucket, (task, rate_key, -1))  # LIMIT -1: all
            conn.execute(SQL.drop_bucket, (task, key))
            continue
        bucket = ("task", task, key)
        room = _room(conn, bucket, rate, now)
        if room > 0:
            conn.execute(SQL.unhold_bucket, (task, rate_key, room))
        if conn.execute(SQL.bucket_holds, (task, rate_key)).fetchone()[0]:
            # Jobs still held: look again when the room put back is used up
            # (or, with none, when the window next opens).
            opens = (
                _refill(conn, bucket, rate, now) if room > 0 else _opening(conn, bucket, rate, now)
            )
            conn.execute(SQL.hold_bucket, (task, key, opens))
        else:
            conn.execute(SQL.drop_bucket, (task, key))


def _refill(conn: sqlite3.Connection, bucket: Bucket, rate: RateLimit, now: float) -> float:
    """When a window whose room is taken now opens again: its oldest start
    (or now) plus the period."""
    rows = conn.execute(SQL.window_nth, (*bucket, now - rate.period, 0)).fetchall()
    return (rows[0][0] if rows else now) + rate.period


def claim(
    conn: sqlite3.Connection,
    controls: Controls,
    queue: str,
    want: int,
    now: float,
    expires: float,
    worker: str,
) -> list[Any]:
    """Lease up to ``want`` jobs of ``queue`` as the controls allow (in the
    caller's transaction); the rows in no promised order."""
    if controls.task_rates:
        _unhold(conn, controls.task_rates, now)  # first: they may be all it has
    paused, waiting = conn.execute(SQL.queue_state, (queue,)).fetchone()
    if paused or not waiting:
        return []
    room = want
    queue_rate = controls.queue_rates.get(queue)
    if queue_rate is not None:
        room = min(room, _room(conn, ("queue", queue, ""), queue_rate, now))
    cap = controls.concurrency.get(queue)
    if cap is not None:
        room = min(room, cap - conn.execute(SQL.running, (queue, now)).fetchone()[0])
    if room <= 0:
        return []
    if controls.task_rates:
        rows = _claim_by_bucket(conn, controls.task_rates, queue, room, now, expires, worker)
    else:
        rows = conn.execute(SQL.claim_ready, (now, expires, worker, queue, room)).fetchall()
    if queue_rate is not None and rows:
        conn.executemany(SQL.window_start, [("queue", queue, "", now)] * len(rows))
    return rows


def _claim_by_bucket(
    conn: sqlite3.Connection,
    rates: Mapping[str, RateLimit],
    queue: str,
    room: int,
    now: float,
    expires: float,
    worker: str,
) -> list[Any]:
    """Walk the ready jobs in order: take each whose bucket has room, hold
    those of a full bucket (out of line until it opens), and look again
    while holding some left the batch short."""
    left: dict[Bucket, int] = {}  # room left in each bucket met in this claim
    holding: set[Bucket] = set()  # the buckets this claim holds jobs of
    claimed: list[Any] = []
    while len(claimed) < room:
        want = room - len(claimed)
        candidates = conn.execute(SQL.ready_keyed, (queue, want)).fetchall()
        take: list[int] = []
        hold: list[int] = []
        for seq, task, key in candidates:
            rate = rates.get(task)
            if rate is not None:
                bucket = ("task", task, key)
                if bucket not in left:
                    left[bucket] = _room(conn, bucket, rate, now)
                if left[bucket] <= 0:
                    if bucket not in holding:  # the first of its jobs held by this claim
                        opens = _opening(conn, bucket, rate, now)
                        conn.execute(SQL.hold_bucket, (task, key, opens))
                        holding.add(bucket)
                    hold.append(seq)
                    continue
                left[bucket] -= 1
                conn.execute(SQL.window_start, (*bucket, now))
            take.append(seq)
        if take:
            params = (now, expires, worker, orjson.dumps(take).decode())
            claimed += conn.execute(SQL.claim_seqs, params).fetchall()
        if hold:
            conn.execute(SQL.hold_jobs, (orjson.dumps(hold).decode(),))
        if not hold or len(candidates) < want:
            break  # every ready job was looked at
    return claimed


def _open_now(conn: sqlite3.Connection, controls: Controls, queue: str, now: float) -> bool:
    """Do the queue's own window and cap have room now?"""
    queue_rate = controls.queue_rates.get(queue)
    bucket = ("queue", queue, "")
    if queue_rate is not None and _starts(conn, bucket, queue_rate, now) >= queue_rate.limit:
        return False
    cap = controls.concurrency.get(queue)
    return cap is None or conn.execute(SQL.running, (queue, now)).fetchone()[0] < cap


def claimable(
    conn: sqlite3.Connection, controls: Controls, queues: Sequence[str], now: float
) -> bool:
    """For an idle wait: may a claim of ``queues`` take a job now? (Reads only.)
    Held jobs whose bucket opened answer yes (the claim puts them back), and
    so, once, does a job of a full bucket not held yet (the claim holds it)."""
    rates = controls.task_rates
    if rates and conn.execute(SQL.any_opened, (now, _tasks(rates))).fetchone()[0]:
        return True
    for queue in dict.fromkeys(queues):
        paused, waiting = conn.execute(SQL.queue_state, (queue,)).fetchone()
        if paused or not waiting:
            continue
        if not controls.touch(queue) or _open_now(conn, controls, queue, now):
            return True
    return False


def held_due(
    conn: sqlite3.Connection, controls: Controls, queues: Sequence[str], now: float
) -> float | None:
    """When jobs of ``queues`` held back by the controls may become claimable:
    a full window's opening, the earliest lease of a full cap, a held
    bucket's opening (perhaps past: the next claim puts its jobs back); None
    when nothing is held back. (Reads only.)"""
    times: list[float] = []
    for queue in dict.fromkeys(queues):
        if not controls.touch(queue):
            continue
        paused, waiting = conn.execute(SQL.queue_state, (queue,)).fetchone()
        if paused or not waiting:
            continue
        queue_rate = controls.queue_rates.get(queue)
        if queue_rate is not None:
            bucket = ("queue", queue, "")
            if _starts(conn, bucket, queue_rate, now) >= queue_rate.limit:
                times.append(_opening(conn, bucket, queue_rate, now))
        cap = controls.concurrency.get(queue)
        if cap is not None:
            running, first = conn.execute(SQL.running, (queue, now)).fetchone()
            if running >= cap and first is not None:
                times.append(first)
    if controls.task_rates:
        # Held buckets of every queue: one of another queue's task wakes a
        # wait once, needlessly, at worst (a claim then moves it on).
        params = (_tasks(controls.task_rates),)
        opens = conn.execute(SQL.next_bucket_opening, params).fetchone()[0]
        if opens is not None:
            times.append(opens)
    return min(times, default=None)


def sweep(conn: sqlite3.Connection, controls: Controls, now: float) -> None:
    """Forget starts older than every window (keys not seen again leave
    nothing behind), and put back in line the jobs held for tasks no longer
    limited (the app dropped their limit)."""
    rates = (*controls.queue_rates.values(), *controls.task_rates.values())
    if rates:
        conn.execute(SQL.sweep_starts, (now - max(rate.period for rate in rates),))
    tasks = _tasks(controls.task_rates)
    conn.execute(SQL.sweep_held, (tasks,))
    conn.execute(SQL.sweep_buckets, (tasks,))
