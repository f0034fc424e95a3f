"""Private ``redis-server`` processes for tests: one server, a Cluster, a Sentinel.

Each server runs in the foreground (``--daemonize no``) as a child of the test
process, on a free port, with its files in a folder of its own and no RDB
snapshots (``--save ""``). Nothing is ever left running: ``stop()`` ends a
server with SIGTERM and then SIGKILL, every started process is also killed at
interpreter exit, and on Linux each child asks the kernel to SIGKILL it should
the test process itself die (``PR_SET_PDEATHSIG``).

The shared default server on 127.0.0.1:6379 is not started here: ``.ci/run``
and ``make test`` start it (``scripts/services.sh``); ``check_default_redis``
says clearly when it is not there.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import redis

HOST = "127.0.0.1"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
START_TIMEOUT = 15.0  # seconds; an AOF replay of a test's data takes far less

_live: set[subprocess.Popen] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        _reap(proc, 0)


def _reap(proc: subprocess.Popen, grace: float) -> None:
    """End ``proc``: SIGTERM and ``grace`` seconds (0: SIGKILL at once), then SIGKILL."""
    try:
        if proc.poll() is None and grace > 0:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    finally:
        _live.discard(proc)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(cluster_bus: bool = False) -> int:
    """A port nothing is bound to, in 20000-29999 (below the kernel's ephemeral
    range). With ``cluster_bus``, port + 10000 is free too: a cluster node's bus."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        if _bindable(port) and (not cluster_bus or _bindable(port + 10000)):
            return port
    raise RuntimeError("no free port found for a test redis-server")


def check_default_redis(url: str = DEFAULT_URL) -> None:
    """Raise a clear error when the shared Redis of the test suite does not answer."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RuntimeError(
            f"no Redis answers PING at {url} ({exc}). The Redis tests need a "
            "redis-server on 127.0.0.1:6379: run scripts/services.sh (make test does), "
            "or: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 "
            '--save "" --appendonly no'
        ) from None
    finally:
        client.close()


@contextlib.contextmanager
def isolated_redis_url(base: str = DEFAULT_URL, name: str = "test") -> Iterator[str]:
    """``base`` with a key prefix no one else uses (the Redis store's ``?prefix=``);
    every key under it is deleted afterwards. Tests share one server this way
    (a single server: empty a Cluster with ``RedisCluster.flushall()``)."""
    prefix = f"{name}-{uuid.uuid4().hex[:12]}"
    joiner = "&" if "?" in base else "?"
    try:
        yield f"{base}{joiner}prefix={prefix}"
    finally:
        client = redis.Redis.from_url(base.partition("?")[0], socket_timeout=5)
        try:
            batch = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            for start in range(0, len(batch), 500):
                client.delete(*batch[start : start + 500])
        finally:
            client.close()


def _wait_for(
    predicate,
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
):
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}\n{tail}")
        try:
            value = predicate()
            if value:
                return value
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.02)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise RuntimeError(
        f"timed out after {timeout:g}s waiting for {what} (last error: {last})\n{tail}"
    )


class RedisServer:
    """One private ``redis-server`` on ``port`` keeping its files in ``dir``.

    ``appendonly`` turns on the AOF (``appendfsync everysec``, the default):
    ``kill()`` then ``start()`` (or ``restart()``) replays it, like a server
    that crashed and came back. ``password`` sets ``requirepass`` (the
    default user's password); ``url`` leaves it out, ``client()`` gives it.
    """

    def __init__(
        self,
        port: int,
        dir: Path | str,
        appendonly: bool = False,
        extra: tuple[str, ...] = (),
        password: str | None = None,
    ) -> None:
        self.port = port
        self.dir = Path(dir)
        self.appendonly = appendonly
        self.extra = tuple(extra)
        self.password = password
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def __repr__(self) -> str:
        return f"<RedisServer {self.url} {'up' if self.alive else 'down'}>"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, **kwargs) -> redis.Redis:
        kwargs.setdefault("password", self.password)
        return redis.Redis(host=HOST, port=self.port, socket_timeout=5, **kwargs)

    def command(self) -> list[str]:
        return [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--logfile",
            "",  # stdout, which goes to self.log
            *(("--requirepass", self.password) if self.password else ()),
            *self.extra,
        ]

    def start(self) -> RedisServer:
        if self.alive:
            raise RuntimeError(f"{self!r} is already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        _live.add(self.proc)
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until PING answers (a server still loading its AOF answers LOADING)."""
        client = self.client(socket_connect_timeout=1)
        try:
            _wait_for(
                client.ping, timeout, f"redis-server on port {self.port}", self.proc, self.log
            )
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash (the AOF stays)."""
        if self.proc is not None:
            _reap(self.proc, 0)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL if it takes more than 5 s."""
        if self.proc is not None:
            _reap(self.proc, 5)

    def restart(self) -> RedisServer:
        """Stop if running, then start again on the same port and folder."""
        self.stop()
        return self.start()


class RedisCluster:
    """Three master nodes (no replicas) covering all 16384 slots.

    ``url`` names the first node in the form the Redis store opens in cluster
    mode; ``flushall()`` empties every node between tests.
    """

    def __init__(self, dir: Path | str, nodes: int = 3) -> None:
        self.dir = Path(dir)
        self.nodes: list[RedisServer] = []
        for n in range(nodes):
            port = free_port(cluster_bus=True)
            while any(node.port == port for node in self.nodes):
                port = free_port(cluster_bus=True)
            self.nodes.append(
                RedisServer(
                    port,
                    self.dir / f"node-{n + 1}",
                    extra=(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                    ),
                )
            )

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        return cluster_url(self.nodes[0].port)

    def start(self) -> RedisCluster:
        try:
            for node in self.nodes:
                node.start()
            created = subprocess.run(
                [
                    shutil.which("redis-cli") or "redis-cli",
                    "--cluster",
                    "create",
                    *(f"{HOST}:{port}" for port in self.ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if created.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}"
                )
            for node in self.nodes:
                client = node.client()
                try:
                    _wait_for(
                        lambda c=client: _cluster_ok(c),
                        30,
                        f"cluster_state:ok on node {node.port}",
                        node.proc,
                        node.log,
                    )
                finally:
                    client.close()
        except BaseException:
            self.stop()
            raise
        return self

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host=HOST, port=self.nodes[0].port, socket_timeout=5)

    def node_clients(self) -> list[redis.Redis]:
        return [node.client() for node in self.nodes]

    def flushall(self) -> None:
        for node in self.nodes:
            client = node.client()
            try:
                client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _cluster_ok(client: redis.Redis) -> bool:
    info = client.execute_command("CLUSTER INFO")
    if isinstance(info, dict):  # redis-py parses the reply
        return str(info.get("cluster_state")) == "ok"
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


class RedisSentinel:
    """One private master watched by one Sentinel (quorum 1) as ``service``.

    ``url`` is ``redis+sentinel://127.0.0.1:<sentinel port>/<service>``.
    """

    def __init__(self, dir: Path | str, service: str = "mymaster") -> None:
        self.dir = Path(dir)
        self.service = service
        self.master = RedisServer(free_port(), self.dir / "master")
        self.port = free_port()
        while self.port == self.master.port:
            self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.conf = self.dir / "sentinel" / "sentinel.conf"
        self.log = self.dir / "sentinel" / "sentinel.log"

    @property
    def url(self) -> str:
        return f"redis+sentinel://{HOST}:{self.port}/{self.service}"

    def start(self) -> RedisSentinel:
        try:
            self.master.start()
            self.conf.parent.mkdir(parents=True, exist_ok=True)
            self.conf.write_text(  # the sentinel rewrites this file: it must be its own
                f"port {self.port}\n"
                f"bind {HOST}\n"
                f'dir "{self.conf.parent}"\n'
                f"sentinel monitor {self.service} {HOST} {self.master.port} 1\n"
                f"sentinel down-after-milliseconds {self.service} 5000\n"
            )
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(
                    [
                        shutil.which("redis-server") or "redis-server",
                        str(self.conf),
                        "--sentinel",
                        "--daemonize",
                        "no",
                        "--logfile",
                        "",
                    ],
                    cwd=self.conf.parent,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            _live.add(self.proc)
            client = redis.Redis(
                host=HOST, port=self.port, socket_timeout=2, socket_connect_timeout=1
            )
            try:
                _wait_for(
                    lambda: client.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
                    ),
                    START_TIMEOUT,
                    f"sentinel on port {self.port} to report {self.service}",
                    self.proc,
                    self.log,
                )
            finally:
                client.close()
        except BaseException:
            self.stop()
            raise
        return self

    def flushall(self) -> None:
        client = self.master.client()
        try:
            client.flushall()
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            _reap(self.proc, 5)
        self.master.stop()


def cluster_url(port: int) -> str:
    """The URL the Redis store opens in cluster mode, for a cluster one of whose
    nodes listens on ``port`` (see the docstring of conveyor.brokers.redis_store)."""
    return f"redis://{HOST}:{port}/0?cluster=1"
