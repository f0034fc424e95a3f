"""The worker: fetch, execute, complete, maintain.

One asyncio loop per worker process. ``_fetch_loop`` claims jobs when slots
are free (one store call for as many jobs as there are free slots) and
starts each as an asyncio task; ``execution.run_job`` runs it and decides
complete, retry or dead. Results are buffered and written together with the
next claim (``Broker.complete_and_claim``, one round trip); failures are
written one by one; both are kept until the store takes them. ``_renew_loop``
extends every held lease in one call; ``_maintain_loop`` recovers jobs whose
worker died and trims ended jobs by the queues' retention settings. Store
calls run on one store thread and the idle wait on another, so the loop
never blocks on I/O. Where the store can send a call and let the loop read
its reply (``Broker.send_complete_and_claim`` and ``Broker.send_wait``: one
Redis server or Sentinel), the busy worker's complete-and-claim and the idle
wait skip those threads: the reply wakes the loop itself, with no hop
between threads (a drain whose jobs each await one Redis command runs
about a quarter faster than through the store thread).

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
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from conveyor import validate
from conveyor.brokers.base import JobRecord, Lease, PendingCall
from conveyor.errors import ConfigurationError, StoreMisconfigured, StoreUnavailable
from conveyor.execution import Outcome, internal_error, run_job
from conveyor.threads import ThreadRunner

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.worker")

# While the store is unreachable: first retry after STORE_RETRY_MIN seconds,
# doubling up to STORE_RETRY_MAX, so a restart is noticed fast and an outage
# costs one log line every few seconds, not a crash loop.
STORE_RETRY_MIN = 0.1
STORE_RETRY_MAX = 5.0

# What ``Worker.run`` returns (the ``conveyor worker`` exit status).
EXIT_OK = 0
EXIT_STORE_REFUSED = 2  # the store refuses us for good (StoreMisconfigured): fix the set-up
EXIT_STUCK_THREADS = 3  # too many sync jobs stuck past their timeout: restart the worker


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
    ) -> None:
        # Every setting is checked before the store is opened (validate: the
        # same rules the command line applies, with its flag names).
        self.queues = validate.queue_list("queues", queues) if queues else app.queue_names()
        self.concurrency = validate.concurrency("concurrency", concurrency)
        self.lease = validate.lease("lease", lease)
        self.grace = validate.grace("grace", grace)
        self.burst = burst
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
        self._active: dict[str, tuple[Lease, asyncio.Task]] = {}
        self._completions: list[tuple[Lease, str]] = []
        self._failures: list[tuple[JobRecord, Lease, Outcome]] = []
        # Jobs that stalled before (their worker died while they ran) run
        # alone, so a job that kills its process takes no other job with it
        # (_start_claimed): _alone is the one running so, _give_back the jobs
        # claimed that are to be released unstarted, _isolating says to claim
        # nothing more until this worker is idle.
        self._alone: str | None = None
        self._give_back: list[Lease] = []
        self._isolating = False
        self._down_since: float | None = None  # monotonic time the store became unreachable
        self._backoff = STORE_RETRY_MIN
        # Store calls go one at a time through one thread (a store serialises
        # writes anyway, and a fixed thread keeps one connection); the idle
        # wait for new work blocks, so it gets a thread of its own.
        self._store: ThreadPoolExecutor | None = None
        self._waiter = ThreadRunner("wait", max_idle=1)
        self._jobs = ThreadRunner("jobs", max_idle=self.concurrency)
        self._wait: asyncio.Future | None = None  # the idle wait_and_claim, while it runs
        self._reserved = 0  # slots promised to that wait: it may claim this many
        self._wake: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._forced: asyncio.Event | None = None

    # -- entry points ---------------------------------------------------

    def run(self, install_signals: bool = True, loop: str = "auto") -> int:
        """Run until stopped (or, with ``burst``, until the queues are empty).

        ``loop="auto"`` runs on uvloop when it is installed (it is, on Linux
        and macOS): a faster event loop speeds the jobs' own awaits too, not
        just the worker's. ``"asyncio"`` keeps the standard loop (for code
        that needs it); ``"uvloop"`` insists on uvloop.
        """
        with asyncio.Runner(loop_factory=event_loop_factory(loop)) as runner:
            return runner.run(self.run_async(install_signals=install_signals))

    async def run_async(self, install_signals: bool = False) -> int:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
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
        helpers = [
            asyncio.create_task(self._renew_loop(), name="conveyor-renew"),
            asyncio.create_task(self._maintain_loop(), name="conveyor-maintain"),
        ]
        try:
            await self._fetch_loop()
            await self._end_wait()  # no new jobs: those it claimed go back at once
            await self._shutdown()
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            await self._end_wait()
            if self._store is not None:
                self._store.shutdown(wait=True)
                self._store = None
            self._waiter.close()
            self._jobs.close()
        log.info("worker %s stopped: %d done, %d failed", self.name, self.processed, self.failed)
        return self.exit_code

    def stop(self) -> None:
        """Begin a graceful shutdown; called again, skip the grace period.
        ``run`` then returns ``exit_code``: 0, unless the worker stopped
        itself for a reason a supervisor should see (``EXIT_*``)."""
        assert self._stopping is not None and self._forced is not None and self._wake is not None
        if self._stopping.is_set():
            log.warning("second stop signal: releasing active jobs now")
            self._forced.set()
        else:
            log.info(
                "stopping: no new jobs; waiting up to %gs for %d active",
                self.grace,
                len(self._active),
            )
            self._stopping.set()
        self._wake.set()

    # -- store calls, off the loop -------------------------------------

    async def call(self, fn: Any, *args: Any) -> Any:
        if self._store is None:
            self._store = ThreadPoolExecutor(1, thread_name_prefix="conveyor-store")
        return await asyncio.get_running_loop().run_in_executor(self._store, fn, *args)

    # -- fetch ----------------------------------------------------------

    async def _fetch_loop(self) -> None:
        assert self._stopping is not None and self._wake is not None
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                await self._write_failures()
                if self._take_waited():
                    # Let the new jobs start before the next store call: its
                    # thread would take the GIL from them (latency of a wake).
                    await asyncio.sleep(0)
                if self._give_back:  # before anything can wait
                    await self._give_back_suspects()
                free = self._free_slots()
                if free <= 0 and not self._completions:
                    await self._wake.wait()
                    continue
                claimed = await self._complete_and_claim(max(free, 0))
                self._store_is_back()
                if claimed:
                    self._start_claimed(claimed)
                    continue
                if free <= 0:
                    continue
                if self.burst and await self._queues_drained():
                    log.info("burst: queues %s are empty", ",".join(self.queues))
                    return
                await self._idle(free)
            except StoreMisconfigured as exc:
                self._store_refused(exc)
                return
            except Exception as exc:  # the store is unreachable: keep going, loudly
                await self._store_is_down(exc)

    def _free_slots(self) -> int:
        """How many jobs to claim now: the free slots, but none while a
        suspect runs alone, nor while isolating until this worker is idle."""
        if self._alone is not None or (self._isolating and self._active):
            return 0
        return self.concurrency - len(self._active) - self._reserved

    def _store_refused(self, exc: StoreMisconfigured) -> None:
        """The store refuses us for good: no retry can help. Stop at once,
        without writing (the store will not take it; the leases expire and
        other workers run these jobs), and exit non-zero."""
        assert self._stopping is not None and self._forced is not None and self._wake is not None
        log.error("stopping: %s", exc)
        self.exit_code = EXIT_STORE_REFUSED
        self._stopping.set()
        self._forced.set()
        self._wake.set()

    async def _store_is_down(self, exc: Exception) -> None:
        """Back off (0.1 s doubling to 5 s) with one log line per retry, never a traceback."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._backoff = STORE_RETRY_MIN
        else:
            self._backoff = min(self._backoff * 2, STORE_RETRY_MAX)
        # A StoreUnavailable names the URL already (with any password masked).
        what = str(exc) if isinstance(exc, StoreUnavailable) else f"{type(exc).__name__}: {exc}"
        log.error(
            "store unavailable: %s; %d results waiting to be written; retrying in %.1fs",
            what,
            len(self._completions) + len(self._failures),
            self._backoff,
        )
        await self._sleep_unless_woken(self._backoff)

    def _store_is_back(self) -> None:
        if self._down_since is not None:
            log.warning("store reachable again after %.1fs", time.monotonic() - self._down_since)
            self._down_since = None

    async def _queues_drained(self) -> bool:
        if self._active or self._completions or self._failures or self._give_back:
            return False
        return await self.call(self.broker.pending, self.queues) == 0

    async def _idle(self, free: int) -> None:
        """Wait for new work in the store, a freed slot, a completion or a stop.

        The wait runs on its own thread and claims what it finds for up to
        ``free`` slots (``Broker.wait_and_claim``: on Redis the job is claimed
        on the connection that was woken, with no hop through the loop first);
        those slots stay reserved for it until it returns."""
        assert self._wake is not None
        wake = self._wake
        if self._wait is None:
            timeout = self.poll_interval
            due = await self.call(self.broker.next_due, self.queues)
            if due is not None:
                timeout = max(0.0, min(timeout, due - self.app.clock.now()))
            args = (self.queues, free, self.lease, self.name, timeout)
            pending = await self.call(self.broker.send_wait, *args)  # may raise: nothing held
            if pending is not None:
                self._wait = self._watch(pending)
            else:
                self._wait = asyncio.ensure_future(
                    self._waiter.run(self.broker.wait_and_claim, *args)
                )
            self._reserved = free
            # Whatever the fetch loop awaits next, the jobs this wait claims
            # must wake it (with every slot reserved it waits on _wake alone).
            self._wait.add_done_callback(lambda _: wake.set())
        await wake.wait()

    def _watch(self, pending: PendingCall) -> asyncio.Future:
        """The future of a wait this loop reads itself (``Broker.send_wait``):
        no thread blocks on it, and its jobs need no hop to reach the loop.
        Cancelling the future abandons the wait."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        fd = pending.fileno()

        def check() -> None:
            nonlocal late
            if future.done():
                return
            try:
                claimed = pending.poll()
            except Exception as exc:  # the store went away: the fetch loop says so
                future.set_exception(exc)
                return
            if claimed is not None:
                future.set_result(claimed)
            else:  # the wait goes on: look again when its reply is due at the latest
                late.cancel()
                late = loop.call_later(pending.seconds_left() + 0.01, check)

        def ended(_: asyncio.Future) -> None:
            loop.remove_reader(fd)
            late.cancel()
            pending.close()  # does nothing once its replies were read

        loop.add_reader(fd, check)
        late = loop.call_later(pending.seconds_left() + 0.01, check)
        future.add_done_callback(ended)
        return future

    def _take_waited(self) -> int:
        """Start the jobs the finished idle wait claimed (or raise its error);
        how many."""
        if self._wait is None or not self._wait.done():
            return 0
        wait, self._wait, self._reserved = self._wait, None, 0
        self._start_claimed(wait.result())
        return len(wait.result())

    async def _end_wait(self) -> None:
        """End the idle wait before returning (a daemon thread still inside the
        store when the interpreter exits can crash it), and give back any
        jobs it claimed meanwhile."""
        if self._wait is None:
            return
        wait, self._wait, self._reserved = self._wait, None, 0
        if not wait.done():
            with contextlib.suppress(Exception):
                await self.call(self.broker.interrupt)
            await asyncio.wait({wait}, timeout=self.poll_interval + 1.0)
        if not wait.done():
            wait.cancel()  # a wait this loop reads is dropped; a thread's is let go
            return
        if wait.exception() is not None or not wait.result():
            return
        leases = [Lease(r.id, r.lease_token or "") for r in wait.result()]
        try:
            await self.call(self.broker.release, leases)
        except Exception as exc:  # their leases expire and another worker runs them
            log.error("could not give back %d jobs claimed while stopping: %s", len(leases), exc)

    async def _sleep_unless_woken(self, seconds: float) -> None:
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _start_claimed(self, records: list[JobRecord]) -> None:
        """The one route by which claimed jobs start. A job that stalled
        before (its worker died while it ran) is a suspect: it starts only
        when nothing else runs here, and nothing starts beside it. An idle
        worker runs the first suspect it claimed alone and gives the rest of
        the batch back; a busy one starts the others, gives the suspects back
        (unstarted, no attempt spent) and claims nothing until it is idle."""
        suspects = [record for record in records if record.stalls]
        if not suspects:
            self._isolating = False
            for record in records:
                self._start(record)
            return
        if not self._active:
            alone = suspects[0]
            self._isolating = False
            self._alone = alone.id
            self._give_back += [Lease(r.id, r.lease_token or "") for r in records if r is not alone]
            log.warning(
                "job %s (%s) stalled %d time(s) before: running it alone",
                alone.id,
                alone.task,
                alone.stalls,
            )
            self._start(alone)
            return
        self._isolating = True
        self._give_back += [Lease(r.id, r.lease_token or "") for r in suspects]
        for record in records:
            if not record.stalls:
                self._start(record)

    async def _give_back_suspects(self) -> None:
        """Release the jobs ``_start_claimed`` did not start (kept, and their
        leases renewed, while the store is unreachable)."""
        leases, self._give_back = self._give_back, []
        try:
            await self.call(self.broker.release, leases)
        except Exception:
            self._give_back = leases + self._give_back
            raise

    def _start(self, record: JobRecord) -> None:
        lease = Lease(record.id, record.lease_token or "")
        task = asyncio.create_task(self._run(record, lease))
        self._active[record.id] = (lease, task)

    async def _run(self, record: JobRecord, lease: Lease) -> None:
        assert self._wake is not None
        try:
            try:
                outcome = await run_job(self.app, self._jobs, record)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug of ours: the job still gets an outcome
                log.exception("internal error while running job %s", record.id)
                outcome = internal_error(record, exc)
            if outcome.error is None:
                self._completions.append((lease, outcome.result_json or "null"))
                self.processed += 1
            else:
                self._failures.append((record, lease, outcome))
                self.failed += 1
                if self._jobs.abandoned > self.max_abandoned_threads:  # after a timeout
                    self._too_many_stuck_threads()
        finally:
            self._active.pop(record.id, None)
            if self._alone == record.id:
                self._alone = None
            self._wake.set()

    def _too_many_stuck_threads(self) -> None:
        """Threads of sync jobs that passed their timeout cannot be killed in
        Python. Beyond the cap (``max_abandoned_threads``, by default the
        concurrency or 10, whichever is more), stop claiming and shut down
        with exit status 3, so a supervisor restarts the worker and the
        threads go with the process."""
        assert self._stopping is not None
        if self._stopping.is_set():
            return
        log.error(
            "%d threads of sync jobs that passed their timeout are still running "
            "(the cap is %d, --max-abandoned-threads): claiming no more jobs and "
            "shutting down so that a restart frees them",
            self._jobs.abandoned,
            self.max_abandoned_threads,
        )
        self.exit_code = EXIT_STUCK_THREADS
        self.stop()

    # -- acknowledge: outcomes are written in batches, kept until written --

    async def _complete_and_claim(self, limit: int) -> list[JobRecord]:
        """Write buffered results and claim up to ``limit`` jobs, in one store call."""
        done, self._completions = self._completions, []
        args = (done, self.queues, limit, self.lease, self.name)
        try:
            # Read by this loop where the store can: no thread hop each way.
            # Not while the store is down: connecting again could block the loop.
            sent = None if self._down_since else self.broker.send_complete_and_claim(*args)
            if sent is None:
                accepted, claimed = await self.call(self.broker.complete_and_claim, *args)
            else:
                accepted, claimed = await self._watch(sent)
        except Exception:
            self._completions = done + self._completions  # written when the store is back
            raise
        for (lease, _), ok in zip(done, accepted, strict=True):
            if not ok:
                log.warning(
                    "job %s finished after its lease was lost; result discarded", lease.job_id
                )
        return claimed

    async def _write_failures(self) -> None:
        """Record failed runs (retry later, or dead), fenced one by one."""
        while self._failures:
            record, lease, outcome = self._failures[0]
            assert outcome.error is not None
            retry_at = None if outcome.retry_in is None else self.app.clock.now() + outcome.retry_in
            accepted = await self.call(self.broker.fail, lease, outcome.error, retry_at)
            self._failures.pop(0)
            error = f"{outcome.error.type}: {outcome.error.message}"
            if not accepted:
                log.warning("job %s failed after its lease was lost: %s", record.id, error)
            elif retry_at is None:
                log.error(
                    "job %s (%s) is dead after %d attempt(s): %s",
                    record.id,
                    record.task,
                    record.attempts,
                    error,
                )
            else:
                log.warning(
                    "job %s (%s) failed on attempt %d: %s; retrying in %.3gs",
                    record.id,
                    record.task,
                    record.attempts,
                    error,
                    outcome.retry_in,
                )

    # -- renew and maintain --------------------------------------------

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            held = [lease for lease, _ in self._active.values()]
            held += [lease for lease, _ in self._completions]
            held += [lease for _, lease, _ in self._failures]
            held += self._give_back
            if not held:
                continue
            try:
                lost = await self.call(self.broker.extend, held, self.lease)
            except StoreMisconfigured as exc:
                self._store_refused(exc)
                continue
            except Exception as exc:
                log.error("could not renew %d leases: %s", len(held), exc)
                continue
            for job_id in lost:
                log.warning("lost the lease on job %s: another worker may run it", job_id)

    async def _maintain_loop(self) -> None:
        while True:
            try:
                await self.maintain()
            except StoreMisconfigured as exc:  # e.g. its SQLite file was deleted
                self._store_refused(exc)
                return
            except Exception as exc:
                log.error("maintenance failed: %s", exc)
            await asyncio.sleep(self.maintenance_interval)

    async def maintain(self) -> None:
        """Recover jobs of dead workers; trim ended jobs by retention."""
        for recovered in await self.call(self.broker.recover, self.max_stalled):
            log.warning(
                "job %s stalled (its worker stopped renewing): now %s",
                recovered.job_id,
                recovered.state,
            )
        now = self.app.clock.now()
        for name in self.queues:
            config = self.app.queue_config(name)
            for state, keep, keep_for in (
                ("completed", config.keep_completed, config.keep_completed_for),
                ("dead", config.keep_dead, config.keep_dead_for),
            ):
                if keep is not None or keep_for is not None:
                    older_than = now - keep_for if keep_for is not None else None
                    await self.call(self.broker.trim, name, state, keep, older_than)

    # -- shutdown -------------------------------------------------------

    async def _shutdown(self) -> None:
        """Grace period, then give unfinished jobs back without spending an attempt."""
        assert self._forced is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        forced = asyncio.ensure_future(self._forced.wait())
        while self._active and not forced.done() and loop.time() < deadline:
            running = {task for _, task in self._active.values()}
            await asyncio.wait(
                running | {forced},
                timeout=deadline - loop.time(),
                return_when=asyncio.FIRST_COMPLETED,
            )
        forced.cancel()
        if self.exit_code == EXIT_STORE_REFUSED:  # the store takes nothing from us
            for _, task in list(self._active.values()):
                task.cancel()
            return
        await self._flush_final()
        if self._active or self._give_back:
            leases = [lease for lease, _ in self._active.values()] + self._give_back
            self._give_back = []
            released = await self.call(self.broker.release, leases)
            log.warning("released %d unfinished jobs back to waiting", released)
            for _, task in list(self._active.values()):
                task.cancel()

    async def _flush_final(self) -> None:
        for _ in range(3):
            try:
                await self._write_failures()
                if self._completions:
                    await self._complete_and_claim(0)
                return
            except Exception as exc:
                log.error(
                    "could not write %d results: %s",
                    len(self._completions) + len(self._failures),
                    exc,
                )
                await asyncio.sleep(STORE_RETRY_MAX)
