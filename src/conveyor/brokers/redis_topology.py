"""How this process reaches the Redis store: one server (or Sentinel), or a Cluster.

The operations (``redis_store``) and the waits (``redis_waits``) are written
once; where a Cluster must differ, they ask the ``Topology``, chosen once
from the URL (``open_topology``):

- ``ids_unique_across_queues``: on one server the enqueue script looks for a
  chosen id in every queue; in a Cluster the other queues live in other
  slots, so an id is unique within its queue only.
- ``register``: how ``enqueue`` adds its queues to ``P:queues``: the script
  does it (the SET is its KEYS[5]) on one server; in a Cluster, where that
  key lives in another slot, a SADD goes beside the scripts until one went
  through (``registered``).
- ``keys(queue).channel``: where the scripts PUBLISH new work: nowhere on one
  server (idle workers block on the markers), ``P:ready:<queue>`` in a
  Cluster, where one BZPOPMIN cannot watch keys of several slots.
- ``wakes_by_pubsub``: how an idle wait blocks (``redis_waits``): BZPOPMIN
  on the queues' markers, or the pub/sub ``Waker`` in a Cluster.
- ``thread_client`` and ``send``: one server sends single commands on this
  thread's own connection; a Cluster's go to the node of their slot.
- ``loop_pipelines``: whether commands can go out as one pipeline on a
  connection of their own whose replies an event loop reads
  (``SentPipeline``): not in a Cluster, whose commands go to several nodes.

Both share the plumbing: calls run in one round trip (``run``), scripts a
restarted server lost are loaded again (NOSCRIPT), and an error from Redis is
made conveyor's (``error``: ``redis_connection.store_error``), once one
happened.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

import hiredis
import redis
from redis.exceptions import NoScriptError

from conveyor.brokers.redis_connection import (
    REDIS_ERRORS,
    LoopConnections,
    Pipeline,
    SentPipeline,
    Target,
    connect,
    store_error,
)
from conveyor.brokers.redis_scripts import SOURCES, Command, QueueKeys
from conveyor.errors import StoreUnavailable

REPLY_MARGIN = 10.0  # seconds a pipeline's reply may take beyond any block, as its timeout
Call = Callable[[Any], Any]  # one command, given the client or a pipeline


def as_call(command: Command) -> Call:
    """A command as a call: execute_command, as redis-py refuses ``.evalsha()``
    in Cluster pipelines."""
    return lambda client: client.execute_command(*command)


class Topology:
    """The client, and what both topologies share; ``OneServer`` and
    ``Cluster`` say where they differ (the module docstring)."""

    ids_unique_across_queues: bool
    loop_pipelines: bool
    wakes_by_pubsub: bool

    def __init__(self, target: Target) -> None:
        self.target = target
        self.queues_key = f"{target.prefix}:queues"
        self.scripts_lost = False  # a wait's reply said NOSCRIPT: load them before the next
        self._keys: dict[str, QueueKeys] = {}
        self._loop_connections: LoopConnections | None = None
        try:
            self.client = connect(target)  # a Cluster client asks a node for the slots
        except REDIS_ERRORS as exc:
            self.raise_(exc)

    def keys(self, queue: str) -> QueueKeys:
        """The keys of ``queue`` (made once per queue)."""
        if (keys := self._keys.get(queue)) is None:
            keys = self._keys[queue] = QueueKeys.of(self.target.prefix, queue, self.channel(queue))
        return keys

    # -- where the topologies differ ------------------------------------------

    def channel(self, queue: str) -> str:
        """Where the scripts PUBLISH that ``queue`` has work ('' = nowhere)."""
        raise NotImplementedError

    def register(self, queues: Iterable[str]) -> tuple[list[Command], str | None]:
        """How an enqueue adds ``queues`` to ``P:queues``: (commands sent before
        the scripts, the SET to give the enqueue script as KEYS[5] or None)."""
        raise NotImplementedError

    def registered(self, queues: Iterable[str]) -> None:
        """An enqueue's replies were read: its queues are in ``P:queues``."""

    def thread_client(self) -> Any:
        """The client for single commands from this thread."""
        raise NotImplementedError

    def send(self, commands: Sequence[Command]) -> Callable[[], list[Any]]:
        """Send ``commands`` now, if this topology can; the returned function
        reads their replies (it must be called, whatever happens). One round
        trip, as a pipeline, while the calling thread goes on."""
        raise NotImplementedError

    # -- the plumbing both share ----------------------------------------------

    def run(self, calls: Sequence[Call]) -> list[Any]:
        """Run calls in one round trip, in order; a script the server lost is loaded again."""
        try:
            if len(calls) <= 1:
                return [self.noscript(call) for call in calls]
            pipe = self.client.pipeline(transaction=False)
            for call in calls:
                call(pipe)
            return self.settle(calls, pipe.execute(raise_on_error=False))
        except REDIS_ERRORS as exc:
            self.raise_(exc)

    def execute(self, commands: Sequence[Command]) -> list[Any]:
        """``run`` for commands given as tuples."""
        return self.run(list(map(as_call, commands)))

    def settle(self, calls: Sequence[Call], replies: list[Any]) -> list[Any]:
        """The replies of ``calls`` sent together: a script the server lost
        (NOSCRIPT: it did nothing) is run again; another error is raised."""
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                replies[i] = self.noscript(calls[i])
            elif isinstance(reply, Exception):
                self.raise_(reply)
        return replies

    def noscript(self, call: Call) -> Any:
        """Run one call on this thread's connection; a script the server lost
        is loaded again. Errors are raised as ``error`` makes them: this is
        also how the replies of ``send`` and the loop-read calls rerun one."""
        try:
            client = self.thread_client()
            try:
                return call(client)
            except NoScriptError:
                self.load_scripts()
                return call(client)
        except REDIS_ERRORS as exc:
            self.raise_(exc)

    def load_scripts(self) -> None:
        try:
            for source in SOURCES.values():
                self.client.script_load(source)  # on every primary of a Cluster
        except REDIS_ERRORS as exc:  # e.g. a user who may run scripts but not load them
            self.raise_(exc)
        self.scripts_lost = False

    def error(self, exc: BaseException) -> BaseException:
        """What to raise for an error from Redis: the conveyor error it means
        (``store_error``: StoreMisconfigured or StoreUnavailable), else
        ``exc`` itself, a raw reply of the loop-read path as redis-py's
        ResponseError. Only ever called once something went wrong."""
        if (error := store_error(exc, self.target, getattr(self, "client", None))) is not None:
            return error
        return redis.ResponseError(str(exc)) if isinstance(exc, hiredis.ReplyError) else exc

    def raise_(self, exc: BaseException) -> NoReturn:
        """Raise what ``error`` makes of ``exc`` (chained to it, when it is another)."""
        error = self.error(exc)
        if error is exc:
            raise exc
        raise error from exc

    def send_pipeline(self, pipeline: Pipeline) -> SentPipeline:
        """``pipeline`` sent now, on a connection of its own, for a thread or
        an event loop to read; only where ``loop_pipelines``."""
        if self._loop_connections is None:
            self._loop_connections = LoopConnections(self.client.connection_pool)
        return SentPipeline(self._loop_connections, pipeline)

    def connect_raw(self) -> Any:
        """A new connection made for an event loop to own (its handshake done:
        AUTH, SELECT, TLS), outside redis-py's pool; only where ``loop_pipelines``."""
        conn = self.client.connection_pool.make_connection()
        conn.connect()
        return conn

    def close(self) -> None:
        if self._loop_connections is not None:
            self._loop_connections.close()
        self.client.close()


class OneServer(Topology):
    """One server, or the master Sentinel names: every key in one place."""

    ids_unique_across_queues = True
    loop_pipelines = True
    wakes_by_pubsub = False  # BZPOPMIN on the queues' markers

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._local = threading.local()

    def channel(self, queue: str) -> str:
        return ""  # idle workers block on the marker: no one listens

    def register(self, queues: Iterable[str]) -> tuple[list[Command], str | None]:
        return [], self.queues_key  # the script adds its queue, in the same step

    def thread_client(self) -> Any:
        """This thread's own connection: taking one from the pool for every
        command costs a check of the socket, a quarter of a round trip here."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # new thread, or a forked child
            local.client = redis.Redis(
                connection_pool=self.client.connection_pool, single_connection_client=True
            )
            local.pid = os.getpid()
        return local.client

    def send(self, commands: Sequence[Command]) -> Callable[[], list[Any]]:
        """On this thread's connection: the server runs them while the thread
        goes on."""
        calls = list(map(as_call, commands))
        try:
            connection = self.thread_client().connection
        except REDIS_ERRORS as exc:
            self.raise_(exc)
        packed = [hiredis.pack_command(command) for command in commands]

        def send() -> None:
            try:
                connection.send_packed_command(packed)
            except REDIS_ERRORS as exc:
                connection.disconnect()
                self.raise_(exc)

        def collect() -> list[Any]:
            replies: list[Any] = []
            try:
                for _ in commands:
                    try:
                        replies.append(connection.read_response())
                    except redis.ResponseError as exc:
                        replies.append(exc)
            except REDIS_ERRORS as exc:
                connection.disconnect()
                self.raise_(exc)
            return replies

        def read() -> list[Any]:
            try:
                replies = collect()
            except StoreUnavailable:  # a connection the server had closed: as redis-py's
                send()  # retry, once more on a new one (the scripts are safe to repeat)
                replies = collect()
            return self.settle(calls, replies)

        try:
            send()
        except StoreUnavailable:
            send()
        return read


class Cluster(Topology):
    """Redis Cluster: each queue's keys in its own slot, on some node."""

    ids_unique_across_queues = False  # no single atomic step sees every queue
    loop_pipelines = False  # a pipeline's commands go to several nodes
    wakes_by_pubsub = True  # one BZPOPMIN cannot watch keys of several slots

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._added: frozenset[str] = frozenset()  # queues this process added to P:queues

    def channel(self, queue: str) -> str:
        return f"{self.target.prefix}:ready:{queue}"

    def register(self, queues: Iterable[str]) -> tuple[list[Command], str | None]:
        # The scripts cannot reach P:queues (another slot): a SADD beside them,
        # until one went through (a SADD lost with its enqueue goes again).
        if not (new := set(queues) - self._added):
            return [], None
        return [("SADD", self.queues_key, *new)], None

    def registered(self, queues: Iterable[str]) -> None:
        self._added |= set(queues)

    def thread_client(self) -> Any:
        return self.client  # its commands go to different nodes

    def send(self, commands: Sequence[Command]) -> Callable[[], list[Any]]:
        """As a pipeline when the replies are read."""
        calls = list(map(as_call, commands))
        return lambda: self.run(calls)


def open_topology(target: Target) -> Topology:
    """The topology the URL names, connected."""
    return Cluster(target) if target.cluster else OneServer(target)
