"""What every peer's job body and enqueuer share, inside the peer's own venv.

Only the standard library and redis-py (installed into every peer venv) are
used here. The driver (``run.py``) passes everything through environment
variables:

- ``CMP_QUEUE_URL``: the Redis database the system under test keeps its queue in;
- ``CMP_RECORD_URL``: a separate Redis database for completion records;
- ``CMP_SQLITE``: the database file of the embedded (SQLite) systems;
- ``CMP_STORE``: ``redis`` or ``sqlite`` for peers that can use either;
- ``CMP_RELIABLE``: ``1`` for the crash test (the peer's most reliable settings);
- ``CMP_LEASE``: seconds of lease / visibility timeout / lock for the crash test;
- ``CMP_CONCURRENCY``: jobs at once in the one worker process, for peers where it is set.

Every job, in every system, does the same work: one ``RPUSH`` of
``"<number> <start time>"`` onto ``cmp:done`` in the record database, with
the client natural to how the system runs its jobs: redis-py's asyncio
client (``record_async``) in the systems whose jobs are coroutines on an
event loop (conveyor, arq, SAQ, taskiq, BullMQ for Python), as Node's BullMQ
uses async ioredis; the blocking client (``record``) in the others (Celery,
RQ, Dramatiq, Huey), whose jobs run on threads or processes. A blocking
call inside a coroutine would stall the loop for a round trip a job, which
no async user would write. The driver then counts the numbers (missing, run
twice) and reads start times for latency and drain rate.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis

QUEUE_URL = os.environ.get("CMP_QUEUE_URL", "redis://127.0.0.1:6379/13")
RECORD_URL = os.environ.get("CMP_RECORD_URL", "redis://127.0.0.1:6379/14")
SQLITE_PATH = os.environ.get("CMP_SQLITE", "")
STORE = os.environ.get("CMP_STORE", "redis")
RELIABLE = os.environ.get("CMP_RELIABLE") == "1"
LEASE = float(os.environ.get("CMP_LEASE", "5"))
CONCURRENCY = int(os.environ.get("CMP_CONCURRENCY", "50"))
DONE_KEY = "cmp:done"

_local = threading.local()


def _client() -> redis.Redis:
    client = getattr(_local, "client", None)
    if client is None:
        client = _local.client = redis.Redis.from_url(RECORD_URL)
    return client


def record(n: int) -> None:
    """The job body of every system: note that job ``n`` started, and when."""
    _client().rpush(DONE_KEY, f"{n} {time.time():.6f}")


_async: dict[int, Any] = {}  # event loop id -> its asyncio client


async def record_async(n: int) -> None:
    """``record`` for coroutine jobs: the same RPUSH, awaited on the job's loop."""
    import asyncio

    import redis.asyncio

    loop = id(asyncio.get_running_loop())
    client = _async.get(loop)
    if client is None:
        client = _async[loop] = redis.asyncio.Redis.from_url(RECORD_URL)
    await client.rpush(DONE_KEY, f"{n} {time.time():.6f}")


def started(n: int) -> bool:
    """Whether job ``n`` has recorded itself (used to wait for a warm-up job)."""
    prefix = f"{n} ".encode()
    return any(item.startswith(prefix) for item in _client().lrange(DONE_KEY, 0, -1))
