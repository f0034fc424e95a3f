"""The worker: one asyncio loop per process, in parts that each own their state.

- ``fetch.Fetcher``: where a job is **claimed**. It keeps the slots full,
  one store call for as many jobs as there are free slots, and waits for
  work when nothing is ready.
- ``run.Runner``: where a job is **run**. Async jobs run on the loop,
  plain functions on slot threads (``slots.py``); ``execution.py`` decides
  complete, retry or dead; a job that stalled before runs alone.
- ``ack.Acknowledger``: where a job is **acknowledged**. Outcomes are
  buffered and written together, the completions with the next claim.
- ``leases.LeaseKeeper`` renews every held lease in one call;
  ``maintenance.Maintainer`` recovers the jobs of dead workers and trims
  ended jobs; ``scheduler.Scheduler`` fires the app's schedules.

They reach the store through one door, ``broker.async_store()``, and share
only ``control.Control`` (stopping, and why). This module wires them
together and runs them.

Shutdown (SIGTERM/SIGINT): stop claiming, let active jobs finish for up to
``grace`` seconds, then put the rest back to waiting without spending an
attempt. A second signal skips the rest of the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import uuid
from collections.abc import Callable, Sequence

from conveyor import validate
from conveyor.app import Conveyor
from conveyor.brokers.async_store import AsyncStore
from conveyor.errors import ConfigurationError
from conveyor.worker.ack import Acknowledger
from conveyor.worker.control import (
    EXIT_INTERNAL_ERROR,
    EXIT_OK,
    EXIT_STORE_REFUSED,
    EXIT_STUCK_THREADS,
    Control,
)
from conveyor.worker.fetch import STORE_RETRY_MAX, Fetcher
from conveyor.worker.leases import LeaseKeeper
from conveyor.worker.maintenance import Maintainer
from conveyor.worker.run import Runner
from conveyor.worker.scheduler import Scheduler

__all__ = [
    "EXIT_INTERNAL_ERROR",
    "EXIT_OK",
    "EXIT_STORE_REFUSED",
    "EXIT_STUCK_THREADS",
    "LOOPS",
    "Worker",
    "event_loop_factory",
]

log = logging.getLogger("conveyor.worker")

LOOPS = ("auto", "asyncio", "uvloop")


def event_loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop ``Worker.run`` makes: uvloop's, or None for asyncio's own."""
    if loop not in LOOPS:
        raise ConfigurationError(f"loop must be one of {', '.join(LOOPS)}, not {loop!r}")
    if loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise ConfigurationError(
                "loop 'uvloop' needs the uvloop package (pip install uvloop)"
            ) from None
        return None
    return uvloop.new_event_loop


class Worker:
    """Runs jobs from ``queues`` (strict order: the first queue drains first).

    >>> Worker(app, queues=["critical", "default"], concurrency=10).run()  # doctest: +SKIP

    ``lease`` is how long a claimed job stays claimed without a renewal; the
    worker renews every ``lease / 3`` seconds while jobs run. ``burst`` stops
    the worker once its queues hold nothing waiting or active.
    ``max_abandoned_threads``: threads of sync jobs stuck past their timeout
    the worker tolerates (default: the concurrency or 10, whichever is more).
    ``schedules``: fire the app's ``@app.periodic`` schedules (every worker
    does, whatever its queues; still one job per tick). A ``burst`` worker
    never does: it drains what is there and leaves.
    """

    def __init__(
        self,
        app: Conveyor,
        queues: Sequence[str] | None = None,
        *,
        concurrency: int = 10,
        lease: float = 30.0,
        grace: float = 30.0,
        burst: bool = False,
        max_stalled: int | None = None,
        poll_interval: float = 1.0,
        maintenance_interval: float | None = None,
        name: str | None = None,
        max_abandoned_threads: int | None = None,
        schedules: bool = True,
    ) -> None:
        # Every setting is checked before the store is opened (validate: the
        # same rules the command line applies, with its flag names).
        self.queues = validate.queue_list("queues", queues) if queues else app.queue_names()
        self.concurrency = validate.concurrency("concurrency", concurrency)
        self.lease = validate.lease("lease", lease)
        self.grace = validate.grace("grace", grace)
        self.burst = burst
        self.schedules = schedules and not burst
        self.max_stalled = validate.max_stalled(
            "max_stalled", app.max_stalled if max_stalled is None else max_stalled
        )
        self.poll_interval = validate.poll("poll_interval", poll_interval)
        self.maintenance_interval = validate.poll(
            "maintenance_interval", maintenance_interval or min(max(lease / 4, 0.1), 5.0)
        )
        self.max_abandoned_threads = validate.max_abandoned_threads(
            "max_abandoned_threads",
            max(10, self.concurrency) if max_abandoned_threads is None else max_abandoned_threads,
        )
        self.app = app
        self.broker = app.broker
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.processed = 0
        self.failed = 0
        self.exit_code = EXIT_OK
        self._control: Control | None = None  # made by run_async, inside its loop
        self._runner: Runner | None = None

    # -- entry points ---------------------------------------------------

    def run(self, install_signals: bool = True, loop: str = "auto") -> int:
        """Run until stopped (or, with ``burst``, until the queues are empty);
        returns the exit status (``EXIT_*``).

        ``loop="auto"`` runs on uvloop when it is installed (it is, on Linux
        and macOS): a faster event loop speeds the jobs' own awaits too, not
        just the worker's. ``"asyncio"`` keeps the standard loop (for code
        that needs it); ``"uvloop"`` insists on uvloop.
        """
        with asyncio.Runner(loop_factory=event_loop_factory(loop)) as runner:
            return runner.run(self.run_async(install_signals=install_signals))

    def stop(self) -> None:
        """Begin a graceful shutdown; called again, skip the grace period."""
        if self._control is not None:
            if not self._control.stopping.is_set():
                log.info(
                    "stopping: no new jobs; waiting up to %gs for %d active",
                    self.grace,
                    len(self._runner or ()),
                )
            self._control.stop()

    async def run_async(self, install_signals: bool = False) -> int:
        loop = asyncio.get_running_loop()
        control = self._control = Control()
        store = self.broker.async_store()
        acks = Acknowledger(store, self.app.clock, batch=max(1, self.concurrency // 2))
        runner = self._runner = Runner(
            self.app, self.concurrency, self.max_abandoned_threads, acks, control
        )
        fetcher = Fetcher(
            store=store, clock=self.app.clock, runner=runner, acks=acks, control=control,
            queues=self.queues, lease=self.lease, worker=self.name,
            poll_interval=self.poll_interval, burst=self.burst,
        )  # fmt: skip
        keeper = LeaseKeeper(
            store, self.app.clock, self.lease, lambda: runner.leases() + acks.leases(), control
        )
        maintainer = Maintainer(
            self.app, store, self.queues, self.max_stalled, self.maintenance_interval, control
        )
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        log.info(
            "worker %s serving %s with concurrency %d (lease %gs, store %s)",
            self.name,
            ",".join(self.queues),
            self.concurrency,
            self.lease,
            self.broker.location,
        )
        await self._say_what_is_paused(store)
        helpers = [
            asyncio.create_task(keeper.run(), name="conveyor-renew"),
            asyncio.create_task(maintainer.run(), name="conveyor-maintain"),
        ]
        if self.schedules and self.app.schedules:
            scheduler = Scheduler(self.app, store, control)
            helpers.append(asyncio.create_task(scheduler.run(), name="conveyor-schedule"))
        try:
            await fetcher.run()
            await fetcher.end_wait()  # no new jobs: those it claimed go back at once
            await self._shutdown(control, runner, acks, store)
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            await fetcher.end_wait()
            store.close()
            runner.close()
            self.processed, self.failed = runner.processed, runner.failed
            self.exit_code = control.exit_code
        log.info("worker %s stopped: %d done, %d failed", self.name, self.processed, self.failed)
        return self.exit_code

    async def _say_what_is_paused(self, store: AsyncStore) -> None:
        """A worker that starts on a paused queue says so: an operator who
        sees its jobs wait knows why (the store refuses them until resumed)."""
        try:
            paused = await store.paused()
        except Exception:  # unreachable or refused: the fetch loop says so, properly
            return
        if held := [queue for queue in self.queues if queue in paused]:
            log.warning(
                "queue(s) %s paused: their jobs wait until `conveyor resume`", ",".join(held)
            )

    async def maintain(self) -> None:
        """One maintenance pass now, as the running worker makes them:
        recover the jobs of dead workers, trim ended jobs by retention."""
        store = self.broker.async_store()
        try:
            maintainer = Maintainer(
                self.app, store, self.queues, self.max_stalled, self.maintenance_interval,
                Control(),
            )  # fmt: skip
            await maintainer.maintain()
        finally:
            store.close()

    # -- shutdown -------------------------------------------------------

    async def _shutdown(
        self, control: Control, runner: Runner, acks: Acknowledger, store: AsyncStore
    ) -> None:
        """Grace period, then give unfinished jobs back without spending an attempt."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        forced = asyncio.ensure_future(control.forced.wait())
        waiting = runner.give_back_waiting()  # claimed ahead, never started: back at once
        if waiting and control.exit_code != EXIT_STORE_REFUSED:
            with contextlib.suppress(Exception):  # else their leases expire
                await store.release(waiting)
        while runner.running() and not forced.done() and loop.time() < deadline:
            control.wake.clear()  # set again as soon as a job ends
            woken = asyncio.ensure_future(control.wake.wait())
            await asyncio.wait(
                {woken, forced}, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
            )
            woken.cancel()
        forced.cancel()
        if control.exit_code == EXIT_STORE_REFUSED:  # the store takes nothing from us
            runner.cancel_all()
            return
        await self._flush(acks)
        leases = runner.leases()
        if leases:
            released = await store.release(leases)
            log.warning("released %d unfinished jobs back to waiting", released)
        runner.cancel_all()

    async def _flush(self, acks: Acknowledger) -> None:
        """Write what is left (a few tries: the store may be coming back)."""
        for _ in range(3):
            try:
                await acks.write_and_claim(self.queues, 0, self.lease, self.name)
                return
            except Exception as exc:
                log.error("could not write %d results: %s", acks.unwritten(), exc)
                await asyncio.sleep(STORE_RETRY_MAX)
