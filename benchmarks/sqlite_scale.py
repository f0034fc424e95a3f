"""Does claiming stay fast with 1,000,000 jobs stored? (SQLite store)

    .venv/bin/python benchmarks/sqlite_scale.py [--stored 1000000] [--jobs 10000] [--batch 10]

Claims and completes ``--jobs`` jobs through ``SQLiteBroker`` (``--batch`` at
a time, as a worker with that much free concurrency does) on three databases:
only those jobs stored; the same behind ``--stored`` other waiting jobs of
lower priority in the same queue; and beside ``--stored`` completed jobs.
With the partial indexes the three rates should be within noise of each
other; a full scan would show as a collapse of the second and third.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from conveyor.brokers.base import Lease, NewJob
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.clock import SystemClock

CHUNK = 50_000  # jobs per bulk enqueue while filling


def fill(broker: SQLiteBroker, count: int, priority: int, queue: str = "default") -> None:
    for start in range(0, count, CHUNK):
        broker.enqueue(
            [
                NewJob(uuid.uuid4().hex, "noop", queue, "[[],{}]", priority)
                for _ in range(min(CHUNK, count - start))
            ]
        )


def complete_all(broker: SQLiteBroker, count: int) -> None:
    done = 0
    while done < count:
        claimed = broker.claim(["default"], 1000, 30, "filler")
        broker.complete([(Lease(r.id, r.lease_token or ""), "null") for r in claimed])
        done += len(claimed)


def drain_rate(broker: SQLiteBroker, jobs: int, batch: int) -> float:
    started = time.perf_counter()
    done = 0
    while done < jobs:
        claimed = broker.claim(["default"], batch, 30, "bench")
        assert claimed, "ran out of jobs before the measured count"
        assert all(r.priority == 1 for r in claimed), "claimed a background job first"
        broker.complete([(Lease(r.id, r.lease_token or ""), "null") for r in claimed])
        done += len(claimed)
    return jobs / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stored", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        rows = []
        for label, setup in (
            ("only the measured jobs", None),
            (f"{args.stored:,} waiting behind them", "waiting"),
            (f"{args.stored:,} completed beside them", "completed"),
        ):
            path = Path(folder) / f"{setup or 'empty'}.db"
            broker = SQLiteBroker(f"sqlite:///{path}", SystemClock())
            t0 = time.perf_counter()
            if setup == "completed":
                fill(broker, args.stored, 0)
                complete_all(broker, args.stored)
            elif setup == "waiting":
                fill(broker, args.stored, 0)
            fill(broker, args.jobs, 1)
            fill_s = time.perf_counter() - t0
            rate = drain_rate(broker, args.jobs, args.batch)
            rows.append((label, rate, fill_s))
            broker.close()
    print(f"claim+complete through SQLiteBroker, {args.jobs:,} jobs, batches of {args.batch}")
    for label, rate, fill_s in rows:
        print(f"  {label:<34} {rate:>10,.0f} jobs/s   (setup {fill_s:.1f} s)")


if __name__ == "__main__":
    main()
