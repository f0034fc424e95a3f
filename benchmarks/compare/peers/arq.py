"""arq: ``arq peers.arq.WorkerSettings`` with ``max_jobs=50`` (default 10)
and results kept for 60 s. arq polls its queue every ``poll_delay`` (0.5 s by
default; kept, as the docs give no other advice). No bulk API. Crash test:
``job_timeout`` of ``CMP_LEASE`` seconds (arq re-runs a job whose
in-progress key, held for job_timeout + 10 s, has expired)."""

from __future__ import annotations

import os
import sys

import common
from arq import create_pool
from arq.connections import RedisSettings

PACKAGES = ["arq", "redis", "hiredis"]
ASYNC = True

SETTINGS = RedisSettings.from_dsn(common.QUEUE_URL)
pool = None


async def job(ctx: dict, n: int) -> None:
    await common.record_async(n)


class WorkerSettings:
    functions = [job]
    redis_settings = SETTINGS
    max_jobs = common.CONCURRENCY
    keep_result = 60
    job_timeout = int(common.LEASE) if common.RELIABLE else 300


async def setup() -> None:
    global pool
    pool = await create_pool(SETTINGS)


async def enqueue_one(n: int) -> None:
    await pool.enqueue_job("job", n)


enqueue_bulk = None


async def close() -> None:
    await pool.aclose()


def worker() -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), "arq"), "peers.arq.WorkerSettings"]
