"""The Redis store's idle waits and wake-ups: no polling.

An idle worker calls ``wait_and_claim``. On one server or behind Sentinel
(``MarkerWaits``) one pipeline stamps the server clock, blocks in BZPOPMIN on
its queues' markers, and claims: Redis runs the claim the moment a script
sets a marker, with no round trip back to the worker first. In a Cluster
(``PubSubWaits``) one BZPOPMIN cannot watch keys of several slots, so the
scripts also publish on ``P:ready:<queue>`` when they set a marker, and one
pub/sub thread per broker (``Waker``) wakes the waiters, who then claim.

The waits know the operations only through the callbacks the broker gives
them (claim, the heads of its queues, the claim script's command), and the
store through its ``Topology``: nothing here imports ``redis_store``.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

import hiredis

from conveyor.brokers.base import JobRecord
from conveyor.brokers.redis_connection import REDIS_ERRORS, Pipeline
from conveyor.brokers.redis_scripts import Command, read_claim, stamp
from conveyor.brokers.redis_topology import REPLY_MARGIN, Topology
from conveyor.clock import Clock, SystemClock
from conveyor.errors import StoreMisconfigured, StoreUnavailable

MAX_BLOCK = 5.0  # seconds one BZPOPMIN may block

#: claim(queues, limit, lease_seconds, worker): the broker's claim
Claim = Callable[[Sequence[str], int, float, str], list[JobRecord]]
#: heads(queues): (ready jobs, earliest run_at of a delayed job) in one round trip
Heads = Callable[[Sequence[str]], tuple[int, float | None]]
#: claim_command(queue, limit, lease_seconds, worker, stamp): claim.lua's command
ClaimCommand = Callable[[str, int, float, str, str | None], Command]


class Waits:
    """What both kinds of wait share: the broker's ``wait_for_work``,
    ``wait_and_claim``, ``plan_wait``, ``waiting``, ``interrupt`` and the
    clean-up on ``close``."""

    def __init__(
        self,
        topology: Topology,
        clock: Clock,
        *,
        claim: Claim,
        heads: Heads,
        claim_command: ClaimCommand,
    ) -> None:
        self.topology = topology
        self.clock = clock
        self._claim, self._heads, self._claim_command = claim, heads, claim_command
        self._lock = threading.Lock()
        self._blocked = 0  # threads inside _sleep

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        ready, due = self._heads(queues)
        while not ready:
            # After a wake that found nothing claimable, wait again: a marker
            # whose job a busy worker took, or, in a Cluster, an announcement
            # the cluster bus delivered late (tens of milliseconds after the
            # work it announced was claimed, once this waiter had subscribed).
            remaining = self._until_due(deadline - time.monotonic(), due)
            if remaining < 0.001 or not self._sleep(queues, remaining):
                return
            ready, due = self._heads(queues)

    def wait_and_claim(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str, timeout: float
    ) -> list[JobRecord]:
        raise NotImplementedError

    def plan_wait(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str, timeout: float
    ) -> Pipeline | None:
        """The idle wait as a pipeline an event loop reads; None where it
        cannot be one (the caller waits on a thread)."""
        return None

    def waiting(self) -> int:
        """Threads blocked in ``_sleep``."""
        return self._blocked

    def interrupt(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to release (a subclass may have something)."""

    def _until_due(self, timeout: float, due: float | None) -> float:
        # Blocking is real time; the store clock only says when the next
        # delayed job is due (a test's FakeClock may stand still).
        return timeout if due is None else min(timeout, due - self.clock.now())

    def _sleep(self, queues: Sequence[str], timeout: float) -> bool:
        """Block until work may be ready in ``queues``, for up to ``timeout``
        seconds; False when interrupted."""
        if timeout < 0.001:  # BZPOPMIN 0 would block for ever
            return True
        with self._lock:
            self._blocked += 1
        try:
            return self._block(queues, timeout)
        finally:
            with self._lock:
                self._blocked -= 1

    def _block(self, queues: Sequence[str], timeout: float) -> bool:
        raise NotImplementedError


class MarkerWaits(Waits):
    """One server or Sentinel: BZPOPMIN on the queues' markers and this
    broker's interrupt key; the idle wait and its claim as one pipeline."""

    def __init__(self, topology: Topology, clock: Clock, **callbacks: Any) -> None:
        super().__init__(topology, clock, **callbacks)
        self._prefix = topology.target.prefix
        self._interrupt_key = f"{self._prefix}:interrupt:{secrets.token_hex(8)}"
        self._interrupted = False  # the key may exist: close() deletes it
        self._stamps: set[str] = set()  # of the waits in progress (_send)

    def wait_and_claim(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str, timeout: float
    ) -> list[JobRecord]:
        deadline = time.monotonic() + timeout
        while limit > 0 and timeout >= 0.001:
            sent = self.topology.send_pipeline(
                self._plan(queues, limit, lease_seconds, worker, timeout)
            )
            woken: tuple[str | None, list[JobRecord]] = sent.wait()
            woken_by, jobs = woken
            if woken_by == self._interrupt_key:
                return jobs
            if len(jobs) < limit and len(queues) > 1:
                jobs += self._claim(queues[1:], limit - len(jobs), lease_seconds, worker)
            if jobs:
                return jobs
            # A stale marker (its job went to a busy worker, or it announced a
            # sooner delayed job): wait again, until the next due job.
            timeout = self._until_due(deadline - time.monotonic(), self._heads(queues)[1])
        return self._claim(queues, limit, lease_seconds, worker) if limit > 0 else []

    def plan_wait(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str, timeout: float
    ) -> Pipeline | None:
        if limit <= 0:
            return None
        return self._plan(queues, limit, lease_seconds, worker, timeout, jobs_only=True)

    def _plan(
        self,
        queues: Sequence[str],
        limit: int,
        lease: float,
        worker: str,
        timeout: float,
        jobs_only: bool = False,
    ) -> Pipeline:
        """The idle wait, as one pipeline on a connection of its own. It
        stamps the server clock, blocks in BZPOPMIN on the queues' markers
        (and this broker's interrupt key), and claims from the first queue:
        the server runs the claim the moment a script sets a marker, with no
        round trip back here in between (the claim moves the clock it was
        given on by the time the wait took). The caller just claimed and
        found nothing, so a job enqueued since then has set its marker: no
        look is needed first. Its result: the key that woke it (None: the
        timeout) and the jobs claimed; or the jobs only."""
        if self.topology.scripts_lost:  # a wait found them gone: load them before this one
            self.topology.load_scripts()
        key = f"{self._prefix}:stamp:{secrets.token_hex(8)}"
        markers = [self.topology.keys(q).marker for q in queues] + [self._interrupt_key]
        block = round(min(max(timeout, 0.001), MAX_BLOCK), 3)
        commands = [
            stamp(key, wall_clock=isinstance(self.clock, SystemClock)),
            ("BZPOPMIN", *markers, block),
            self._claim_command(queues[0], limit, lease, worker, key),
        ]

        def finish(replies: list[Any]) -> Any:
            self._stamps.discard(key)
            _, popped, claim = replies
            errors = [r for r in replies if isinstance(r, hiredis.ReplyError)]
            if any(str(e).startswith("NOSCRIPT") for e in errors):
                self.topology.scripts_lost = True  # a restarted server: the claim took nothing
            jobs = [] if isinstance(claim, hiredis.ReplyError) else read_claim(queues[0], claim)
            other = [e for e in errors if not str(e).startswith("NOSCRIPT")]
            if other and not jobs:  # jobs it claimed are the caller's all the same
                self.topology.raise_(other[0])  # the worker backs off, loudly, or stops
            woken_by = popped[0] if isinstance(popped, list) and popped else None
            return jobs if jobs_only else (woken_by, jobs)

        def failed(exc: BaseException) -> BaseException:
            self._stamps.discard(key)
            return self.topology.error(exc)

        self._stamps.add(key)  # interrupt() deletes it: the claim then takes nothing
        return Pipeline(commands, block + REPLY_MARGIN, finish, failed)

    def _block(self, queues: Sequence[str], timeout: float) -> bool:
        """BZPOPMIN on this thread's connection."""
        keys = [self.topology.keys(q).marker for q in queues] + [self._interrupt_key]
        timeout = min(timeout, MAX_BLOCK)
        popped = self.topology.run([lambda c: c.bzpopmin(keys, round(timeout, 3))])[0]
        return not popped or popped[0] != self._interrupt_key

    def waiting(self) -> int:
        """Threads blocked in ``_sleep``, and waits planned (``_plan``) whose
        replies are not read yet."""
        return self._blocked + len(self._stamps)

    def interrupt(self) -> None:
        """Wakes the BZPOPMIN of any thread of this broker; a claim queued
        behind one (its stamp deleted) takes nothing."""
        stamps = list(self._stamps)
        wake = [lambda c: c.delete(*stamps)] if stamps else []
        self._interrupted = True
        self.topology.run([*wake, lambda c: c.zadd(self._interrupt_key, {"0": 0})])

    def close(self) -> None:
        # The interrupt key exists only after interrupt(): else no round trip
        # (nor a wait on a host that is gone) on the way out.
        if self._interrupted:
            with suppress(StoreUnavailable, StoreMisconfigured):
                self.topology.run([lambda c: c.delete(self._interrupt_key)])


class PubSubWaits(Waits):
    """Cluster: the ``Waker``'s pub/sub thread wakes the waiters, who then claim."""

    def __init__(self, topology: Topology, clock: Clock, **callbacks: Any) -> None:
        super().__init__(topology, clock, **callbacks)
        self._waker = Waker(
            f"{topology.target.prefix}:wake:{secrets.token_hex(8)}",
            pubsub=topology.client.pubsub,
            publish=lambda channel: topology.run([lambda c: c.publish(channel, "")]),
            classify=topology.error,
        )

    def wait_and_claim(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str, timeout: float
    ) -> list[JobRecord]:
        """Wake by pub/sub, then claim; again after a stale wake."""
        deadline = time.monotonic() + timeout
        while self._sleep(queues, timeout) and limit > 0:
            if jobs := self._claim(queues, limit, lease_seconds, worker):
                return jobs
            timeout = self._until_due(deadline - time.monotonic(), self._heads(queues)[1])
            if timeout < 0.001:
                break
        return []

    def _block(self, queues: Sequence[str], timeout: float) -> bool:
        channels = {self.topology.keys(q).channel for q in queues}
        deadline = time.monotonic() + timeout

        def look() -> float | None:  # once subscribed: what happened before?
            ready, due = self._heads(queues)
            return -1.0 if ready else due

        return self._waker.wait(channels, deadline, look, self.clock)

    def interrupt(self) -> None:
        self._waker.interrupt()

    def close(self) -> None:
        self._waker.close()


def open_waits(
    topology: Topology, clock: Clock, *, claim: Claim, heads: Heads, claim_command: ClaimCommand
) -> Waits:
    """The idle waits ``topology`` allows: markers, or pub/sub in a Cluster."""
    kind = PubSubWaits if topology.wakes_by_pubsub else MarkerWaits
    return kind(topology, clock, claim=claim, heads=heads, claim_command=claim_command)


class Waker:
    """A pub/sub connection, read by one thread started on the first ``wait``:
    it counts messages per channel and wakes the waiters. Only that thread
    touches the connection. It retries, with back-off, while the store is
    unavailable; when the server refuses us for good (a wrong password, no
    permission for the channels...) it ends, and the waiters raise
    ``StoreMisconfigured`` (the next wait starts it again).

    What it needs is given, not looked up: ``pubsub()`` makes a redis-py
    PubSub, ``publish(channel)`` publishes on a channel (the waker's own, to
    wake its thread), and ``classify(exc)`` says what an error means
    (``Topology.error``)."""

    def __init__(
        self,
        private: str,
        *,
        pubsub: Callable[[], Any],
        publish: Callable[[str], Any],
        classify: Callable[[BaseException], BaseException],
    ) -> None:
        self._private = private  # the waker's own channel
        self._pubsub, self._publish, self._classify = pubsub, publish, classify
        self._cond = threading.Condition()
        self._hits: dict[str, int] = {}  # channel -> messages seen
        self._epoch = 0  # bumped by interrupt() and reconnects: every waiter returns
        self._interrupts = 0  # bumped by interrupt() only
        self._subscribed: set[str] = set()  # confirmed by the server
        self._wanted: set[str] = set()  # asked for, not sent yet
        self._thread: threading.Thread | None = None
        self._error: StoreMisconfigured | None = None  # why the thread ended, for the waiters
        self._pid = os.getpid()
        self._closed = False

    def _mark(self, channels: set[str]) -> tuple[int, int]:
        return self._epoch, sum(self._hits.get(c, 0) for c in channels)

    def _nudge(self) -> None:
        """Wake the reader thread: to subscribe, or to leave."""
        self._publish(self._private)

    def wait(
        self, channels: set[str], deadline: float, look: Callable[[], float | None], clock: Clock
    ) -> bool:
        """Subscribe to ``channels`` (once per process), call ``look()`` for the
        next due time, then sleep until a message, interrupt(), that time or
        ``deadline``. False when interrupt() was called meanwhile."""
        interrupts = self._interrupts
        self._wait(channels, deadline, look, clock)
        return self._interrupts == interrupts

    def _wait(
        self, channels: set[str], deadline: float, look: Callable[[], float | None], clock: Clock
    ) -> None:
        with self._cond:
            if self._pid != os.getpid():  # a forked child: the thread stayed behind
                self._thread, self._pid, self._subscribed = None, os.getpid(), set()
            mark = self._mark(channels)
            self._wanted |= channels - self._subscribed
            nudge = bool(self._wanted) and self._thread is not None
            if self._wanted and self._thread is None:
                self._error = None
                self._thread = threading.Thread(target=self._read, daemon=True)
                self._thread.start()
        if nudge:
            self._nudge()
        with self._cond:
            while not channels <= self._subscribed:
                self._raise_error()
                remaining = deadline - time.monotonic()
                if self._closed or self._epoch != mark[0] or not self._cond.wait(remaining):
                    return
        due = look()
        with self._cond:
            while not self._closed and self._mark(channels) == mark:
                self._raise_error()
                remaining = deadline - time.monotonic()
                if due is not None:
                    remaining = min(remaining, due - clock.now())
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def _raise_error(self) -> None:
        """In a waiter, holding the lock: raise why the reader thread ended, if it did."""
        if self._error is not None:  # a copy: waiters of several threads raise it at once
            raise StoreMisconfigured(str(self._error)) from None

    def interrupt(self) -> None:
        with self._cond:
            self._interrupts += 1
            self._epoch += 1
            self._cond.notify_all()

    def _reconnected(self, _connection: Any = None) -> None:
        # What was published while we were away is lost: every waiter looks again.
        with self._cond:
            self._epoch += 1
            self._subscribed.clear()
            self._cond.notify_all()

    def _read(self) -> None:
        pubsub, backoff = None, 0.05
        while not self._closed:
            with self._cond:
                wanted, self._wanted = self._wanted, set()
            try:
                if pubsub is None:
                    pubsub = self._pubsub()
                    pubsub.subscribe(self._private, *wanted)
                    pubsub.connection.register_connect_callback(self._reconnected)
                elif wanted:
                    pubsub.subscribe(*wanted)
                message = pubsub.get_message(timeout=1.0)  # also sends health checks
                backoff = 0.05
            except REDIS_ERRORS as exc:
                if pubsub is not None and pubsub.connection is None:
                    pubsub = None  # never connected: start over
                with self._cond:
                    self._wanted |= wanted
                error = self._classify(exc)
                if isinstance(error, StoreMisconfigured):  # retrying cannot help: tell the waiters
                    with self._cond:
                        self._error, self._thread = error, None
                        self._subscribed.clear()
                        self._cond.notify_all()
                    break
                self._reconnected()
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            with self._cond:
                if message and message["type"] == "subscribe":
                    self._subscribed.add(message["channel"])
                elif message and message["type"] == "message":
                    self._hits[message["channel"]] = self._hits.get(message["channel"], 0) + 1
                self._cond.notify_all()
        if pubsub is not None:
            with suppress(*REDIS_ERRORS):
                pubsub.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            with suppress(StoreUnavailable, StoreMisconfigured):
                self._nudge()  # else the reader leaves within a second on its own
            thread.join(timeout=1.0)
