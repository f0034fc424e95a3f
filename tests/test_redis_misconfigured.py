"""A Redis that refuses conveyor for good is a configuration error, not an outage.

A missing or wrong password, a database the server does not have, a user
without a permission conveyor needs, a key of another program under
conveyor's prefix, a Cluster named the wrong way, a Sentinel service nobody
watches: each raises ``StoreMisconfigured``, one line naming the URL with
its password masked, and stores nothing. A worker stops on it instead of
retrying for ever. A server that cannot serve us *for now* (stopped, a
read-only replica after a failover, out of memory) stays
``StoreUnavailable``, which workers retry with back-off.

Real servers throughout: a private one where a test needs a password, an
ACL user, a replica or a server to stop; the shared one for the rest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

from conveyor import Conveyor
from conveyor.brokers import open_broker
from conveyor.brokers.base import Broker, NewJob
from conveyor.brokers.redis_connection import parse_url, store_error
from conveyor.errors import StoreMisconfigured, StoreUnavailable
from helpers import poll_until_done, sent, wait_until
from servers import RedisCluster, RedisSentinel, RedisServer, free_port

PASSWORD = "pa55-w0rd-xyzzy"
APPS = Path(__file__).parent / "apps"


def job(job_id: str = "j1", queue: str = "default") -> NewJob:
    return NewJob(job_id, "t", queue, "[[],{}]")


def refusal(action: Callable[[], Any], url: str, *secrets: str) -> str:
    """Run ``action``: it must raise StoreMisconfigured in one line that starts
    with the masked URL and holds no secret. Returns the message."""
    with pytest.raises(StoreMisconfigured) as raised:
        action()
    message = str(raised.value)
    assert "\n" not in message, message
    assert message.startswith(parse_url(url).safe + ": "), message
    for secret in secrets:
        assert secret not in message, message
    return message


def broker_enqueue(url: str) -> Callable[[], Any]:
    def enqueue() -> Any:
        broker = open_broker(url)
        try:
            return broker.enqueue([job()])
        finally:
            broker.close()

    return enqueue


def app_call(url: str, call: Callable[[Conveyor], Any]) -> Callable[[], Any]:
    def run() -> Any:
        app = Conveyor(url)
        try:
            return call(app)
        finally:
            app.close()

    return run


def every_way_in(url: str) -> dict[str, Callable[[], Any]]:
    """The ways a program meets the store first: the broker, an enqueue, stats."""
    return {
        "broker.enqueue": broker_enqueue(url),
        "app.enqueue": app_call(url, lambda app: app.enqueue("t", [1], job_id="j1")),
        "app.stats": app_call(url, lambda app: app.stats()),
    }


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[RedisServer]:
    """A private server whose default user has a password."""
    server = RedisServer(free_port(), tmp_path / "locked", password=PASSWORD).start()
    try:
        yield server
    finally:
        server.stop()


def keys_of(server: RedisServer) -> list[bytes]:
    client = server.client()
    try:
        return sorted(client.scan_iter(count=1000))
    finally:
        client.close()


# -- passwords and databases ------------------------------------------------


@pytest.mark.parametrize("way", ["broker.enqueue", "app.enqueue", "app.stats"])
def test_no_password_for_a_server_that_wants_one(locked: RedisServer, way: str) -> None:
    url = f"redis://127.0.0.1:{locked.port}/0"
    started = time.monotonic()
    message = refusal(every_way_in(url)[way], url, PASSWORD)

    assert time.monotonic() - started < 2  # told at once, not after retries
    assert "the server wants a password" in message
    assert keys_of(locked) == []
    print(f"\n{message}")


@pytest.mark.parametrize("way", ["broker.enqueue", "app.enqueue", "app.stats"])
@pytest.mark.parametrize("user", ["", "nobody"])
def test_a_wrong_password_or_user(locked: RedisServer, way: str, user: str) -> None:
    url = f"redis://{user}:not-the-{PASSWORD}@127.0.0.1:{locked.port}/0"
    started = time.monotonic()
    message = refusal(every_way_in(url)[way], url, PASSWORD, f"not-the-{PASSWORD}")

    assert time.monotonic() - started < 2
    assert "authentication failed" in message and f"redis://{user}:***@" in message
    assert keys_of(locked) == []
    print(f"\n{message}")


def test_the_right_password_works(locked: RedisServer) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{locked.port}/0?prefix=ok"
    broker = open_broker(url)
    try:
        [result] = broker.enqueue([job()])
        assert result.created and broker.get("j1").state == "waiting"
        assert broker.location == f"redis://:***@127.0.0.1:{locked.port}/0?prefix=ok"
    finally:
        broker.close()
    assert keys_of(locked) != []


@pytest.mark.parametrize("way", ["broker.enqueue", "app.enqueue", "app.stats"])
def test_a_database_the_server_does_not_have(default_redis: str, way: str) -> None:
    prefix = f"db99-{uuid.uuid4().hex[:12]}"
    url = f"redis://127.0.0.1:6379/99?prefix={prefix}"  # the default is 16 databases
    message = refusal(every_way_in(url)[way], url)

    assert "the server has no database 99" in message
    client = redis.Redis.from_url(default_redis)
    try:
        assert list(client.scan_iter(f"{prefix}:*")) == []  # not in database 0 either
    finally:
        client.close()
    print(f"\n{message}")


def test_the_loop_read_calls_are_refused_too(locked: RedisServer) -> None:
    """The planned wait and complete-and-claim, sent, take a connection of their own
    from the pool: its handshake fails the same way."""
    url = f"redis://:wrong@127.0.0.1:{locked.port}/0"
    broker = open_broker(url)
    try:
        refusal(
            lambda: sent(broker, broker.plan_wait(["default"], 5, 30.0, "w", 1.0)), url, "wrong"
        )
        assert broker.waiting() == 0
        refusal(
            lambda: sent(broker, broker.plan_complete_and_claim([], ["default"], 5, 30.0, "w")), url
        )
    finally:
        broker.close()


# -- ACL permissions ---------------------------------------------------------


@pytest.fixture
def acl_server(private_redis: Callable[..., RedisServer]) -> RedisServer:
    """A private server with users who may do part of what conveyor does."""
    server = private_redis()
    admin = server.client()
    try:
        admin.execute_command("ACL", "SETUSER", "reader", "on", ">pw", "~*", "+@read")
        admin.execute_command(
            "ACL", "SETUSER", "runner", "on", ">pw", "~*", "&*", "+@all", "-script|load"
        )
    finally:
        admin.close()
    return server


def test_a_user_without_permission_for_evalsha(acl_server: RedisServer) -> None:
    url = f"redis://reader:pw@127.0.0.1:{acl_server.port}/0?prefix=acl"
    message = refusal(broker_enqueue(url), url, ":pw@")

    assert "user reader lacks a permission conveyor needs" in message
    assert "'evalsha'" in message and "ACL SETUSER reader ~acl:* &acl:* +@all" in message
    assert keys_of(acl_server) == []
    print(f"\n{message}")


def test_a_user_who_may_not_load_the_scripts(acl_server: RedisServer) -> None:
    """A new server has no scripts: the store loads them, which this user may not do."""
    url = f"redis://runner:pw@127.0.0.1:{acl_server.port}/0?prefix=acl"
    message = refusal(broker_enqueue(url), url)

    assert "'script|load'" in message
    assert keys_of(acl_server) == []


def test_the_loop_read_calls_without_permission(acl_server: RedisServer) -> None:
    """Their replies are read raw (hiredis) by the worker's event loop: a
    NOPERM there is StoreMisconfigured too, not a redis error."""
    url = f"redis://reader:pw@127.0.0.1:{acl_server.port}/0?prefix=acl"
    broker = open_broker(url)
    try:
        pending = sent(broker, broker.plan_wait(["default"], 5, 30.0, "w", 3.0))
        started = time.monotonic()
        message = refusal(lambda: poll_until_done(pending), url, ":pw@")
        assert time.monotonic() - started < 1  # BZPOPMIN refused too: no wait
        assert "lacks a permission" in message and broker.waiting() == 0

        pending = sent(broker, broker.plan_complete_and_claim([], ["default"], 5, 30.0, "w"))
        assert "lacks a permission" in refusal(lambda: poll_until_done(pending), url)
    finally:
        broker.close()


# -- a key of another program under conveyor's prefix ----------------------


@pytest.fixture
def shared(default_redis: str) -> Iterator[tuple[Broker, redis.Redis]]:
    """A broker on a fresh prefix of the shared server, and a raw client."""
    prefix = f"wrongtype-{uuid.uuid4().hex[:12]}"
    broker = open_broker(f"redis://127.0.0.1:6379/0?prefix={prefix}")
    client = redis.Redis.from_url(default_redis)
    try:
        yield broker, client
    finally:
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        broker.close()


def snapshot(client: redis.Redis, prefix: str, but: str) -> dict[bytes, bytes]:
    """Every key under the prefix but ``but``, with its serialized value."""
    return {
        key: client.dump(key)
        for key in client.scan_iter(f"{prefix}:*", count=1000)
        if key != but.encode()
    }


def test_a_key_of_the_wrong_type_is_misconfigured_and_changes_nothing(shared) -> None:
    broker, client = shared
    prefix = broker.target.prefix
    broker.enqueue([job("calm-1", "calm"), job("calm-2", "calm")])
    broker.enqueue([NewJob("calm-p", "t", "calm", "[[],{}]", priority=5)])
    broker.enqueue([NewJob("later", "t", "busy", "[[],{}]", run_at=time.time() + 3600)])
    planted = f"{prefix}:{{busy}}:waiting"
    client.set(planted, "another program's string")
    before = snapshot(client, prefix, planted)
    broker._promoted_at = time.monotonic()  # no promotion of other queues in the claims below

    for action in (
        lambda: broker.claim(["busy"], 5, 30.0, "w"),
        lambda: broker.counts(),
        lambda: broker.pending(["busy"]),
        lambda: broker.list(queue="busy"),
    ):
        message = refusal(action, broker.url)
        assert f"under the prefix '{prefix}'" in message and "?prefix=NAME" in message

    assert snapshot(client, prefix, planted) == before
    assert broker.get("later").state == "delayed"
    assert [j.id for j in broker.claim(["calm"], 5, 30.0, "w")] == ["calm-p", "calm-1", "calm-2"]
    print(f"\n{message}")


def test_an_enqueue_that_meets_a_key_of_the_wrong_type_stores_nothing(shared) -> None:
    broker, client = shared
    prefix = broker.target.prefix
    broker.enqueue([job("first", "busy"), job("other", "calm")])
    planted = f"{prefix}:{{busy}}:counter"
    client.delete(planted)
    client.hset(planted, "x", "1")
    before = snapshot(client, prefix, planted)

    refusal(lambda: broker.enqueue([job("second", "busy")]), broker.url)

    assert snapshot(client, prefix, planted) == before
    assert broker.get("second") is None
    assert broker.get("first").state == broker.get("other").state == "waiting"


def test_a_job_key_of_the_wrong_type_fails_the_get_of_that_id_only(shared) -> None:
    broker, client = shared
    broker.enqueue([job("fine", "q")])
    client.set(f"{broker.target.prefix}:{{q}}:job:planted", "a string")

    refusal(lambda: broker.get("planted"), broker.url)
    assert broker.get("fine").state == "waiting"


# -- the server is not what the URL says ----------------------------------


def test_cluster_1_on_a_server_that_is_no_cluster_node(default_redis: str) -> None:
    url = "redis://127.0.0.1:6379/0?cluster=1&prefix=nocluster"
    message = refusal(lambda: open_broker(url), url)
    assert "not a Redis Cluster node (take ?cluster=1 out of the URL)" in message


def test_a_cluster_node_named_without_cluster_1(redis_cluster: RedisCluster) -> None:
    url = f"redis://127.0.0.1:{redis_cluster.nodes[0].port}/0?prefix=plain"
    broker = open_broker(url)
    try:  # the queues' keys live on several nodes: one of them is elsewhere
        queues = [f"q{n}" for n in range(6)]
        message = refusal(lambda: broker.enqueue([job(f"j-{q}", q) for q in queues]), url)
    finally:
        broker.close()
    assert "is a Redis Cluster node (add ?cluster=1" in message
    redis_cluster.flushall()


def test_an_unknown_user_on_a_cluster(redis_cluster: RedisCluster) -> None:
    url = f"redis://nobody:{PASSWORD}@127.0.0.1:{redis_cluster.nodes[0].port}/0?cluster=1"
    message = refusal(lambda: open_broker(url), url, PASSWORD)  # the client asks for the slots
    assert "authentication failed" in message


def test_a_cluster_user_who_may_not_subscribe(redis_cluster: RedisCluster) -> None:
    """In a Cluster the idle wait listens on pub/sub channels, in a thread of
    its own: a refusal there reaches the waiter as StoreMisconfigured (not a
    silent fall back to waiting out every timeout)."""
    prefix = f"chan-{uuid.uuid4().hex[:8]}"
    nodes = redis_cluster.node_clients()
    try:
        for node in nodes:  # may publish that work is ready, may not subscribe to its own
            node.execute_command(
                "ACL", "SETUSER", "waker", "on", ">pw", "~*", f"&{prefix}:ready:*", "+@all"
            )
        url = (
            f"redis://waker:pw@127.0.0.1:{redis_cluster.nodes[0].port}/0?cluster=1&prefix={prefix}"
        )
        broker = open_broker(url)
        try:
            broker.enqueue([job("fine", "q")])  # the scripts may publish
            started = time.monotonic()
            message = refusal(lambda: broker.wait_for_work(["idle"], 5.0), url, ":pw@")
            assert time.monotonic() - started < 3
            assert "lacks a permission" in message and "channels" in message
        finally:
            broker.close()
    finally:
        for node in nodes:
            node.execute_command("ACL", "DELUSER", "waker")
            node.close()
        redis_cluster.flushall()


def test_a_sentinel_service_nobody_watches(redis_sentinel: RedisSentinel) -> None:
    url = f"redis+sentinel://127.0.0.1:{redis_sentinel.port}/nosuch?prefix=s"
    message = refusal(broker_enqueue(url), url)
    assert "no Sentinel watches a service named 'nosuch' (they watch: mymaster)" in message


def test_a_sentinel_master_with_a_database_it_does_not_have(
    redis_sentinel: RedisSentinel,
) -> None:
    url = f"redis+sentinel://127.0.0.1:{redis_sentinel.port}/mymaster/99?prefix=s"
    assert "no database 99" in refusal(broker_enqueue(url), url)


# -- what stays StoreUnavailable -------------------------------------------


def unavailable(action: Callable[[], Any], url: str) -> str:
    with pytest.raises(StoreUnavailable) as raised:
        action()
    message = str(raised.value)
    assert "\n" not in message and message.startswith(parse_url(url).safe + ": "), message
    return message


def test_a_stopped_server_is_unavailable(private_redis: Callable[..., RedisServer]) -> None:
    server = private_redis()
    url = f"{server.url}?prefix=down"
    broker = open_broker(url)
    try:
        broker.enqueue([job()])
        server.stop()
        unavailable(lambda: broker.enqueue([job("j2")]), url)
        unavailable(broker.counts, url)
        unavailable(lambda: sent(broker, broker.plan_wait(["default"], 5, 30.0, "w", 1.0)), url)
    finally:
        broker.close()


def test_a_sentinel_master_that_is_down_is_unavailable(tmp_path: Path) -> None:
    """No master for now (the Sentinels know the service, and see it down) is
    an outage, not a wrong service name."""
    sentinel = RedisSentinel(tmp_path / "sentinel").start()
    client = redis.Redis(port=sentinel.port, socket_timeout=2, decode_responses=True)
    try:
        client.execute_command("SENTINEL", "SET", "mymaster", "down-after-milliseconds", "100")
        sentinel.master.stop()
        wait_until(lambda: "s_down" in client.sentinel_master("mymaster")["flags"], 10, "s_down")
        url = f"{sentinel.url}?prefix=s"
        assert "No master found for 'mymaster'" in unavailable(broker_enqueue(url), url)
    finally:
        client.close()
        sentinel.stop()


def test_a_read_only_replica_is_unavailable(private_redis: Callable[..., RedisServer]) -> None:
    """As after a failover, until the client finds the new master."""
    server = private_redis()
    admin = server.client()
    try:
        admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # a master that is gone
        url = f"{server.url}?prefix=replica"
        message = unavailable(broker_enqueue(url), url)
        assert "READONLY" in message
        admin.execute_command("REPLICAOF", "NO", "ONE")
        broker_enqueue(url)()  # a master again: it goes on
    finally:
        admin.close()


def test_out_of_memory_is_unavailable(private_redis: Callable[..., RedisServer]) -> None:
    """Memory may be freed (jobs trimmed, maxmemory raised): worth retrying."""
    server = private_redis()
    admin = server.client()
    try:
        url = f"{server.url}?prefix=oom"
        broker_enqueue(url)()
        admin.config_set("maxmemory", "1")
        assert "OOM command not allowed" in unavailable(broker_enqueue(url), url)
        admin.config_set("maxmemory", "0")
        broker_enqueue(url)()
    finally:
        admin.close()


# -- the classification itself, for every form an error comes in ------------

URL = "redis://user:s3cr3t@127.0.0.1:6379/7?prefix=app"
MISCONFIGURED = [
    # redis-py 8 (RESP3 handshake) and 5.x (RESP2): classes, their codes taken off
    AuthenticationError("invalid username-password pair or user is disabled."),
    AuthenticationError("Authentication required."),
    AuthenticationError("HELLO must be called with the client already authenticated"),
    NoPermissionError("this user has no permissions to run the 'evalsha' command"),
    ResponseError("DB index is out of range"),
    ResponseError("invalid DB index"),
    ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    ResponseError("The user executing the script can't access at least one of the keys"),
    ResponseError("unknown command 'EVALSHA', with args beginning with: 's3cr3t'"),
    # older redis-py: the code left on the message, as a plain ResponseError
    ResponseError("NOPERM this user has no permissions to run the 'bzpopmin' command"),
    ResponseError("WRONGPASS invalid username-password pair or user is disabled."),
    ResponseError("NOAUTH Authentication required."),
    # raw replies read by the worker's event loop
    hiredis.ReplyError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    hiredis.ReplyError("NOPERM this user has no permissions to run the 'evalsha' command"),
    hiredis.ReplyError("ERR The user executing the script can't publish to the channel"),
    hiredis.ReplyError("ERR unknown command 'FOO', with args beginning with: 's3cr3t' "),
]
UNAVAILABLE = [
    redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
    redis.TimeoutError("Timeout reading from socket"),
    BusyLoadingError("Redis is loading the dataset in memory"),
    ReadOnlyError("You can't write against a read only replica."),
    MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
    ClusterDownError("The cluster is down"),
    TryAgainError("Multiple keys request during rehashing of slot"),
    OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    ConnectionResetError(104, "Connection reset by peer"),
    hiredis.ReplyError("LOADING Redis is loading the dataset in memory"),
    hiredis.ReplyError("READONLY You can't write against a read only replica."),
    hiredis.ReplyError("MASTERDOWN Link with MASTER is down"),
    hiredis.ReplyError("CLUSTERDOWN The cluster is down"),
    hiredis.ReplyError("TRYAGAIN Multiple keys request during rehashing of slot"),
    hiredis.ReplyError("OOM command not allowed when used memory > 'maxmemory'."),
    hiredis.ReplyError("BUSY Redis is busy running a script."),
]


@pytest.mark.parametrize("exc", MISCONFIGURED, ids=repr)
def test_errors_that_mean_misconfigured(exc: Exception) -> None:
    error = store_error(exc, parse_url(URL))
    assert isinstance(error, StoreMisconfigured), error
    assert str(error).startswith("redis://user:***@127.0.0.1:6379/7?prefix=app: ")
    assert "s3cr3t" not in str(error) and "\n" not in str(error)
    assert str(error).endswith(")")  # "<url>: <what is wrong> (<hint>)"


@pytest.mark.parametrize("exc", UNAVAILABLE, ids=repr)
def test_errors_that_mean_unavailable(exc: Exception) -> None:
    error = store_error(exc, parse_url(URL))
    assert isinstance(error, StoreUnavailable), error
    assert str(error).startswith("redis://user:***@127.0.0.1:6379/7?prefix=app: ")


@pytest.mark.parametrize(
    "exc",
    [
        hiredis.ReplyError("NOSCRIPT No matching script."),  # the store loads them again
        ResponseError("ERR Error running script: attempt to compare nil with number"),
        redis.DataError("Invalid input of type: 'NoneType'"),
    ],
    ids=repr,
)
def test_errors_of_conveyor_s_own_are_left_alone(exc: Exception) -> None:
    assert store_error(exc, parse_url(URL)) is None


# -- the command line ----------------------------------------------------------


def run_cli(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    shutil.copy(APPS / "redis_app.py", tmp_path / "redis_app.py")
    env = {**os.environ, "CONVEYOR_URL": url, "MARKS": str(tmp_path / "marks.txt")}
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "command", [["enqueue", "redis_app:app", "mark", "--args", "[1]"], ["stats", "redis_app:app"]]
)
def test_the_command_line_says_a_wrong_password_in_one_line(
    locked: RedisServer, tmp_path: Path, command: list[str]
) -> None:
    url = f"redis://:not-{PASSWORD}@127.0.0.1:{locked.port}/0"
    done = run_cli(tmp_path, url, *command)

    assert done.returncode == 2, (done.stdout, done.stderr)
    [line] = done.stderr.splitlines()
    assert line == (
        f"conveyor: error: redis://:***@127.0.0.1:{locked.port}/0: authentication failed: "
        "invalid username-password pair or user is disabled "
        "(check the user name and password in the URL)"
    )
    assert keys_of(locked) == []


def test_the_command_line_says_a_missing_database_in_one_line(
    default_redis: str, tmp_path: Path
) -> None:
    url = f"redis://127.0.0.1:6379/99?prefix=cli-{uuid.uuid4().hex[:12]}"
    done = run_cli(tmp_path, url, "enqueue", "redis_app:app", "mark", "--args", "[1]")

    assert done.returncode == 2, (done.stdout, done.stderr)
    [line] = done.stderr.splitlines()
    assert line == (
        f"conveyor: error: {url}: the server has no database 99 "
        "(use a number below its 'databases' setting, 16 by default)"
    )


def test_closing_a_broker_that_never_waited_talks_to_no_server() -> None:
    """Only interrupt() leaves a key for close() to delete: a producer (the
    CLI) closing its broker makes no round trip, to a server maybe gone."""
    broker = open_broker(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    started = time.monotonic()
    broker.close()
    assert time.monotonic() - started < 0.1


# -- location ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("redis://127.0.0.1:6379/0?prefix=x", "redis://127.0.0.1:6379/0?prefix=x"),
        ("redis://:pw@127.0.0.1:6379/3", "redis://:***@127.0.0.1:6379/3"),
        ("redis://me:pw@127.0.0.1:6379/0?prefix=x", "redis://me:***@127.0.0.1:6379/0?prefix=x"),
        (
            "rediss://127.0.0.1:6379/0?password=pw&ssl_cert_reqs=none",
            "rediss://127.0.0.1:6379/0?password=***&ssl_cert_reqs=none",
        ),
        (
            "redis+sentinel://me:pw@127.0.0.1:1,127.0.0.2:2/svc",
            "redis+sentinel://me:***@127.0.0.1:1,127.0.0.2:2/svc",
        ),
    ],
)
def test_location_is_the_url_with_its_password_masked(url: str, location: str) -> None:
    broker = open_broker(url)  # one server or Sentinel: opening connects to nothing
    try:
        assert broker.location == location
    finally:
        broker.close()  # nor does closing a broker that was never used


def _worker_log_says(done: subprocess.CompletedProcess, message: str) -> None:
    """Exit 2, no traceback, the last error line says why (a dropped
    connection before it is an outage like any other), and no password."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert PASSWORD not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert errors and message in errors[-1], done.stderr


def test_a_worker_on_a_database_the_server_does_not_have_exits_2_at_once(
    default_redis: str, tmp_path: Path
) -> None:
    """Not an outage to wait out: one error line and exit 2, within seconds."""
    url = f"redis://127.0.0.1:6379/99?prefix=cli-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    done = run_cli(tmp_path, url, "worker", "redis_app:app")
    assert time.monotonic() - started < 20
    _worker_log_says(done, f"stopping: {url}: the server has no database 99")


def test_a_worker_whose_password_changes_under_it_exits_2(
    locked: RedisServer, tmp_path: Path
) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{locked.port}/0"
    shutil.copy(APPS / "redis_app.py", tmp_path / "redis_app.py")
    env = {**os.environ, "CONVEYOR_URL": url, "MARKS": str(tmp_path / "marks.txt")}
    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "worker", "redis_app:app", "--poll", "0.2"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        app = Conveyor(url)
        assert app.enqueue("mark", [1]).result(timeout=15) == 1  # it runs jobs
        app.close()
        admin = locked.client()
        admin.config_set("requirepass", "a-new-password")
        admin.execute_command("CLIENT", "KILL", "TYPE", "normal")
        out, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    done = subprocess.CompletedProcess(worker.args, worker.returncode, out, err)
    _worker_log_says(done, "stopping: redis://:***@127.0.0.1")
    assert "authentication failed" in err
