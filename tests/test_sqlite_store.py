"""What is specific to the SQLite store: URLs, opening errors, durability
settings, several processes on one file, and the query plans that keep it fast.

How every store behaves (the broker contract) is tested once, for all stores,
in tests/conformance; nothing here repeats it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conveyor.brokers import open_broker
from conveyor.brokers.base import NewJob
from conveyor.brokers.sqlite import SCHEMA_VERSION, SQL, SQLiteBroker
from conveyor.clock import SystemClock
from conveyor.errors import ConfigurationError, StoreMisconfigured, StoreUnavailable


def url_of(path: Path, options: str = "") -> str:
    assert path.is_absolute()
    return f"sqlite:///{path}{options}"  # str(path) starts with "/": four slashes


def job(job_id: str, queue: str = "default") -> NewJob:
    return NewJob(id=job_id, task="tasks.add", queue=queue, payload='{"args":[1,2]}')


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def broker(db: Path):
    store = SQLiteBroker(url_of(db), SystemClock())
    yield store
    store.close()


def run_python(code: str, *args: str) -> subprocess.Popen:
    """Start ``code`` in a fresh interpreter (a separate process, no fork)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        text=True,
    )


# -- URLs ------------------------------------------------------------------


def test_three_slashes_is_relative_to_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    store = open_broker("sqlite:///data/rel.db")
    try:
        assert store.path == str(tmp_path / "data" / "rel.db")
        store.enqueue([job("a")])
        # Connections open lazily per thread: a thread started after a chdir
        # must still reach the same file.
        monkeypatch.chdir("/")
        seen = []
        thread = threading.Thread(target=lambda: seen.append(store.get("a")))
        thread.start()
        thread.join()
        assert seen[0] is not None and seen[0].id == "a"
    finally:
        store.close()
    assert (tmp_path / "data" / "rel.db").is_file()


def test_four_slashes_is_absolute(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    target = tmp_path / "abs.db"
    store = open_broker("sqlite:///" + str(target))
    store.close()
    assert target.is_file()
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite://somehost/jobs.db",
        "sqlite:///jobs.db?synchronous=fast",
        "sqlite:///jobs.db?synchronous=off",
        "sqlite:///jobs.db?timeout=soon",
        "sqlite:///jobs.db?timeout=-1",
        "sqlite:///jobs.db?journal=delete",
        "sqlite:///jobs.db?shared=yes",
        "sqlite:///jobs.db?shared=",
    ],
)
def test_bad_urls_are_refused_naming_the_url(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as info:
        SQLiteBroker(url, SystemClock())
    assert url in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing was created


@pytest.mark.parametrize(
    ("option", "level"), [("", 1), ("?synchronous=normal", 1), ("?synchronous=FULL", 2)]
)
def test_synchronous_option(db, option, level):
    store = SQLiteBroker(url_of(db, option), SystemClock())
    try:
        # PRAGMA synchronous is per connection: ask the broker's own.
        assert store._file.conn().execute("PRAGMA synchronous").fetchone()[0] == level
    finally:
        store.close()


def test_timeout_option_sets_the_busy_timeout(db):
    store = SQLiteBroker(url_of(db, "?timeout=2.5"), SystemClock())
    try:
        assert store.timeout == 2.5
        assert store._file.conn().execute("PRAGMA busy_timeout").fetchone()[0] == 2500
    finally:
        store.close()


def test_database_is_in_wal_mode_with_a_schema_version(broker, db):
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute(SQL.schema_version).fetchone()[0] == SCHEMA_VERSION
        # user_version is left to whoever else uses the file (see test_sqlite_files.py).
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 0
    finally:
        raw.close()


# -- opening fails fast, in one line, and harms nothing --------------------


def assert_one_line_naming(error: pytest.ExceptionInfo, url: str, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert url in message
    for fragment in fragments:
        assert fragment in message


def test_missing_folder(tmp_path):
    url = url_of(tmp_path / "no" / "such" / "jobs.db")
    with pytest.raises(StoreMisconfigured) as info:
        open_broker(url)
    assert_one_line_naming(info, url, f"folder {tmp_path / 'no' / 'such'} does not exist")
    assert not (tmp_path / "no").exists()


def test_a_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "notes.db"
    content = b"these are my notes, not a database\n" * 200
    path.write_bytes(content)
    url = url_of(path)
    with pytest.raises(StoreMisconfigured) as info:
        open_broker(url)
    assert_one_line_naming(info, url, "is not a conveyor database (file is not a database)")
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def test_a_locked_database_fails_fast_and_keeps_its_jobs(db):
    url = url_of(db, "?timeout=0.2")
    store = SQLiteBroker(url, SystemClock())
    store.enqueue([job("kept-1"), job("kept-2")])
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer that does not let go
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            SQLiteBroker(url, SystemClock())
        assert time.monotonic() - started < 2
        assert_one_line_naming(info, url, "locked")
        # An open broker's write fails the same way instead of hanging.
        with pytest.raises(StoreUnavailable) as info:
            store.claim(["default"], 10, 30, "w")
        assert_one_line_naming(info, url, "locked")
        # Reading still works while someone writes: that is what WAL is for.
        assert store.get("kept-1") is not None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [j.id for j in store.claim(["default"], 10, 30, "w")] == ["kept-1", "kept-2"]
    store.close()


# -- several processes on one file ----------------------------------------

CLAIMER = """
    import random, sys, time
    from conveyor.brokers import open_broker
    from conveyor.brokers.base import Lease
    store = open_broker(sys.argv[1])
    mine = []
    print("ready", flush=True)
    sys.stdin.readline()  # start together: the parent says go
    while jobs := store.claim(["default"], random.randint(1, 10), 30, sys.argv[2]):
        mine += [j.id for j in jobs]
        assert all(store.complete([(Lease(j.id, j.lease_token), "null") for j in jobs]))
        time.sleep(random.random() / 1000)  # "work": lets the others take the write lock
    with open(sys.argv[3], "w") as out:
        out.write("\\n".join(mine))
    store.close()
"""


def test_four_processes_never_claim_a_job_twice(tmp_path, db):
    url = url_of(db, "?timeout=30")
    store = SQLiteBroker(url, SystemClock())
    expected = [f"job-{i}" for i in range(10_000)]
    store.enqueue([job(i) for i in expected])

    outputs = [tmp_path / f"claimed-{n}.txt" for n in range(4)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CLAIMER), url, f"w{n}", str(out)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n, out in enumerate(outputs)
    ]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        assert proc.wait(timeout=60) == 0

    claimed = [line for out in outputs for line in out.read_text().split("\n") if line]
    assert len(claimed) == len(set(claimed)), "a job was claimed twice"
    assert sorted(claimed) == sorted(expected)
    assert all(out.read_text() for out in outputs), "some process got no work: no contention"
    assert store.counts()["default"]["completed"] == 10_000
    store.close()


def test_a_job_stored_by_one_process_is_seen_by_another(broker, db):
    assert broker.get("from-afar") is None  # this broker is open before the write
    proc = run_python(
        """
        import sys
        from conveyor.brokers import open_broker
        from conveyor.brokers.base import NewJob
        store = open_broker(sys.argv[1])
        store.enqueue([NewJob("from-afar", "tasks.add", "default", "[]", priority=3)])
        store.close()
        """,
        url_of(db),
    )
    assert proc.wait(timeout=30) == 0

    stored = broker.get("from-afar")
    assert stored is not None and stored.priority == 3
    assert [j.id for j in broker.claim(["default"], 10, 30, "w")] == ["from-afar"]


def test_wait_for_work_wakes_on_another_process_enqueue(broker, db):
    # The other process first enqueues into a queue we do not wait on (that
    # must not wake us), then into ours; it prints the time before each.
    proc = run_python(
        """
        import sys, time
        from conveyor.brokers import open_broker
        from conveyor.brokers.base import NewJob
        store = open_broker(sys.argv[1])
        time.sleep(0.2)
        print(time.time(), flush=True)
        store.enqueue([NewJob("elsewhere", "t", "other", "[]")])
        time.sleep(0.4)
        print(time.time(), flush=True)
        store.enqueue([NewJob("ours", "t", "default", "[]")])
        store.close()
        """,
        url_of(db),
    )
    started = time.monotonic()
    broker.wait_for_work(["default"], timeout=20)
    woke_at = time.time()
    assert time.monotonic() - started < 10
    other_at, ours_at = (float(proc.stdout.readline()) for _ in range(2))
    assert proc.wait(timeout=30) == 0
    assert woke_at > ours_at, "woke before any job of ours was stored"
    assert woke_at - ours_at < 0.25, f"woke {woke_at - ours_at:.3f}s after the enqueue"
    assert ours_at - other_at > 0.3
    assert broker.get("ours") is not None


def test_a_forked_child_opens_its_own_connection(broker):
    broker.enqueue([job("before-fork")])  # the parent's connection is open
    pid = os.fork()
    if pid == 0:  # the child: use the inherited broker, then leave at once
        code = 1
        try:
            broker.enqueue([job("from-child")])
            code = 0 if broker.get("before-fork") is not None else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert broker.get("from-child") is not None
    assert len(broker.claim(["default"], 10, 30, "w")) == 2


# -- query plans -------------------------------------------------------------

QUEUES = json.dumps(["default", "other"])
INDEXED = {
    "claim_ready": ((1.0, 31.0, "w", "default", 10), "conveyor_jobs_ready"),
    "promote_due": ((1.0,), "conveyor_jobs_delayed"),
    "recover_expired": ((1.0, 3, "1.0"), "conveyor_jobs_leases"),
    "trim_older": (("default", "completed", 1.0), "conveyor_jobs_ended"),
    "trim_keep": (("default", "completed", 100), "conveyor_jobs_ended"),
    "pending": ((QUEUES, 1.0), "conveyor_jobs_ready"),
    "next_due": ((QUEUES,), "conveyor_jobs_delayed"),
}


@pytest.mark.parametrize("name", list(INDEXED))
def test_hot_queries_use_their_index(broker, name):
    broker.enqueue([job(f"j{i}", queue=("default", "other")[i % 2]) for i in range(200)])
    params, index = INDEXED[name]
    plan = [
        row[3]
        for row in broker._file.conn().execute("EXPLAIN QUERY PLAN " + getattr(SQL, name), params)
    ]
    text = "\n".join(plan)
    assert index in text, text
    # A SCAN of the table itself would read every stored job; scanning a
    # partial index (only active or delayed jobs) is fine.
    assert not any(line.strip() == "SCAN conveyor_jobs" for line in plan), text
    assert "TEMP B-TREE" not in text, text  # nothing gets sorted on the side
