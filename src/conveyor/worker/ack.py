"""Acknowledging: the one place where a finished job's outcome is written.

Outcomes are buffered as jobs end and written together on the fetch loop's
next store call (``write_and_claim``): failures (retry later, or dead) and
jobs given back unstarted first, then the completions, with the next claim
riding on the same call (``complete_and_claim``: a busy worker finishes a
batch and takes the next in one round trip). Nothing is dropped while the
store is unreachable: the buffers are kept, their leases renewed, and written
when it is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from conveyor.brokers.async_store import AsyncStore
from conveyor.brokers.base import JobRecord, Lease
from conveyor.clock import Clock
from conveyor.worker.execution import Outcome

log = logging.getLogger("conveyor.worker")

#: The longest a finished job's outcome waits to share a round trip with
#: others (seconds): a busy worker writes once per batch, never much later.
FLUSH_DELAY = 0.02


class Acknowledger:
    """The outcomes not written yet, and how they are written."""

    def __init__(self, store: AsyncStore, clock: Clock, batch: int = 1) -> None:
        self._store = store
        self._clock = clock
        self.batch = batch  # completions worth a round trip of their own
        self._first_at = 0.0  # loop time of the oldest completion not written
        self._completions: list[tuple[Lease, str]] = []
        self._failures: list[tuple[JobRecord, Lease, Outcome]] = []
        self._give_back: list[Lease] = []

    # -- as jobs end --------------------------------------------------------

    def completed(self, lease: Lease, result_json: str) -> None:
        if not self._completions:
            self._first_at = asyncio.get_running_loop().time()
        self._completions.append((lease, result_json))

    def failed(self, record: JobRecord, lease: Lease, outcome: Outcome) -> None:
        self._failures.append((record, lease, outcome))

    def give_back(self, leases: Sequence[Lease]) -> None:
        """Claimed jobs not to run here: released, no attempt spent."""
        self._give_back += leases

    # -- what is held -------------------------------------------------------

    def leases(self) -> list[Lease]:
        """Leases of jobs whose outcome is not written yet (kept renewed)."""
        held = [lease for lease, _ in self._completions]
        held += [lease for _, lease, _ in self._failures]
        return held + self._give_back

    def unwritten(self) -> int:
        return len(self._completions) + len(self._failures) + len(self._give_back)

    def must_write(self) -> bool:
        """Anything to write even when no slot is free to claim for."""
        return bool(self._completions or self._failures or self._give_back)

    def write_due(self, idle: bool) -> float | None:
        """Whether to write now without claiming: 0 when due, else the
        seconds until it will be (None: nothing to write). Failures and
        given-back jobs go at once, and everything when the worker is idle;
        completions once a batch is in, or FLUSH_DELAY after the first."""
        if self._failures or self._give_back or (idle and self._completions):
            return 0.0
        if not self._completions:
            return None
        if len(self._completions) >= self.batch:
            return 0.0
        waited = asyncio.get_running_loop().time() - self._first_at
        return max(0.0, FLUSH_DELAY - waited)

    # -- writing ------------------------------------------------------------

    async def write_and_claim(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str
    ) -> list[JobRecord]:
        """Write every buffered outcome, and claim up to ``limit`` jobs with
        the completions. On an error, what was not written stays buffered."""
        await self._write_failures()
        if self._give_back:
            leases, self._give_back = self._give_back, []
            try:
                await self._store.release(leases)
            except BaseException:
                self._give_back = leases + self._give_back
                raise
        if not self._completions and limit <= 0:
            return []
        done, self._completions = self._completions, []
        try:
            accepted, claimed = await self._store.complete_and_claim(
                done, queues, limit, lease_seconds, worker
            )
        except BaseException:
            self._completions = done + self._completions
            raise
        for (lease, _), ok in zip(done, accepted, strict=True):
            if not ok:
                log.warning(
                    "job %s finished after its lease was lost; result discarded", lease.job_id
                )
        return claimed

    async def _write_failures(self) -> None:
        """Failed runs (retry later, or dead), fenced one by one."""
        while self._failures:
            record, lease, outcome = self._failures[0]
            assert outcome.error is not None
            retry_at = None if outcome.retry_in is None else self._clock.now() + outcome.retry_in
            accepted = await self._store.fail(lease, outcome.error, retry_at)
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
