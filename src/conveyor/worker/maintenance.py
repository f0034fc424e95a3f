"""Maintenance: what every worker does now and then for the whole store.

Every ``interval`` seconds of the app's clock: recover the jobs whose worker
died (their lease expired: back to waiting, or dead after too many stalls),
then trim ended jobs of the worker's queues by their retention settings.
Every worker does it, so it goes on as long as one runs; each step is one
atomic store call, so several workers doing it at once is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from conveyor.app import Conveyor
from conveyor.brokers.async_store import AsyncStore
from conveyor.worker.control import Control

log = logging.getLogger("conveyor.worker")


class Maintainer:
    def __init__(
        self,
        app: Conveyor,
        store: AsyncStore,
        queues: Sequence[str],
        max_stalled: int,
        interval: float,
        control: Control,
    ) -> None:
        self.app = app
        self._store = store
        self.queues = list(queues)
        self.max_stalled = max_stalled
        self.interval = interval
        self._control = control

    async def run(self) -> None:
        while True:
            try:
                await self.maintain()
            except Exception as exc:  # a deleted SQLite file is fatal, an outage is not
                if self._control.fatal(exc, "in maintenance"):
                    return
                log.error("maintenance failed: %s", exc)
            await self.app.clock.sleep(self.interval)

    async def maintain(self) -> None:
        """Recover jobs of dead workers; trim ended jobs by retention."""
        for recovered in await self._store.recover(self.max_stalled):
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
                    await self._store.trim(name, state, keep, older_than)
