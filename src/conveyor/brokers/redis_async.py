"""The Redis store behind the worker's door: replies the event loop reads itself.

On one server or behind Sentinel, the busy worker's complete-and-claim and
the idle worker's wait go out as pipelines on pooled connections
(``SentPipeline``), and the worker's event loop watches their sockets: the
claimed jobs reach the loop with no thread hop either way. That is worth a
quarter of the drain of jobs that each await one Redis command.

Every other call, and these two where the pipeline does not apply (a
Cluster, a worker of several queues, scripts the server lost), go through
the threads of ``AsyncStore``. So does complete-and-claim while the store is
unreachable: connecting again could block the loop; it comes back to the
loop once a call through the thread has worked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor.brokers.async_store import AsyncStore
from conveyor.errors import StoreUnavailable

if TYPE_CHECKING:
    from conveyor.brokers.base import JobRecord, Lease
    from conveyor.brokers.redis_connection import SentPipeline
    from conveyor.brokers.redis_store import RedisBroker


class RedisAsyncStore(AsyncStore):
    broker: RedisBroker

    def __init__(self, broker: RedisBroker) -> None:
        super().__init__(broker)
        self._down = False  # the last call failed as unreachable: use the thread

    async def complete_and_claim(
        self,
        done: Sequence[tuple[Lease, str]],
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker: str,
    ) -> tuple[list[bool], list[JobRecord]]:
        args = (done, queues, limit, lease_seconds, worker)
        try:
            sent = None if self._down else self.broker.send_complete_and_claim(*args)
            if sent is None:
                result = await super().complete_and_claim(*args)
            else:
                result = await _read(sent)
        except StoreUnavailable:
            self._down = True
            raise
        self._down = False
        return result

    async def wait_and_claim(
        self,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker: str,
        timeout: float,
    ) -> list[JobRecord]:
        # Sent from the store thread: it may connect, or load lost scripts.
        args = (queues, limit, lease_seconds, worker, timeout)
        sent = await self._call(self.broker.send_wait, *args)
        if sent is None:
            return await super().wait_and_claim(*args)
        claimed: list[JobRecord] = await _read(sent)
        return claimed


async def _read(sent: SentPipeline) -> Any:
    """The result of a pipeline already sent, read by this event loop when its
    socket is readable (and when its reply is due at the latest). Cancelling
    the await abandons it (its connection is dropped)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    fd = sent.fileno()
    late: asyncio.TimerHandle

    def check() -> None:
        nonlocal late
        if future.done():
            return
        try:
            result = sent.poll()
        except Exception as exc:  # the store went away, or refused: the caller says so
            future.set_exception(exc)
            return
        if result is not None:
            future.set_result(result)
        else:  # not yet: look again when the reply is due at the latest
            late.cancel()
            late = loop.call_later(sent.seconds_left() + 0.01, check)

    loop.add_reader(fd, check)
    late = loop.call_later(sent.seconds_left() + 0.01, check)
    try:
        return await future
    finally:
        loop.remove_reader(fd)
        late.cancel()
        sent.close()  # does nothing once its replies were read
