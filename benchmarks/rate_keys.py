"""Claiming with per-key rate limits and 10,000 keys: what a key costs.

    .venv/bin/python benchmarks/rate_keys.py [--url URL] [--keys 10000] [--backlog 10000]

Straight through the store contract (no worker process), on a fresh store
(default: a SQLite file in a temporary folder; ``memory://`` or a Redis URL
work too), with a frozen clock so no window opens during a run. Each case
enqueues its jobs, then claims batches of 10 and completes them until
nothing is claimable, and reports claimed jobs per second and the time of
one claim + complete:

- ``unlimited``: ``--keys`` jobs of a task without a limit (the baseline);
- ``10,000 keys``: the same jobs, one per key, the task limited to 10/s per key;
- ``+ a held backlog``: first in line ``--backlog`` jobs of one more key,
  which takes its 10 starts and is then held: every later claim must get
  past that key's jobs to reach the others.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from conveyor.brokers import open_broker
from conveyor.brokers.base import Controls, Lease, NewJob, RateLimit
from conveyor.clock import FakeClock

TASK = "bench.sync_customer"
BATCH = 10


def run(url: str, jobs: list[NewJob], controls: Controls) -> tuple[int, float, int]:
    """(jobs claimed, seconds, claim calls)."""
    store = open_broker(url, FakeClock(1_700_000_000.0))
    try:
        store.controls = controls
        for start in range(0, len(jobs), 5_000):
            store.enqueue(jobs[start : start + 5_000])
        claimed = calls = 0
        began = time.perf_counter()
        while True:
            batch = store.claim(["default"], BATCH, 30.0, "bench")
            calls += 1
            if not batch:
                break
            claimed += len(batch)
            store.complete([(Lease(job.id, job.lease_token or ""), "null") for job in batch])
        return claimed, time.perf_counter() - began, calls
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="store URL (default: a fresh SQLite file per case)")
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--backlog", type=int, default=10_000)
    args = parser.parse_args()

    per_key = [
        NewJob(id=f"k{i}", task=TASK, queue="default", payload="[]", rate_key=f'"customer-{i}"')
        for i in range(args.keys)
    ]
    backlog = [
        NewJob(id=f"big{i}", task=TASK, queue="default", payload="[]", rate_key='"big"')
        for i in range(args.backlog)
    ]
    limited = Controls(task_rates={TASK: RateLimit(10, 1.0)})
    cases = [
        ("unlimited", per_key, Controls()),
        (f"{args.keys:,} keys, 10/s each", per_key, limited),
        (f"{args.keys:,} keys + a held backlog of {args.backlog:,}", backlog + per_key, limited),
    ]
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as folder:
        print(f"store: {args.url or 'sqlite (a fresh file per case)'}; batches of {BATCH}")
        for n, (name, jobs, controls) in enumerate(cases):
            url = args.url or f"sqlite:///{folder}/keys-{n}.db"
            claimed, seconds, calls = run(url, jobs, controls)
            print(
                f"{name:45} {claimed:>7,} claimed  {claimed / seconds:>9,.0f} jobs/s  "
                f"{seconds / calls * 1000:6.2f} ms per claim + complete"
            )


if __name__ == "__main__":
    main()
