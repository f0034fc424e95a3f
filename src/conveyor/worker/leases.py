"""Lease renewal: while jobs run, their leases are pushed back, all in one call.

Every ``lease / 3`` seconds of the app's clock, the worker extends every
lease it holds (running jobs, and outcomes not written yet) in one store
call. A job whose lease was lost anyway (the worker was frozen longer than
the lease) is logged: another worker may run it now, and the fencing token
makes sure only one of them can record an outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from conveyor.brokers.async_store import AsyncStore
from conveyor.brokers.base import Lease
from conveyor.clock import Clock
from conveyor.worker.control import Control

log = logging.getLogger("conveyor.worker")


class LeaseKeeper:
    def __init__(
        self,
        store: AsyncStore,
        clock: Clock,
        lease: float,
        held: Callable[[], list[Lease]],
        control: Control,
    ) -> None:
        self._store = store
        self._clock = clock
        self.lease = lease
        self._held = held
        self._control = control

    async def run(self) -> None:
        while True:
            await self._clock.sleep(self.lease / 3)
            held = self._held()
            if not held:
                continue
            try:
                lost = await self._store.extend(held, self.lease)
            except Exception as exc:
                if self._control.fatal(exc, "renewing leases"):
                    return
                log.error("could not renew %d leases: %s", len(held), exc)
                continue
            # A job whose outcome was written while the renewal was on its
            # way (the fetch loop writes on its own) no longer has a lease to
            # lose: only the jobs still held here are news.
            if not lost:
                continue
            still_held = {lease.job_id for lease in self._held()}
            for job_id in lost:
                if job_id in still_held:
                    log.warning("lost the lease on job %s: another worker may run it", job_id)
