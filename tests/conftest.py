"""Redis fixtures shared by the test suite (the servers themselves: ``servers.py``).

- ``default_redis``: the shared server on 127.0.0.1:6379 (``scripts/services.sh``
  starts it); a test that needs it FAILS with a clear message when it does
  not answer. It is never skipped.
- ``private_redis``: a factory of private servers (``private_redis(appendonly=True)``)
  a test may kill and restart; all stopped at the end of the test.
- ``redis_cluster``, ``redis_sentinel``: one three-node Cluster and one
  Sentinel-watched master for the whole session; ``.url`` opens the Redis
  store on them, ``.flushall()`` empties them between tests.
- ``store_app``: a fresh ``Conveyor`` on memory, SQLite and Redis in turn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from servers import (
    DEFAULT_URL,
    RedisCluster,
    RedisSentinel,
    RedisServer,
    check_default_redis,
    free_port,
    isolated_redis_url,
)


@pytest.fixture(scope="session")
def default_redis() -> str:
    """The URL of the shared Redis on 127.0.0.1:6379, after checking it answers."""
    try:
        check_default_redis(DEFAULT_URL)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    return DEFAULT_URL


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    servers: list[RedisServer] = []

    def start(appendonly: bool = False) -> RedisServer:
        for attempt in range(3):  # another process may take the free port first
            folder = tmp_path / f"redis-{len(servers) + 1}"
            server = RedisServer(free_port(), folder, appendonly)
            servers.append(server)
            try:
                return server.start()
            except RuntimeError:
                if attempt == 2 or "Address already in use" not in server.log.read_text():
                    raise
        raise AssertionError("unreachable")

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    sentinel = RedisSentinel(tmp_path_factory.mktemp("redis-sentinel"))
    sentinel.start()
    try:
        yield sentinel
    finally:
        sentinel.stop()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Conveyor]:
    """A fresh app on each store one worker process can use: memory, a SQLite
    file, and the shared Redis under a key prefix of its own."""
    if request.param == "redis":
        request.getfixturevalue("default_redis")
        with isolated_redis_url() as url:
            app = Conveyor(url)
            yield app
            app.close()
        return
    app = Conveyor("memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/jobs.db")
    yield app
    app.close()
