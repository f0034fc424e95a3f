"""The Redis store behind the worker's door: connections the event loop owns.

On one server or behind Sentinel, the busy worker's complete-and-claim and
the idle worker's wait go out as pipelines on connections of the event
loop's own: each made once (the handshake on the store thread), then kept
as an asyncio transport. A pipeline costs one write and one read, done by
the loop with no thread hop either way, and, on uvloop, without the loop
ever giving up the GIL for its own socket calls: on a worker whose job
threads call blocking clients, every time the loop lets go of the GIL it
queues behind them to get it back. The claimed jobs reach the loop with no
hop between threads (worth a quarter of the drain of jobs that each await
one Redis command, and more beside plain-function jobs).

The busy calls and the idle wait use two connections: a wait blocks its own
in BZPOPMIN. Over TLS (redis-py's socket is already wrapped, which asyncio
cannot take over) the same pipelines are read from redis-py's socket
(``SentPipeline``). Every other call, and these two where a pipeline does
not apply (a Cluster, a worker of several queues, scripts the server lost),
go through the threads of ``AsyncStore``; so does complete-and-claim while
the store is unreachable, and it comes back to the loop once a call
through the thread has worked.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import hiredis

from conveyor.brokers.async_store import AsyncStore
from conveyor.brokers.redis_connection import Pipeline, SentPipeline, as_connection_error
from conveyor.errors import StoreUnavailable

if TYPE_CHECKING:
    from conveyor.brokers.base import JobRecord, Lease
    from conveyor.brokers.redis_store import RedisBroker


class RedisAsyncStore(AsyncStore):
    broker: RedisBroker

    def __init__(self, broker: RedisBroker) -> None:
        super().__init__(broker)
        self._down = False  # the last call failed as unreachable: use the thread
        self._busy: _Pipe | None = None  # complete-and-claim's connection
        self._wait_pipe: _Pipe | None = None  # the idle wait's

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
            plan = None if self._down else self.broker.plan_complete_and_claim(*args)
            if plan is None:
                result = await super().complete_and_claim(*args)
            else:
                self._busy = await self._pipe(self._busy)
                result = await self._run(self._busy, plan)
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
        # Planned on the store thread: it may load scripts the server lost.
        args = (queues, limit, lease_seconds, worker, timeout)
        plan = await self._call(self.broker.plan_wait, *args)
        if plan is None:
            return await super().wait_and_claim(*args)
        try:
            self._wait_pipe = await self._pipe(self._wait_pipe)
        except BaseException as exc:
            raise plan.failed(exc) from exc  # the wait counts as over
        claimed: list[JobRecord] = await self._run(self._wait_pipe, plan)
        return claimed

    async def _pipe(self, pipe: _Pipe | None) -> _Pipe:
        """``pipe``, or a new one if it is gone: connected (the handshake,
        blocking, on the store thread), then handed to this loop."""
        if pipe is not None and not pipe.closed:
            return pipe
        try:
            conn = await self._call(self.broker.topology.connect_raw)
        except Exception as exc:
            raise self.broker.topology.error(as_connection_error(exc)) from exc
        return await _Pipe.take_over(conn, self.broker)

    async def _run(self, pipe: _Pipe, plan: Pipeline) -> Any:
        try:
            replies = await pipe.call(plan)
        except asyncio.CancelledError:
            pipe.close()  # its replies would come out of turn: drop the connection
            plan.failed(asyncio.CancelledError())
            raise
        except Exception as exc:
            pipe.close()
            error = plan.failed(as_connection_error(exc))
            if error is exc:
                raise
            raise error from exc
        return plan.finish(replies)

    def close(self) -> None:
        for pipe in (self._busy, self._wait_pipe):
            if pipe is not None:
                pipe.close()
        super().close()


class _Pipe(asyncio.Protocol):
    """One connection the event loop owns: pipelines written to it are
    answered in order. Over TLS, a thin stand-in that sends each pipeline on
    redis-py's own socket (``SentPipeline``) and reads it from the loop."""

    def __init__(self) -> None:
        self.closed = False
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(encoding="utf-8")  # as the client's decode_responses
        self._waiting: deque[tuple[int, list[Any], asyncio.Future[list[Any]]]] = deque()
        self._sent: _SentPipe | None = None

    @classmethod
    async def take_over(cls, conn: Any, broker: RedisBroker) -> _Pipe:
        sock = conn._sock  # redis-py keeps no public name for it
        if isinstance(sock, ssl.SSLSocket):
            pipe = cls()
            pipe._sent = _SentPipe(broker)
            conn.disconnect()
            return pipe
        conn._sock = None  # it is the loop's now: redis-py must not close it
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        _, pipe = await loop.create_connection(cls, sock=sock)
        return pipe

    async def call(self, plan: Pipeline) -> list[Any]:
        """Send ``plan``'s commands; their replies, in order."""
        if self._sent is not None:
            result: list[Any] = await self._sent.call(plan)
            return result
        if self.closed or self._transport is None:
            raise ConnectionError("the connection is closed")
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append((len(plan.commands), [], future))
        self._transport.write(plan.packed())
        return await asyncio.wait_for(future, plan.reply_within)

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is one, unregistered

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        while (reply := self._reader.gets()) is not False:
            if not waiting:  # a reply nobody waits for: out of step, give up
                self.close()
                return
            count, replies, future = waiting[0]
            replies.append(reply)
            if len(replies) == count:
                waiting.popleft()
                if not future.done():
                    future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        error = ConnectionError(f"the connection was lost: {exc or 'closed by the server'}")
        while self._waiting:
            _, _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


class _SentPipe:
    """TLS: each pipeline sent on a pooled connection of redis-py's, its
    replies read by the loop when its socket is readable."""

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker

    async def call(self, plan: Pipeline) -> list[Any]:
        replies: list[Any] = []

        def keep(read: list[Any]) -> list[Any]:
            replies.extend(read)
            return read

        sent = self._broker.topology.send_pipeline(
            Pipeline(plan.commands, plan.reply_within, keep, _same)
        )
        await _read(sent)
        return replies


def _same(exc: BaseException) -> BaseException:
    return exc


async def _read(sent: SentPipeline) -> Any:
    """The result of a pipeline already sent, read by this event loop when its
    socket is readable (and when its reply is due at the latest). Cancelling
    the await abandons it (its connection is dropped)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    fd = sent.fileno()
    late: asyncio.TimerHandle
    watching = True

    def stop_watching() -> None:
        # At once, in the same callback as the last read: that read gave the
        # connection back, and the next pipeline on this loop may take it
        # (the same fd) and watch it before this coroutine runs again; a
        # remove_reader then would silence that pipeline's reader.
        nonlocal watching
        if watching:
            watching = False
            loop.remove_reader(fd)
            late.cancel()

    def check() -> None:
        nonlocal late
        if future.done():
            return
        try:
            result = sent.poll()
        except Exception as exc:  # the store went away: the caller says so
            stop_watching()
            future.set_exception(exc)
            return
        if result is not None:
            stop_watching()
            future.set_result(result)
        else:  # not yet: look again when the reply is due at the latest
            late.cancel()
            late = loop.call_later(sent.seconds_left() + 0.01, check)

    loop.add_reader(fd, check)
    late = loop.call_later(sent.seconds_left() + 0.01, check)
    try:
        return await future
    finally:
        stop_watching()  # cancelled: nothing was given back, the fd is still ours
        sent.close()  # does nothing once its replies were read
