"""What the worker's parts share: whether it is stopping, and why.

Every part may end the run: a signal (``stop``), the store refusing the
worker for good, too many stuck threads, a bug of ours (``abort``). The exit
status says which, so a supervisor can tell them apart.
"""

from __future__ import annotations

import asyncio
import logging

from conveyor.errors import StoreMisconfigured, StoreUnavailable

log = logging.getLogger("conveyor.worker")

# What ``Worker.run`` returns (the ``conveyor worker`` exit status).
EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1  # a bug in conveyor (or a broken store): logged with its traceback
EXIT_STORE_REFUSED = 2  # the store refuses us for good (StoreMisconfigured): fix the set-up
EXIT_STUCK_THREADS = 3  # too many sync jobs stuck past their timeout: restart the worker


class Control:
    """The stop state of one worker run; made inside its event loop.

    ``wake`` is set whenever the fetch loop should look again (a job ended,
    a stop); ``stopping``: claim nothing more; ``forced``: skip the grace
    period; ``exit_code``: what ``run`` returns."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.forced = asyncio.Event()
        self.exit_code = EXIT_OK

    def stop(self, exit_code: int = EXIT_OK) -> None:
        """Begin a graceful shutdown; a second call skips the grace period."""
        if exit_code != EXIT_OK:
            self.exit_code = exit_code
        if self.stopping.is_set():
            log.warning("second stop signal: releasing active jobs now")
            self.forced.set()
        self.stopping.set()
        self.wake.set()

    def abort(self, exit_code: int) -> None:
        """Stop at once, no grace period (the caller logged why)."""
        self.exit_code = exit_code
        self.stopping.set()
        self.forced.set()
        self.wake.set()

    def fatal(self, exc: Exception, doing: str) -> bool:
        """Whether an error of one of the worker's loops ends the run; errors
        told apart here, once. An unreachable store (``StoreUnavailable``)
        does not: the caller retries. A store that refuses us for good stops
        the worker (exit 2, one line); anything else is a bug, logged with its
        traceback (exit 1), never retried as if it were an outage."""
        if isinstance(exc, StoreUnavailable):
            return False
        if isinstance(exc, StoreMisconfigured):
            log.error("stopping: %s", exc)
            self.abort(EXIT_STORE_REFUSED)
        else:
            log.error("stopping: an unexpected error %s (a bug to report)", doing, exc_info=exc)
            self.abort(EXIT_INTERNAL_ERROR)
        return True
