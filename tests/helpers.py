"""Small helpers the end-to-end tests share."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conveyor import Conveyor
from conveyor.worker import Worker

APPS = Path(__file__).parent / "apps"
CONVEYOR = [sys.executable, "-m", "conveyor.cli"]


class WorkerProcesses:
    """A temporary folder holding a copy of one of ``tests/apps``, the store
    (``url``) a producer opened first, and the ``conveyor worker`` processes a
    test starts there, as a user would; every one is killed at ``cleanup``.
    ``env``: more environment for the workers (where their tasks log)."""

    def __init__(self, tmp_path: Path, url: str, app_file: str, **env: str) -> None:
        self.dir = tmp_path
        shutil.copy(APPS / app_file, tmp_path / app_file)
        self.url = url
        self.env = {**os.environ, "CONVEYOR_URL": url, "PYTHONUNBUFFERED": "1", **env}
        self.app = Conveyor(url)  # the producer's view of the same store
        self.app.stats()  # create the store before any worker opens it
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []  # each worker's output, in start order

    def spawn(self, app: str, *options: str) -> subprocess.Popen[bytes]:
        """``conveyor worker APP OPTIONS...``, its output in ``worker-NN.log``."""
        path = self.dir / f"worker-{len(self.workers) + 1:02d}.log"
        with open(path, "wb") as output:  # the child keeps its own copy
            proc = subprocess.Popen(
                [*CONVEYOR, "worker", app, *options],
                cwd=self.dir, env=self.env, stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.workers.append(proc)
        self.logs.append(path)
        return proc

    def live(self) -> list[subprocess.Popen[bytes]]:
        return [proc for proc in self.workers if proc.poll() is None]

    def worker_logs(self, tail: int = 4000) -> str:
        """The end of every worker's output, for a failing test's message."""
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}" for path in self.logs
        )

    def cleanup(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self.app.close()


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str = "", interval: float = 0.02
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(interval)


def sent(broker: Any, plan: Any) -> Any:
    """A pipeline a Redis broker planned for an event loop (``plan_wait``,
    ``plan_complete_and_claim``), sent now on a connection of its own, as
    the worker's door does over TLS: a ``SentPipeline``; None where the
    broker planned none."""
    return None if plan is None else broker.topology.send_pipeline(plan)


def poll_until_done(pending: Any, seconds: float = 3.0) -> Any:
    """What an event loop does with a sent ``SentPipeline``: poll whenever its
    socket is readable, until the wait is over; fail after ``seconds``."""
    poller = select.poll()
    poller.register(pending.fileno(), select.POLLIN)
    deadline = time.monotonic() + seconds
    while (claimed := pending.poll()) is None:
        if time.monotonic() >= deadline:
            raise AssertionError(f"the wait did not end within {seconds:g}s")
        poller.poll(100)
    return claimed


def jobs_reach_an_idle_worker(app: Conveyor, concurrency: int) -> Worker:
    """Run a worker on ``app`` and hand it jobs one at a time, each once it is
    idle again (so each goes through its idle wait), with a failing job
    beside every third; every job must end. Returns the stopped worker."""

    @app.task(name="echo")
    async def echo(n: int) -> int:
        return n

    @app.task(name="boom", attempts=1)
    async def boom() -> None:
        raise ValueError("no")

    worker = Worker(app, concurrency=concurrency, poll_interval=5.0)

    async def main() -> None:
        run = asyncio.create_task(worker.run_async())
        try:
            for n in range(6):
                await asyncio.sleep(0.05)  # the worker is idle again
                failing = boom.enqueue() if n % 3 == 2 else None
                job = echo.enqueue(n)
                assert await asyncio.to_thread(job.result, 5) == n
                if failing is not None:
                    dead = lambda f=failing: f.refresh() or f.state == "dead"  # noqa: E731
                    await asyncio.to_thread(wait_until, dead, 5, "the failing job")
        finally:
            worker.stop()
            await run

    asyncio.run(main())
    return worker
