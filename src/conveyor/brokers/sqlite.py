"""The embedded store (``sqlite:///path.db``): the broker contract on one SQLite file.

Several threads and processes may share one database file. Each thread gets
its own connection (SQLite connections must not be used by two threads at
once), opened lazily. Connections are in autocommit mode and every write
operation is exactly one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction:
IMMEDIATE takes the database's single write lock up front, so writers from
any number of processes queue up on the busy timeout instead of failing on a
stale snapshot, and two claimers can never see the same waiting job.

The SQL lives in ``sqlite.sql`` as named blocks, one per operation; this
module only binds parameters and builds records.

The file itself is ``sqlite_file.py``'s (``DatabaseFile``): the URL and its
options (``?synchronous=normal|full``, ``?timeout=SECONDS``, ``?shared=1``),
durability, the connections and transactions, whose file it is (conveyor
changes only a database it created, unless asked), ``create=False``, and a
file deleted or replaced under a running process. ``SQLiteBroker`` holds one
and runs every transaction and read through it; what stays here is the
operations and this process's wake-ups for ``wait_for_work``.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson

from conveyor.brokers import sqlite_limits
from conveyor.brokers.base import (
    ENDED_STATES,
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
    held_record,
    purge_states,
)
from conveyor.brokers.sqlite_file import (
    COLUMNS,
    DEFAULT_TIMEOUT,
    MIN_SQLITE,
    OUR_TABLES,
    SCHEMA_VERSION,
    SHOWN_TABLES,
    SQL,
    SYNCHRONOUS,
    DatabaseFile,
    parse_url,
)
from conveyor.clock import Clock

# The names other modules import from here; those from sqlite_file.py are
# re-exported, so they stay importable from conveyor.brokers.sqlite.
__all__ = [
    "COLUMNS",
    "DEFAULT_TIMEOUT",
    "MIN_SQLITE",
    "OUR_TABLES",
    "SCHEMA_VERSION",
    "SHOWN_TABLES",
    "SQL",
    "SYNCHRONOUS",
    "SQLiteBroker",
    "parse_url",
]

# How often wait_for_work asks whether another process committed. Reading
# PRAGMA data_version costs a microsecond or two, so this is cheap, and it
# keeps the wake-up latency for work enqueued elsewhere to a few ms.
POLL_SECONDS = 0.003
DATA_VERSION = "PRAGMA data_version"  # changes when another connection commits
HELD = sqlite_limits.HELD
# One job: insert and get the stored row back in the same statement.
INSERT_RETURNING = SQL.insert_job + "\nRETURNING *"
# retry's statements, telling which jobs moved (their unique keys, see rehold_unique).
RETRY_RETURNING = {
    name: getattr(SQL, name) + "\nRETURNING id"
    for name in ("retry_ids", "retry_dead", "retry_dead_in_queue")
}
EXPIRED_PER_TAKE = 100  # expired locks dropped each time a key is taken


def _json(value: Any) -> str:
    # sqlite3 binds bytes as a BLOB, which the JSON functions refuse: send text.
    return orjson.dumps(value).decode()


def _claim_order(row: tuple[Any, ...]) -> tuple[int, int]:
    return -row[5], row[1]  # (-priority, seq): the order claim promises


def _row(job: NewJob, now: float) -> tuple[Any, ...]:
    """``insert_job``'s parameters for ``job``, created ``now``."""
    j = job
    return (j.id, j.task, j.queue, j.priority, j.payload, j.options, j.run_at, now, j.rate_key)


def _record(row: tuple[Any, ...]) -> JobRecord:
    """A stored job as readers see it: a job held back by its rate-limit
    bucket (state 'held', see sqlite_limits.py) is waiting."""
    job = JobRecord(*row)
    if job.state == HELD:
        job.state = WAITING
    return job


class SQLiteBroker(Broker):
    """The broker contract as SQL transactions on one SQLite file."""

    def __init__(self, url: str, clock: Clock, *, create: bool = True) -> None:
        self.url = url
        self.clock = clock
        self.create = create
        # Same-process wake-ups for wait_for_work: bumped after every commit
        # that may have made a job ready or moved the next due time.
        self._cond = threading.Condition()
        self._generation = 0
        self._waiters = 0
        self._closed = False
        self._controls_seen: Controls | None = None  # the controls claims last ran under
        # The file: parsed URL, connections, transactions; opened (and
        # judged, set up) here, or refused with a one-line error.
        self._file = DatabaseFile(url, create=create, after_fork=self._forget_waits)
        self.path = self._file.path
        self.synchronous = self._file.synchronous
        self.timeout = self._file.timeout
        self.shared = self._file.shared

    @property
    def location(self) -> str:
        """``sqlite:////absolute/path.db``: the file in use, whatever folder a
        relative URL started from. ``%``, ``?`` and ``#`` are escaped, so the
        text also works as a store URL (without the options)."""
        return "sqlite:///" + re.sub(r"[%?#]", lambda m: f"%{ord(m[0]):02X}", self.path)

    def _forget_waits(self) -> None:
        """In a forked child (the file calls this once it has dropped the
        parent's connections): a fresh condition and no waiters. The
        parent's waiting threads did not come along, and one of them may
        have held the condition's lock at the fork."""
        self._cond = threading.Condition()
        self._waiters = 0

    def _notify(self) -> None:
        """Wake this process's wait_for_work callers after a commit."""
        if self._waiters:  # read without the lock: a waiter that starts later looks itself
            with self._cond:
                self._generation += 1
                self._cond.notify_all()

    def _make_ready(self, sql: str, params: Sequence[Any]) -> int:
        """Run one statement that makes jobs waiting; wake waiters if it did."""
        with self._file.tx() as conn:
            moved = conn.execute(sql, params).rowcount
        if moved:
            self._notify()
        return moved

    # -- producing -------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        if not jobs:
            return []
        now = self.clock.now()
        rows = [_row(j, now) for j in jobs]
        with self._file.tx() as conn:
            results = None
            if len(rows) > 1 and not any(j.unique_key is not None for j in jobs):
                results = self._insert_all(conn, rows)
            if results is None:
                results = [
                    self._insert_one(conn, row)
                    if job.unique_key is None
                    else self._insert_unique(conn, row, job, now)
                    for row, job in zip(rows, jobs, strict=True)
                ]
        self._notify()
        return results

    @classmethod
    def _insert_unique(
        cls, conn: sqlite3.Connection, row: tuple[Any, ...], job: NewJob, now: float
    ) -> EnqueueResult:
        """One job with a unique key: its holder when the key is held, else
        stored as ``_insert_one`` does, taking the key if it was created."""
        found = conn.execute(SQL.unique_holder, (job.queue, job.unique_key)).fetchone()
        if found is not None:
            holder, unique_for, created_at, state, finished_at, expires, stored, ended_at = found
            if expires is None and stored in ENDED_STATES:
                expires = ended_at + unique_for  # it ended without telling the lock (older code)
            # Not ended: held while its job is stored (a purged one never ran).
            held = stored is not None if expires is None else expires > now
            if held and stored is not None:
                existing = _record(conn.execute(SQL.get_job, (holder,)).fetchone())
                return EnqueueResult(existing, created=False)
            if held:  # retention deleted it: what the lock knows
                record = held_record(job, holder, state, created_at, finished_at)
                return EnqueueResult(record, created=False)
        result = cls._insert_one(conn, row)
        if result.created:
            conn.execute(SQL.drop_expired_unique, (now, EXPIRED_PER_TAKE))
            params = (job.queue, job.unique_key, job.id, job.unique_for, now)
            conn.execute(SQL.take_unique, params)
        return result

    @staticmethod
    def _insert_all(
        conn: sqlite3.Connection, rows: list[tuple[Any, ...]]
    ) -> list[EnqueueResult] | None:
        """The bulk fast path: one executemany when no id is taken, else None."""
        ids = [row[0] for row in rows]
        if (
            len(set(ids)) < len(ids)
            or conn.execute(SQL.count_taken_ids, (_json(ids),)).fetchone()[0]
        ):
            return None
        last = conn.execute(SQL.last_seq).fetchone()[0]
        conn.executemany(SQL.insert_job, rows)
        return [
            EnqueueResult(JobRecord(*r), True) for r in conn.execute(SQL.jobs_after_seq, (last,))
        ]

    @staticmethod
    def _insert_one(conn: sqlite3.Connection, row: tuple[Any, ...]) -> EnqueueResult:
        created = conn.execute(INSERT_RETURNING, row).fetchall()
        if not created:  # the id is taken
            existing = _record(conn.execute(SQL.get_job, row[:1]).fetchone())
            if existing.state not in ENDED_STATES:
                return EnqueueResult(existing, created=False)
            conn.execute(SQL.delete_job, row[:1])  # an ended job's id may be reused
            created = conn.execute(INSERT_RETURNING, row).fetchall()
        return EnqueueResult(JobRecord(*created[0]), created=True)

    def fire(self, ticks: Sequence[Tick]) -> list[bool]:
        if not ticks:
            return []
        now = self.clock.now()
        fired: list[bool] = []
        with self._file.tx() as conn:
            for tick in ticks:
                j = tick.job
                if conn.execute(SQL.claim_tick, (j.queue, tick.schedule, tick.at)).rowcount:
                    fired.append(self._insert_one(conn, _row(j, now)).created)
                else:
                    fired.append(False)
        if any(fired):
            self._notify()
        return fired

    def last_ticks(self, schedules: Sequence[tuple[str, str]]) -> list[int | None]:
        found: list[int | None] = []
        for queue, name in schedules:
            rows = self._file.read(SQL.last_tick, (queue, name))
            found.append(rows[0][0] if rows else None)
        return found

    # -- consuming -------------------------------------------------------

    def claim(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str
    ) -> list[JobRecord]:
        return self.complete_and_claim((), queues, limit, lease_seconds, worker)[1]

    def complete_and_claim(
        self,
        done: Sequence[tuple[Lease, str]],
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker: str,
    ) -> tuple[list[bool], list[JobRecord]]:
        # One transaction for both halves: a busy worker pays one commit per batch.
        now = self.clock.now()
        controls = self.controls  # one consistent set for the whole claim
        claimed: list[JobRecord] = []
        promoted = 0
        with self._file.tx() as conn:
            if controls is not self._controls_seen:
                # The app changed the limits: jobs held for a limit that went
                # come back now, not at the next sweep.
                sqlite_limits.sweep(conn, controls, now)
                self._controls_seen = controls
            completed: set[str] = set()
            if done:
                rows = conn.execute(SQL.complete_jobs, (now, _json(list(done)))).fetchall()
                completed = {row[0] for row in rows}
                if unique := [row[0] for row in rows if row[1]]:  # jobs holding a key
                    conn.execute(SQL.end_unique, (_json(unique), "completed", now))
            if limit > 0:
                promoted = conn.execute(SQL.promote_due, (now,)).rowcount
                for queue in queues:
                    if len(claimed) >= limit:
                        break
                    if controls.touch(queue):
                        rows = sqlite_limits.claim(
                            conn, controls, queue, limit - len(claimed),
                            now, now + lease_seconds, worker,
                        )  # fmt: skip
                    else:
                        params = (now, now + lease_seconds, worker, queue, limit - len(claimed))
                        rows = conn.execute(SQL.claim_ready, params).fetchall()
                    rows.sort(key=_claim_order)
                    claimed += [JobRecord(*row) for row in rows]
        if promoted or (completed and controls.concurrency):
            # Jobs of queues other than these may be ready now, or a
            # completion freed a slot of a capped queue.
            self._notify()
        accepted = []
        for lease, _ in done:
            accepted.append(lease.job_id in completed)
            completed.discard(lease.job_id)  # the same lease twice: only once True
        return accepted, claimed

    def extend(self, leases: Sequence[Lease], lease_seconds: float) -> list[str]:
        if not leases:
            return []
        with self._file.tx() as conn:
            params = (self.clock.now() + lease_seconds, _json(list(leases)))
            held = {row[0] for row in conn.execute(SQL.extend_leases, params).fetchall()}
        return [lease.job_id for lease in leases if lease.job_id not in held]

    def complete(self, done: Sequence[tuple[Lease, str]]) -> list[bool]:
        return self.complete_and_claim(done, (), 0, 0.0, "")[0] if done else []

    def fail(self, lease: Lease, error: AttemptError, retry_at: float | None) -> bool:
        now = self.clock.now()
        # ``at`` goes in as JSON number text: json_object rounds a REAL to 15 digits.
        error_fields = (error.type, error.message, error.traceback, repr(now))
        params = (lease.job_id, lease.token, *error_fields, retry_at, now)
        with self._file.tx() as conn:
            failed = conn.execute(SQL.fail_job, params).rowcount == 1
            if failed and retry_at is None:  # dead: a key it holds is held unique_for more
                conn.execute(SQL.end_unique, (_json([lease.job_id]), "dead", now))
        if failed and (retry_at is not None or self.controls.concurrency):
            self._notify()  # a retry, or a slot of a capped queue freed
        return failed

    def release(self, leases: Sequence[Lease]) -> int:
        return self._make_ready(SQL.release_jobs, (_json(list(leases)),)) if leases else 0

    def recover(self, max_stalled: int) -> list[Recovered]:
        # Every worker calls this every few seconds: the place to notice,
        # for one os.stat, that the file was deleted or replaced under us.
        self._file.check_unchanged()
        now = self.clock.now()
        controls = self.controls
        with self._file.tx() as conn:
            rows = conn.execute(SQL.recover_expired, (now, max_stalled, repr(now))).fetchall()
            if dead := [row[0] for row in rows if row[2] == "dead"]:
                conn.execute(SQL.end_unique, (_json(dead), "dead", now))
            # As often: forget windows that ended, put back jobs held for
            # limits that went (a few index probes when there are none).
            sqlite_limits.sweep(conn, controls, now)
        if rows:
            self._notify()
        rows.sort(key=lambda row: row[1])  # seq order, as readable as any
        return [Recovered(job_id, state) for job_id, _, state in rows]

    # -- controlling -----------------------------------------------------

    def cancel(self, job_id: str) -> bool:
        now = self.clock.now()
        with self._file.tx() as conn:
            cancelled: bool = conn.execute(SQL.cancel_job, (job_id, now)).rowcount == 1
            if cancelled and self._file.has_unique:
                conn.execute(SQL.end_unique, (_json([job_id]), "cancelled", now))
        return cancelled

    def retry(self, job_ids: Sequence[str] | None = None, *, queue: str | None = None) -> int:
        params: tuple[str | None, ...]
        if job_ids is not None:
            # By id, a cancelled job may be brought back too; "all" means dead only.
            name, params = "retry_ids", (_json(list(job_ids)), queue)
        elif queue is not None:
            name, params = "retry_dead_in_queue", (queue,)
        else:
            name, params = "retry_dead", ()
        if not self._file.has_unique:
            return self._make_ready(getattr(SQL, name), params)
        with self._file.tx() as conn:
            moved = [row[0] for row in conn.execute(RETRY_RETURNING[name], params)]
            if moved:
                conn.execute(SQL.rehold_unique, (_json(moved), self.clock.now()))
        if moved:
            self._notify()
        return len(moved)

    def promote(self, job_ids: Sequence[str] | None = None, *, queue: str | None = None) -> int:
        params: tuple[str | None, ...]
        if job_ids is not None:
            sql, params = SQL.promote_ids, (_json(list(job_ids)), queue)
        else:
            sql, params = SQL.promote_all, (queue,)
        return self._make_ready(sql, params)

    def trim(
        self, queue: str, state: str, keep: int | None = None, older_than: float | None = None
    ) -> int:
        if state not in ENDED_STATES:
            raise ValueError(f"trim deletes ended jobs only, not {state!r} ones")
        deleted = 0
        with self._file.tx() as conn:
            # Oldest first: what "older than" removes never changes which
            # jobs are the ``keep`` most recent ones that stay.
            if older_than is not None:
                deleted += conn.execute(SQL.trim_older, (queue, state, older_than)).rowcount
            if keep is not None:
                deleted += conn.execute(SQL.trim_keep, (queue, state, max(keep, 0))).rowcount
            if self._file.has_unique:  # retention's round: locks whose hold ran out go too
                conn.execute(SQL.drop_expired_unique, (self.clock.now(), -1))
        return deleted

    def pause(self, queue: str) -> bool:
        with self._file.tx() as conn:
            return conn.execute(SQL.pause, (queue,)).rowcount > 0

    def resume(self, queue: str) -> bool:
        with self._file.tx() as conn:
            resumed = conn.execute(SQL.resume, (queue,)).rowcount > 0
        if resumed:
            self._notify()  # its waiting jobs are ready again
        return resumed

    def paused(self) -> set[str]:
        return {row[0] for row in self._file.read(SQL.paused_queues)}

    def purge(self, queue: str, states: Sequence[str]) -> int:
        chosen = purge_states(states)
        if WAITING in chosen:
            chosen = (*chosen, HELD)  # held jobs are waiting ones
        params = (queue, _json(list(chosen)))
        with self._file.tx() as conn:
            if self._file.has_unique:
                conn.execute(SQL.purge_unique, params)
            deleted: int = conn.execute(SQL.purge, params).rowcount
        return deleted

    # -- reading ---------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._file.read(SQL.get_job, (job_id,))
        return _record(rows[0]) if rows else None

    def list(
        self,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> list[JobRecord]:
        # max(): SQLite reads a negative LIMIT as "no limit".
        rows = self._file.read(SQL.list_jobs, (queue, state, after or 0, max(limit, 0)))
        return [_record(row) for row in rows]

    def counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for queue, state, n in self._file.read(SQL.counts):
            counts.setdefault(queue, dict.fromkeys(STATES, 0))[state] += n  # held: waiting
        return counts

    def pending(self, queues: Sequence[str]) -> int:
        pending: int = self._file.read(SQL.pending, (_json(list(queues)), self.clock.now()))[0][0]
        return pending

    def next_due(self, queues: Sequence[str]) -> float | None:
        rows = self._file.read(SQL.next_due, (_json(list(queues)),))
        due: float | None = rows[0][0] if rows else None
        controls = self.controls
        if any(controls.touch(q) for q in queues):
            held = self._read_limits(sqlite_limits.held_due, controls, queues)
            if held is not None and (due is None or held < due):
                due = held
        return due

    def _read_limits(self, read: Any, controls: Controls, queues: Sequence[str]) -> Any:
        """One of sqlite_limits' reads, outside a transaction."""
        try:
            return read(self._file.conn(), controls, queues, self.clock.now())
        except sqlite3.OperationalError as exc:
            raise self._file._unavailable(exc) from exc

    def _work_hint(self, queues: Sequence[str], params: tuple[str]) -> tuple[bool, float | None]:
        """For wait_for_work: may a claim take a job now, and when does the
        next held-back or delayed one come due? Under controls, a ready job
        counts only if the controls let a claim take it: held-back work
        must not end an idle wait (it would spin until its window opens)."""
        controls = self.controls
        if any(controls.touch(q) for q in queues):
            return self._read_limits(sqlite_limits.claimable, controls, queues), self.next_due(
                queues
            )
        ready, due = self._file.read(SQL.work_hint, params)[0]
        return bool(ready), due

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        # SQLite cannot tell another process about a commit, so we poll
        # PRAGMA data_version (it changes when any other connection commits)
        # and, when it has, ask work_hint whether our queues have work. Our
        # own process's commits wake us at once through the condition.
        deadline = time.monotonic() + max(timeout, 0.0)
        hint_params = (_json(list(queues)),)
        with self._cond:
            if self._closed:
                return
            self._waiters += 1
            generation = self._generation
        try:
            version = self._file.read(DATA_VERSION)[0][0]  # before looking: no commit slips by
            while True:
                ready, due = self._work_hint(queues, hint_params)
                if ready:
                    return
                while True:
                    with self._cond:
                        remaining = deadline - time.monotonic()
                        if due is not None:  # the store clock may be a test's FakeClock
                            remaining = min(remaining, due - self.clock.now())
                        if self._closed or self._generation != generation or remaining <= 0:
                            return
                        self._cond.wait(min(remaining, POLL_SECONDS))
                    if (seen := self._file.read(DATA_VERSION)[0][0]) != version:
                        version = seen
                        break  # another connection committed: look again
        finally:
            with self._cond:
                self._waiters -= 1
                self._cond.notify_all()

    def waiting(self) -> int:
        return self._waiters

    def interrupt(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()  # nobody should sleep on a closed store
            # Closing a connection another thread is reading from can crash
            # the process: let the waiters (a few ms from a poll) leave first.
            self._cond.wait_for(lambda: self._waiters == 0, timeout=1.0)
        self._file.close()
