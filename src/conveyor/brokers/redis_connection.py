"""Reaching Redis: URLs, clients, the idle wait's connection, and the pub/sub
thread that wakes idle workers in a Cluster.

The Redis store (``redis_store``) keeps the contract's operations; this module
keeps what is about connections: checking a URL without connecting, building
the redis-py client for one server, Sentinel or Cluster, ``SentPipeline`` and
``Waker``.
"""

from __future__ import annotations

import inspect
import os
import secrets
import select
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import hiredis
import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from conveyor.clock import Clock
from conveyor.errors import ConfigurationError, StoreUnavailable

if TYPE_CHECKING:
    from conveyor.brokers.redis_store import RedisBroker

REDIS_OPTIONS = {  # what redis-py takes from a URL's query: its connections' arguments
    name
    for cls in (redis.connection.Connection, redis.connection.SSLConnection)
    for klass in cls.__mro__
    if "__init__" in vars(klass)
    for name in inspect.signature(klass.__init__).parameters
} - {"self", "kwargs", "args"}
SENTINEL_FORM = "write redis+sentinel://host:port[,host:port]/service_name[/db]"


class Target(NamedTuple):
    url: str  # for redis-py: conveyor's own options taken out
    safe: str  # for messages: the password masked
    prefix: str
    cluster: bool
    sentinels: list[tuple[str, int]] | None
    db: int


def mask(url: str) -> str:
    parts = urlsplit(url)
    user, at, hosts = parts.netloc.rpartition("@")
    if not at and "password" not in parts.query:
        return url
    netloc = f"{user.partition(':')[0]}:***@{hosts}" if at and ":" in user else parts.netloc
    query = [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query, True)]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="*"), ""))


def parse_url(url: str) -> Target:
    """Check a Redis URL without connecting; ConfigurationError says what is wrong."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in ("prefix", "cluster")}
    parts = parts._replace(query=urlencode([(k, v) for k, v in query if k not in ours]))
    prefix, cluster = ours.get("prefix", "conveyor"), ours.get("cluster", "0").lower()
    hosts, path = parts.netloc.rpartition("@")[2], [p for p in parts.path.split("/") if p]
    sentinels, db, problem = None, 0, None
    try:
        if parts.scheme.lower() == "redis+sentinel":
            problem = SENTINEL_FORM
            sentinels = [
                (h.rpartition(":")[0], int(h.rpartition(":")[2])) for h in hosts.split(",")
            ]
            db = int(path[1]) if len(path) == 2 else 0
            if 1 <= len(path) <= 2 and all(host for host, _ in sentinels):
                problem = "Sentinel URLs take no option but prefix" if parts.query else None
        elif not hosts or len(path) > 1 or (path and not path[0].isdigit()):
            problem = "write redis://host[:port][/db] (db a number)"
        elif unknown := [k for k, _ in parse_qsl(parts.query) if k not in REDIS_OPTIONS]:
            problem = f"unknown option {unknown[0]!r} (conveyor's: prefix, cluster)"
        else:
            db = int(redis.connection.parse_url(urlunsplit(parts)).get("db", 0))
    except ValueError as exc:
        problem = problem or str(exc)
    if problem is None and (not prefix or "{" in prefix or "}" in prefix):
        problem = "prefix must be a non-empty name without { or }"
    elif problem is None and cluster not in ("0", "1"):
        problem = "cluster must be 1 or 0"
    elif problem is None and cluster == "1" and (sentinels or db):
        problem = "cluster=1 goes with redis:// or rediss:// and database 0"
    if problem:
        raise ConfigurationError(f"bad store URL {mask(url)!r}: {problem}")
    return Target(urlunsplit(parts), mask(url), prefix, cluster == "1", sentinels, db)


def connect(target: Target) -> Any:
    """The client: short timeouts, health checks, and a brief retry over a blip."""
    options: dict[str, Any] = {
        "decode_responses": True, "socket_timeout": 10.0, "socket_connect_timeout": 5.0,
        "socket_keepalive": True, "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
    }  # fmt: skip
    if target.cluster:
        return RedisCluster.from_url(target.url, **options)
    if target.sentinels is None:
        return redis.Redis.from_url(target.url, **options)
    parts = urlsplit(target.url)
    service = unquote(parts.path.split("/")[1])
    auth = {"username": unquote(parts.username or "") or None,
            "password": unquote(parts.password or "") or None}  # fmt: skip
    timeouts = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}
    sentinel = Sentinel(target.sentinels, sentinel_kwargs=timeouts)
    return sentinel.master_for(service, db=target.db, **auth, **options)


class SentPipeline:
    """Commands sent now on a connection of their own, whose replies are read
    without ever blocking: ``poll()`` takes what has arrived and returns None
    until every reply is in, then ``finish(replies)``. An event loop watches
    ``fileno()`` and polls when it is readable, so an idle worker's wait
    needs no thread, and its job reaches the loop with no hop between
    threads; ``wait()`` is the same for a thread.

    The connection comes from redis-py's pool and goes back once the replies
    are read (dropped, if the pipeline is closed before). No reply within
    ``reply_within`` seconds: the store is unreachable. Errors are raised as
    ``failed(exc)`` makes them.
    """

    def __init__(
        self,
        pool: Any,
        commands: Sequence[tuple[Any, ...]],
        reply_within: float,
        finish: Callable[[list[Any]], Any],
        failed: Callable[[Exception], Exception],
    ) -> None:
        self._pool, self._count, self._finish, self._failed = pool, len(commands), finish, failed
        self._deadline = time.monotonic() + reply_within
        self._reader = hiredis.Reader(encoding="utf-8")  # as the client's decode_responses
        self._replies: list[Any] = []
        self._conn = None
        try:
            self._conn = pool.get_connection()
            self._conn.send_packed_command([hiredis.pack_command(c) for c in commands])
            self._sock = self._conn._sock  # redis-py keeps no public name for it
            self._timeout = self._sock.gettimeout()
            self._sock.settimeout(0)
        except redis.RedisError as exc:
            self.close()
            raise failed(exc) from exc
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def poll(self) -> Any:
        """None while replies are missing; then ``finish(replies)``, once."""
        if self._conn is None:
            raise RuntimeError("this pipeline is closed")
        try:
            while True:  # everything the socket holds (and a TLS layer decrypted)
                try:
                    data = self._sock.recv(65536)
                except (BlockingIOError, ssl.SSLWantReadError):
                    break
                if not data:
                    raise redis.ConnectionError("Connection closed by server.")
                self._reader.feed(data)
            while (reply := self._reader.gets()) is not False:
                self._replies.append(reply)
            if len(self._replies) < self._count:
                if time.monotonic() > self._deadline:
                    raise redis.TimeoutError("no reply from the server in time")
                return None
        except (OSError, hiredis.ProtocolError, redis.RedisError) as exc:
            self.close()
            raise self._failed(exc) from exc
        self._sock.settimeout(self._timeout)
        self._pool.release(self._conn)
        self._conn = None
        return self._finish(self._replies)

    def seconds_left(self) -> float:
        """Until the replies are late: poll then, if nothing woke the caller before."""
        return max(0.0, self._deadline - time.monotonic())

    def wait(self) -> Any:
        """``poll`` until done, blocked in the OS meanwhile (for a thread)."""
        poller = select.poll()
        poller.register(self.fileno(), select.POLLIN)
        while (result := self.poll()) is None:
            poller.poll(self.seconds_left() * 1000 + 1)
        return result

    def close(self) -> None:
        """Give up on the replies: the connection is dropped (idempotent)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.disconnect()
            self._pool.release(conn)


class Waker:
    """The broker's pub/sub connection, read by one thread started on the first
    ``wait_for_work``: it counts messages per channel and wakes the waiters.
    Only that thread touches the connection."""

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker
        self._cond = threading.Condition()
        self._hits: dict[str, int] = {}  # channel -> messages seen
        self._epoch = 0  # bumped by interrupt() and reconnects: every waiter returns
        self._interrupts = 0  # bumped by interrupt() only
        self._subscribed: set[str] = set()  # confirmed by the server
        self._wanted: set[str] = set()  # asked for, not sent yet
        self._private = f"{broker.target.prefix}:wake:{secrets.token_hex(8)}"
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False

    def _mark(self, channels: set[str]) -> tuple[int, int]:
        return self._epoch, sum(self._hits.get(c, 0) for c in channels)

    def _nudge(self) -> None:
        """Wake the reader thread: to subscribe, or to leave."""
        self._broker._run([lambda c: c.publish(self._private, "")])

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
                self._thread = threading.Thread(target=self._read, daemon=True)
                self._thread.start()
        if nudge:
            self._nudge()
        with self._cond:
            while not channels <= self._subscribed:
                remaining = deadline - time.monotonic()
                if self._closed or self._epoch != mark[0] or not self._cond.wait(remaining):
                    return
        due = look()
        with self._cond:
            while not self._closed and self._mark(channels) == mark:
                remaining = deadline - time.monotonic()
                if due is not None:
                    remaining = min(remaining, due - clock.now())
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

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
                    pubsub = self._broker._r.pubsub()
                    pubsub.subscribe(self._private, *wanted)
                    pubsub.connection.register_connect_callback(self._reconnected)
                elif wanted:
                    pubsub.subscribe(*wanted)
                message = pubsub.get_message(timeout=1.0)  # also sends health checks
                backoff = 0.05
            except (redis.RedisError, OSError):
                if pubsub is not None and pubsub.connection is None:
                    pubsub = None  # never connected: start over
                with self._cond:
                    self._wanted |= wanted
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
            pubsub.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            with suppress(StoreUnavailable):
                self._nudge()  # else the reader leaves within a second on its own
            thread.join(timeout=1.0)
