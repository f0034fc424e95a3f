"""The raw limit: how fast plain sqlite3 can claim and complete jobs on a WAL file.

No conveyor code runs here: a table shaped like conveyor's, a partial index
on ready jobs, and a loop that claims (one UPDATE ... RETURNING in a
BEGIN IMMEDIATE transaction) and then completes (a second transaction) each
job, as a worker must. It is the ceiling the SQLite store is measured
against, on the same disk (``--dir``), for synchronous=FULL and NORMAL, one
job per transaction and batches of 100.

    python benchmarks/sqlite_raw.py --jobs 10000 --dir /tmp
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time

SCHEMA = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, queue TEXT NOT NULL,
    state TEXT NOT NULL, priority INTEGER NOT NULL, payload TEXT NOT NULL,
    lease_token TEXT, lease_expires REAL, started_at REAL, finished_at REAL, result TEXT
);
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, seq) WHERE state = 'waiting';
"""
CLAIM = """
UPDATE jobs SET state = 'active', started_at = ?1, lease_expires = ?1 + 30,
    lease_token = lower(hex(randomblob(8)))
WHERE seq IN (SELECT seq FROM jobs WHERE state = 'waiting' AND queue = 'default'
              ORDER BY priority DESC, seq LIMIT ?2)
RETURNING seq, lease_token
"""
COMPLETE = """
UPDATE jobs SET state = 'completed', result = 'null', finished_at = ?1,
    lease_token = NULL, lease_expires = NULL
WHERE seq = ?2 AND lease_token = ?3 AND state = 'active'
"""


def run(folder: str, jobs: int, synchronous: str, batch: int) -> float:
    """Jobs per second for one configuration, on a fresh database file."""
    path = os.path.join(folder, f"sqlite_raw_{os.getpid()}.db")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.executescript(SCHEMA)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO jobs (id, queue, state, priority, payload) "
            "VALUES (?, 'default', 'waiting', 0, '{\"args\":[1,2]}')",
            ((f"job-{i}",) for i in range(jobs)),
        )
        conn.execute("COMMIT")

        done = 0
        started = time.perf_counter()
        while True:
            conn.execute("BEGIN IMMEDIATE")
            claimed = conn.execute(CLAIM, (time.time(), batch)).fetchall()
            conn.execute("COMMIT")
            if not claimed:
                break
            conn.execute("BEGIN IMMEDIATE")
            now = time.time()
            conn.executemany(COMPLETE, ((now, seq, token) for seq, token in claimed))
            conn.execute("COMMIT")
            done += len(claimed)
        elapsed = time.perf_counter() - started
        assert done == jobs, (done, jobs)
        return done / elapsed
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per run (default 10000)")
    parser.add_argument(
        "--dir", default=None, help="folder for the database file (default: a temporary one)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        print(f"sqlite {sqlite3.sqlite_version}, {args.jobs} jobs, WAL file in {folder}")
        print(f"{'synchronous':<12} {'batch':>5} {'jobs/s':>10} {'µs/job':>8}")
        for batch in (1, 100):
            for synchronous in ("FULL", "NORMAL"):
                rate = run(folder, args.jobs, synchronous, batch)
                print(f"{synchronous:<12} {batch:>5} {rate:>10,.0f} {1e6 / rate:>8.1f}")


if __name__ == "__main__":
    main()
