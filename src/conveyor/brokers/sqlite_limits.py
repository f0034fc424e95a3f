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
  bucket is full is left waiting where it is, and its bucket is written to
  ``conveyor_buckets`` with the time its window opens, so the next claims
  leave that bucket's jobs out in SQL (an index probe a row) instead of
  judging them one by one here.

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


def limited(controls: Controls, queue: str) -> bool:
    """Do the controls touch ``queue``'s claims? (Any queue may hold jobs of
    a task with a rate limit.)"""
    return bool(
        controls.task_rates or queue in controls.queue_rates or queue in controls.concurrency
    )


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
    """Walk the ready jobs not held back, in order: take each whose bucket has
    room; hold a full bucket (its jobs drop out of the next look), and look
    again while holding one left the batch short."""
    tasks = _tasks(rates)
    left: dict[Bucket, int] = {}  # room left in each bucket met in this claim
    claimed: list[Any] = []
    while len(claimed) < room:
        want = room - len(claimed)
        candidates = conn.execute(SQL.ready_unheld, (queue, now, tasks, want)).fetchall()
        take: list[int] = []
        held = False
        for seq, task, key in candidates:
            rate = rates.get(task)
            if rate is not None:
                bucket = ("task", task, key)
                if bucket not in left:
                    left[bucket] = _room(conn, bucket, rate, now)
                if left[bucket] <= 0:
                    conn.execute(SQL.hold_bucket, (task, key, _opening(conn, bucket, rate, now)))
                    held = True
                    continue
                left[bucket] -= 1
                conn.execute(SQL.window_start, (*bucket, now))
            take.append(seq)
        if take:
            params = (now, expires, worker, orjson.dumps(take).decode())
            claimed += conn.execute(SQL.claim_seqs, params).fetchall()
        if not held or len(candidates) < want:
            break  # every ready job not held back was looked at
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
    A bucket full but not yet held may answer yes once: the claim then holds it."""
    for queue in dict.fromkeys(queues):
        paused, waiting = conn.execute(SQL.queue_state, (queue,)).fetchone()
        if paused or not waiting:
            continue
        if not limited(controls, queue):
            return True
        if not _open_now(conn, controls, queue, now):
            continue
        if not controls.task_rates:
            return True
        params = (queue, now, _tasks(controls.task_rates), 1)
        if conn.execute(SQL.ready_unheld, params).fetchone() is not None:
            return True
    return False


def held_due(
    conn: sqlite3.Connection, controls: Controls, queues: Sequence[str], now: float
) -> float | None:
    """When ready jobs of ``queues`` held back by the controls may become
    claimable: a full window's opening, the earliest lease of a full cap, a
    held bucket's opening; None when no queue holds a waiting job. (Reads only.)"""
    times: list[float] = []
    any_waiting = False
    for queue in dict.fromkeys(queues):
        if not limited(controls, queue):
            continue
        paused, waiting = conn.execute(SQL.queue_state, (queue,)).fetchone()
        if paused or not waiting:
            continue
        any_waiting = True
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
    if any_waiting and controls.task_rates:
        # Held buckets of every queue: a bucket of another queue's task wakes
        # a wait once, needlessly, at worst.
        params = (now, _tasks(controls.task_rates))
        opens = conn.execute(SQL.next_bucket_opening, params).fetchone()[0]
        if opens is not None:
            times.append(opens)
    return min(times, default=None)


def sweep(conn: sqlite3.Connection, controls: Controls, now: float) -> None:
    """Forget starts older than every window and holds that have ended (keys
    not seen again leave nothing behind)."""
    periods = [
        rate.period for rate in (*controls.queue_rates.values(), *controls.task_rates.values())
    ]
    if periods:
        conn.execute(SQL.sweep_starts, (now - max(periods),))
    conn.execute(SQL.sweep_buckets, (now,))
