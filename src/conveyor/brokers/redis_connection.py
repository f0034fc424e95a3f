"""Reaching Redis: URLs, clients, what an error from Redis means, and
pipelines an event loop reads.

The Redis store (``redis_store``) keeps the contract's operations; this module
keeps what is about connections: checking a URL without connecting
(``parse_url``, ``Target``), building the redis-py client for one server,
Sentinel or Cluster (``connect``), telling what an error from Redis means
(``store_error``), and ``SentPipeline``. It imports nothing of the other
Redis modules: they build on it.
"""

from __future__ import annotations

import inspect
import os
import select
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import hiredis
import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    BusyLoadingError,
    ClusterCrossSlotError,
    ClusterDownError,
    ClusterError,
    MasterDownError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from conveyor.brokers import mask
from conveyor.errors import ConfigurationError, StoreMisconfigured, StoreUnavailable

REDIS_OPTIONS = {  # what redis-py takes from a URL's query: its connections' arguments
    name
    for cls in (redis.connection.Connection, redis.connection.SSLConnection)
    for klass in cls.__mro__
    if "__init__" in vars(klass)
    for name in inspect.signature(vars(klass)["__init__"]).parameters
} - {"self", "kwargs", "args"}
SENTINEL_FORM = "write redis+sentinel://host:port[,host:port]/service_name[/db]"


class Target(NamedTuple):
    url: str  # for redis-py: conveyor's own options taken out
    safe: str  # for messages: the password masked
    prefix: str
    cluster: bool
    sentinels: list[tuple[str, int]] | None
    db: int


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
            redis_parse: Any = redis.connection.parse_url  # untyped in redis-py
            db = int(redis_parse(urlunsplit(parts)).get("db", 0))
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


class BlipRetry(Retry):
    """redis-py's retry over a blip, but none over a refused login: redis-py
    makes AuthenticationError a ConnectionError, so a wrong or missing
    password was tried again and again (up to seconds) before anyone was
    told. Every command passes here: the first attempt runs bare (as cheap
    as redis-py's own loop); only after a blip does redis-py's retry take
    over, from the start, with its clean-up and back-off."""

    def call_with_retry(
        self, do: Callable[[], Any], fail: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        try:
            return do()
        except AuthenticationError:
            raise  # refused for good: StoreMisconfigured
        except self._supported_errors:
            pass
        return super().call_with_retry(do, fail, *args, **kwargs)


def connect(target: Target) -> Any:
    """The client: short timeouts, health checks, and a brief retry over a blip."""
    options: dict[str, Any] = {
        "decode_responses": True, "socket_timeout": 10.0, "socket_connect_timeout": 5.0,
        "socket_keepalive": True, "health_check_interval": 15,
        "retry": BlipRetry(ExponentialBackoff(cap=0.5, base=0.05), 3),
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
    make_sentinel: Any = Sentinel  # untyped in redis-py
    sentinel = make_sentinel(target.sentinels, sentinel_kwargs=timeouts)
    return sentinel.master_for(service, db=target.db, **auth, **options)


# -- what an error from Redis means ------------------------------------------

#: What may raise when conveyor talks to Redis (RedisClusterException is no RedisError).
REDIS_ERRORS = (redis.RedisError, RedisClusterException, OSError, hiredis.ProtocolError)
#: Reply codes redis-py turns into classes (and takes off the message), most
#: specific class first. A raw reply read by ``SentPipeline`` keeps its code.
CODE_OF = ((NoScriptError, "NOSCRIPT"), (NoPermissionError, "NOPERM"), (OutOfMemoryError, "OOM"),
           (ReadOnlyError, "READONLY"), (BusyLoadingError, "LOADING"),
           (MasterDownError, "MASTERDOWN"), (ClusterDownError, "CLUSTERDOWN"),
           (TryAgainError, "TRYAGAIN"), (MovedError, "MOVED"), (AskError, "ASK"),
           (ClusterCrossSlotError, "CROSSSLOT"))  # fmt: skip
CODES = {code for _, code in CODE_OF} | {
    "ERR", "WRONGPASS", "NOAUTH", "WRONGTYPE", "BUSY", "MISCONF", "NOREPLICAS", "EXECABORT"
}  # fmt: skip
#: The server cannot serve us for now, but may soon: it is loading its data,
#: a replica after a failover, a Cluster healing, out of memory (memory may
#: be freed), busy in a long script, unable to persist...
DOWN_CODES = {"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "OOM", "BUSY",
              "MISCONF", "NOREPLICAS"}  # fmt: skip
DOWN = (redis.ConnectionError, redis.TimeoutError, ClusterError, ReadOnlyError, OutOfMemoryError,
        TryAgainError, RedisClusterException, OSError, hiredis.ProtocolError)  # fmt: skip
# AuthenticationError (and MasterNotFoundError) are ConnectionErrors too: they are looked at first.


def store_error(
    exc: BaseException, target: Target, client: Any = None
) -> StoreMisconfigured | StoreUnavailable | None:
    """What an error from redis-py (or a raw hiredis ``ReplyError``) means for conveyor.

    ``StoreMisconfigured``: the server answered and refuses us for good (a
    wrong password, no such database, a missing permission, a key of
    another program under conveyor's prefix, a Cluster node named without
    ``?cluster=1``...): retrying cannot help. ``StoreUnavailable``: it cannot
    be reached or cannot serve us for now (refused, reset, timed out,
    loading, a read-only replica after a failover, out of memory...): worth
    retrying. None: neither (NOSCRIPT, which callers handle, or an error of
    conveyor's own); the caller raises the error as it is. Both messages are
    one line, name the masked URL and never hold the password. ``client``
    (the broker's) lets a Sentinel setup tell an unknown service name from
    a master that is down for now. Only called once an error happened.
    """
    code, text = _code_and_text(exc)
    if code == "NOSCRIPT":
        return None
    if isinstance(exc, RedisClusterException):  # it wraps what the nodes said
        causes = _causes(exc)
        for cause in reversed(causes[1:]):  # the innermost first: the real reason
            if isinstance(error := store_error(cause, target), StoreMisconfigured):
                return error
    if (problem := _misconfigured(exc, code, text, target, client)) is not None:
        what, hint = problem
        return StoreMisconfigured(f"{target.safe}: {what} ({hint})")
    moving = target.cluster and code in ("MOVED", "ASK")  # slots moving between nodes
    if isinstance(exc, DOWN) or code in DOWN_CODES or moving:
        said = text if code in ("", "ERR") else f"{code} {text}"
        return StoreUnavailable(f"{target.safe}: {_clean(said, target)}")
    return None


def _code_and_text(exc: BaseException) -> tuple[str, str]:
    """The reply code of an error ('' if none) and its first line without it."""
    text = str(exc).strip().partition("\n")[0].strip() or type(exc).__name__
    word, _, rest = text.partition(" ")
    if word in CODES:
        return word, rest
    return next((code for cls, code in CODE_OF if isinstance(exc, cls)), ""), text


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc``, then what it was raised from or while handling, outermost first."""
    chain = [exc]
    while len(chain) < 8 and (inner := chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(inner)
    return chain


def _misconfigured(
    exc: BaseException, code: str, text: str, target: Target, client: Any
) -> tuple[str, str] | None:
    """(what is wrong, a hint) when the server refuses us for good; None otherwise."""
    said = _clean(text, target)
    user = unquote(urlsplit(target.url).username or "") or "<user>"
    refused = isinstance(exc, (AuthenticationError, AuthenticationWrongNumberOfArgsError))
    if refused or code in ("WRONGPASS", "NOAUTH"):
        if code == "NOAUTH" or text.startswith(("Authentication required", "HELLO must be called")):
            return "the server wants a password", "give it in the URL: redis://[USER]:PASSWORD@HOST"
        if "without any password configured" in text or "no password is set" in text:
            return "the URL gives a password, the server has none set", "take it out of the URL"
        return f"authentication failed: {said}", "check the user name and password in the URL"
    if code == "NOPERM" or text.startswith("The user executing the script can't"):
        return (
            f"user {user} lacks a permission conveyor needs: {said}",
            f"grant it, e.g. ACL SETUSER {user} ~{target.prefix}:* &{target.prefix}:* +@all",
        )
    if text.startswith(("DB index is out of range", "invalid DB index")):
        return (
            f"the server has no database {target.db}",
            "use a number below its 'databases' setting, 16 by default",
        )
    if code == "WRONGTYPE":
        return (
            f"a key under the prefix {target.prefix!r} holds a value of the wrong type, "
            "likely another program's",
            "give conveyor a prefix of its own: ?prefix=NAME",
        )
    if text.startswith(("unknown command", "unknown subcommand")):
        return (
            f"the server does not know a command conveyor needs: {said}",
            "conveyor needs Redis 6.2 or later, its commands neither renamed nor disabled",
        )
    a_node = code in ("MOVED", "CROSSSLOT") or text.startswith("SELECT is not allowed in cluster")
    if a_node and not target.cluster:
        return "the server is a Redis Cluster node", "add ?cluster=1 to the URL, with database 0"
    not_a_node = "Cluster mode is not enabled" in text or "cluster support disabled" in text
    if not_a_node and target.cluster:
        return "the server is not a Redis Cluster node", "take ?cluster=1 out of the URL"
    if isinstance(exc, MasterNotFoundError) and (found := _unknown_service(client)) is not None:
        service, known = found
        return (
            f"no Sentinel watches a service named {service!r}",
            f"they watch: {', '.join(sorted(known)) or 'none'}",
        )
    return None


def _unknown_service(client: Any) -> tuple[str, set[str]] | None:
    """After a Sentinel setup found no master: (our service, the services the
    Sentinels watch) when every one of them answered and none watches ours
    (a wrong name, for good); None when it may be a master down for now."""
    pool = getattr(client, "connection_pool", None)
    if (manager := getattr(pool, "sentinel_manager", None)) is None:
        return None
    service: str = getattr(pool, "service_name", "")
    known: set[str] = set()
    for sentinel in manager.sentinels:
        try:
            masters = sentinel.sentinel_masters()
        except redis.RedisError:
            return None  # it did not answer: it may watch the service
        if service in masters:
            return None
        known |= set(masters)
    return service, known


def _clean(text: str, target: Target) -> str:
    """A server's message for ours: without the arguments Redis echoes after
    an unknown command (a password could be one), the place in a script, the
    final period, and never the URL's password."""
    text = text.partition(", with args beginning with")[0].partition(" script: ")[0]
    text = text.strip().removesuffix(".")
    parts = urlsplit(target.url)
    hidden = [parts.password or ""] + [v for k, v in parse_qsl(parts.query) if k == "password"]
    for password in filter(None, map(unquote, hidden)):
        text = text.replace(password, "***")
    return text


class LoopConnections:
    """Connections kept for the pipelines an event loop reads: each is made
    and connected once (outside redis-py's pool, so no pool bookkeeping or
    health check on every call), switched to non-blocking for good, and
    reused. On a busy worker that saves a handful of system calls a round
    trip, and each of them let a job's thread take the GIL from the loop."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._free: list[Any] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def take(self) -> tuple[Any, bool]:
        """A connected connection, and whether it was used before."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's are not ours
                self._free, self._pid = [], os.getpid()
            if self._free:
                return self._free.pop(), True
        conn = self._pool.make_connection()
        conn.connect()  # the handshake (AUTH, SELECT, TLS), blocking, once
        conn._sock.setblocking(False)  # redis-py keeps no public name for it
        return conn, False

    def give(self, conn: Any) -> None:
        with self._lock:
            self._free.append(conn)

    def close(self) -> None:
        with self._lock:
            free, self._free = self._free, []
        for conn in free:
            conn.disconnect()


def as_connection_error(exc: BaseException) -> BaseException:
    """A socket's own error as a lost connection, as redis-py calls it."""
    if isinstance(exc, OSError) and not isinstance(exc, REDIS_ERRORS):
        return redis.ConnectionError(f"Error {exc.errno or ''} on the connection: {exc}")
    return exc


def _send_all(sock: Any, data: bytes) -> None:
    """``data`` written to a non-blocking socket; waits (rarely: a payload
    larger than the socket buffer) until it can write the rest."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except (BlockingIOError, ssl.SSLWantWriteError):
            select.select([], [sock], [], REPLY_WAIT)


REPLY_WAIT = 1.0  # seconds a pipeline's send waits for room in the socket buffer


@dataclass(slots=True)
class Pipeline:
    """Commands to send together in one round trip, and what to make of
    their replies: ``finish(replies)`` is the call's result; an error is
    raised as ``failed(exc)`` makes it (``exc`` itself, when it returns that).
    No reply within ``reply_within`` seconds: the store is unreachable."""

    commands: Sequence[tuple[Any, ...]]
    reply_within: float
    finish: Callable[[list[Any]], Any]
    failed: Callable[[BaseException], BaseException]

    def packed(self) -> bytes:
        return b"".join(hiredis.pack_command(command) for command in self.commands)


class SentPipeline:
    """Commands sent now on a connection of their own, whose replies are read
    without ever blocking: ``poll()`` takes what has arrived and returns None
    until every reply is in, then ``finish(replies)``. An event loop watches
    ``fileno()`` and polls when it is readable, so an idle worker's wait
    needs no thread, and its job reaches the loop with no hop between
    threads; ``wait()`` is the same for a thread.

    The connection comes from ``LoopConnections`` and goes back once the
    replies are read (dropped, if the pipeline is closed before). No reply
    within ``reply_within`` seconds: the store is unreachable. Errors are
    raised as ``failed(exc)`` makes them (``exc`` itself, when it returns that).
    """

    def __init__(self, connections: LoopConnections, pipeline: Pipeline) -> None:
        self._connections, self._count = connections, len(pipeline.commands)
        self._finish, self._failed = pipeline.finish, pipeline.failed
        self._deadline = time.monotonic() + pipeline.reply_within
        self._reader = hiredis.Reader(encoding="utf-8")  # as the client's decode_responses
        self._replies: list[Any] = []
        self._conn = None
        data = pipeline.packed()
        try:
            self._conn, reused = connections.take()
            try:
                _send_all(self._conn._sock, data)
            except (*REDIS_ERRORS, OSError):
                if not reused:
                    raise
                self._conn.disconnect()  # the server closed it while it was idle: once more
                self._conn, _ = connections.take()
                _send_all(self._conn._sock, data)
            self._sock = self._conn._sock
        except (*REDIS_ERRORS, OSError) as exc:
            self._fail(exc)
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        fd: int = self._sock.fileno()
        return fd

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
        except (*REDIS_ERRORS, OSError) as exc:
            self._fail(exc)
        self._connections.give(self._conn)
        self._conn = None
        return self._finish(self._replies)

    def _fail(self, exc: BaseException) -> NoReturn:
        """Drop the connection, then raise what ``failed`` makes of ``exc``
        (a socket's own error is a lost connection, as redis-py calls it)."""
        self.close()
        exc = as_connection_error(exc)
        error = self._failed(exc)
        if error is exc:
            raise exc
        raise error from exc

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
