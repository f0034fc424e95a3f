"""The SQLite store and files that are not its own.

Conveyor changes only a database it created, unless the URL says
``?shared=1``; a read-only open (``create=False``) never creates a store; a
file deleted or replaced under a running process is noticed by ``recover()``.
Every test works on real files in ``tmp_path``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from urllib.parse import quote

import pytest

from conveyor.brokers import open_broker
from conveyor.brokers.base import Controls, NewJob, RateLimit
from conveyor.brokers.sqlite import SQL, SQLiteBroker
from conveyor.clock import SystemClock
from conveyor.errors import ConfigurationError, StoreMisconfigured

# The schema as conveyor wrote it before conveyor_meta existed: its version
# was PRAGMA user_version = 1. Frozen here, whatever the schema becomes.
VERSION_1_SCHEMA = """
CREATE TABLE conveyor_jobs (
    id TEXT NOT NULL UNIQUE, seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL, queue TEXT NOT NULL, state TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0, payload TEXT NOT NULL, options TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, stalls INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, run_at REAL, started_at REAL, finished_at REAL,
    lease_token TEXT, lease_expires REAL, worker TEXT, result TEXT,
    errors TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX conveyor_jobs_ready
    ON conveyor_jobs (queue, priority DESC, seq) WHERE state = 'waiting';
CREATE INDEX conveyor_jobs_delayed ON conveyor_jobs (run_at) WHERE state = 'delayed';
CREATE INDEX conveyor_jobs_leases ON conveyor_jobs (lease_expires) WHERE state = 'active';
CREATE INDEX conveyor_jobs_ended ON conveyor_jobs (queue, state, finished_at)
    WHERE state IN ('completed', 'dead', 'cancelled');
PRAGMA user_version = 1;
"""
# A job as that conveyor stored it.
OLD_INSERT = (
    "INSERT INTO conveyor_jobs (id, task, queue, state, payload, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)

APP_TABLES = ("orders", "sessions", "users")
OUR_TABLES = [
    "conveyor_buckets",
    "conveyor_jobs",
    "conveyor_meta",
    "conveyor_starts",
    "conveyor_unique",
]


def url_of(path: Path, options: str = "") -> str:
    """``sqlite:////abs/path``, the path escaped as a URL path must be."""
    assert path.is_absolute()
    return "sqlite:///" + quote(str(path)) + options


def job(job_id: str) -> NewJob:
    return NewJob(id=job_id, task="tasks.add", queue="default", payload="[]")


def folder_snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` with its bytes: what "changed nothing" means."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def pragma(path: Path, name: str) -> object:
    raw = sqlite3.connect(path)
    try:
        return raw.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        raw.close()


def tables_of(path: Path) -> list[str]:
    raw = sqlite3.connect(path)
    try:
        return [row[0] for row in raw.execute(SQL.named_objects)]
    finally:
        raw.close()


def make_app_database(path: Path, journal_mode: str = "delete") -> None:
    """Another application's database, with its own migration marker."""
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute(f"PRAGMA journal_mode = {journal_mode}")
    for table in APP_TABLES:
        raw.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT)")
        raw.execute(f"INSERT INTO {table} (name) VALUES ('kept')")
    raw.execute("PRAGMA user_version = 7")
    raw.close()


def make_conveyor_database(path: Path, *job_ids: str) -> None:
    store = SQLiteBroker(url_of(path), SystemClock())
    store.enqueue([job(job_id) for job_id in job_ids])
    store.close()


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


# -- someone else's database -----------------------------------------------


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
@pytest.mark.parametrize("create", [True, False])
def test_another_apps_database_is_refused_and_left_unchanged(tmp_path, journal_mode, create):
    path = tmp_path / "app.db"
    make_app_database(path, journal_mode)
    before = folder_snapshot(tmp_path)
    url = url_of(path)

    with pytest.raises(StoreMisconfigured) as info:
        SQLiteBroker(url, SystemClock(), create=create)

    assert_one_line(info, url, str(path), "orders, sessions, users", "no conveyor_jobs")
    if create:  # how to ask, for a command that may set up a store
        assert_one_line(info, f"open {url}?shared=1", "switch the file to WAL mode")
    else:
        assert "shared=1" not in str(info.value)
    assert folder_snapshot(tmp_path) == before  # no byte changed, no file added
    assert pragma(path, "journal_mode") == journal_mode
    assert pragma(path, "user_version") == 7


def test_a_refusal_names_a_few_of_many_tables(tmp_path):
    path = tmp_path / "app.db"
    raw = sqlite3.connect(path)
    for n in range(8):
        raw.execute(f"CREATE TABLE t{n} (x)")
    raw.close()
    with pytest.raises(StoreMisconfigured) as info:
        open_broker(url_of(path, "?timeout=1"))
    assert_one_line(info, "t0, t1, t2, t3, t4, ... (8 in all)")
    # The suggested URL keeps the options given.
    assert_one_line(info, f"open {url_of(path)}?timeout=1&shared=1")


def test_a_view_alone_makes_a_database_someone_elses(tmp_path):
    path = tmp_path / "app.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE VIEW answer AS SELECT 42")
    raw.close()
    with pytest.raises(StoreMisconfigured) as info:
        open_broker(url_of(path))
    assert_one_line(info, "(answer)")


def test_shared_adds_our_tables_beside_the_apps_and_leaves_user_version(tmp_path):
    path = tmp_path / "app.db"
    make_app_database(path)

    store = open_broker(url_of(path, "?shared=1"))
    store.enqueue([job("beside-the-app")])
    store.close()

    assert tables_of(path) == sorted([*OUR_TABLES, *APP_TABLES])
    assert pragma(path, "journal_mode") == "wal"  # shared=1 asked for this
    assert pragma(path, "user_version") == 7  # the app's marker, untouched
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT name FROM users").fetchall() == [("kept",)]
    raw.close()
    # From now on it holds conveyor's tables: opened without shared=1, it is used.
    store = open_broker(url_of(path))
    assert store.get("beside-the-app") is not None
    store.close()


def test_conveyor_tables_beside_others_are_used_without_changing_the_journal_mode(tmp_path):
    path = tmp_path / "app.db"
    make_app_database(path)
    open_broker(url_of(path, "?shared=1")).close()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA journal_mode = delete")  # the application's own choice, later
    raw.close()

    store = open_broker(url_of(path))  # not shared=1: the file is not conveyor's to switch
    store.enqueue([job("still-works")])
    assert [j.id for j in store.claim(["default"], 10, 30, "w")] == ["still-works"]
    store.close()
    assert pragma(path, "journal_mode") == "delete"
    assert pragma(path, "user_version") == 7


# -- conveyor's own databases, old and new -----------------------------------


@pytest.mark.parametrize("content", [None, b""], ids=["no file", "empty file"])
def test_no_file_or_an_empty_one_is_ours_to_set_up(tmp_path, content):
    path = tmp_path / "jobs.db"
    if content is not None:
        path.write_bytes(content)
    store = open_broker(url_of(path))
    store.enqueue([job("a")])
    store.close()
    assert tables_of(path) == OUR_TABLES
    assert pragma(path, "journal_mode") == "wal"


def test_a_database_from_before_conveyor_meta_keeps_working(tmp_path):
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA journal_mode = WAL")
    raw.executescript(VERSION_1_SCHEMA)
    raw.execute(OLD_INSERT, ("old-job", "tasks.add", "default", "waiting", "[]", 1.0))
    raw.close()

    # A read-only open uses it as it is, creating nothing.
    store = open_broker(url_of(path), create=False)
    assert store.get("old-job") is not None
    store.close()
    assert "conveyor_meta" not in tables_of(path)

    store = open_broker(url_of(path))
    assert [j.id for j in store.claim(["default"], 10, 30, "w")] == ["old-job"]
    store.close()
    raw = sqlite3.connect(path)
    assert raw.execute(SQL.schema_version).fetchone()[0] == 2  # recorded our way now
    raw.close()
    assert pragma(path, "user_version") == 1  # and the old marker left alone


def test_a_database_from_before_unique_keys_gets_their_table(tmp_path):
    path = tmp_path / "jobs.db"
    make_conveyor_database(path, "dead-one")
    raw = sqlite3.connect(path)
    raw.execute("DROP TABLE conveyor_unique")  # as conveyor made it before unique keys
    raw.execute("UPDATE conveyor_jobs SET state = 'dead', finished_at = 1.0")
    raw.commit()
    raw.close()

    # Commands that never create leave it without, and work: no job holds a key.
    store = SQLiteBroker(url_of(path), SystemClock(), create=False)
    assert store.retry(["dead-one"]) == 1
    assert store.cancel("dead-one")
    assert store.purge("default", ["waiting", "cancelled"]) == 1
    assert store.trim("default", "dead", keep=0) == 0
    store.close()
    assert "conveyor_unique" not in tables_of(path)

    store = SQLiteBroker(url_of(path), SystemClock())  # may create: the table is added
    unique = NewJob(id="u1", task="t", queue="default", payload="[]", unique_key="k", unique_for=60)
    assert store.enqueue([unique])[0].created
    unique.id = "u2"
    assert store.enqueue([unique])[0].record.id == "u1"
    store.close()
    assert "conveyor_unique" in tables_of(path)


def test_a_version_1_database_is_brought_up_to_version_2(tmp_path):
    """Made by the conveyor before flow control: read-only opens use it as it
    is; the first store that may create adds rate_key and the control tables,
    and its jobs run as before, beside new ones that carry a key."""
    path = tmp_path / "v1.db"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA journal_mode = WAL")
    raw.executescript(VERSION_1_SCHEMA.replace("PRAGMA user_version = 1;", ""))
    raw.execute("CREATE TABLE conveyor_meta (key TEXT PRIMARY KEY, value NOT NULL)")
    raw.execute("INSERT INTO conveyor_meta VALUES ('schema_version', 1)")
    raw.execute(OLD_INSERT, ("old-job", "tasks.add", "default", "waiting", "[]", 1.0))
    raw.close()

    store = open_broker(url_of(path), create=False)
    assert store.get("old-job").rate_key is None
    assert [j.id for j in store.list()] == ["old-job"]
    store.close()
    assert tables_of(path) == ["conveyor_jobs", "conveyor_meta"]

    for _ in range(2):  # the second open finds version 2 and changes nothing
        store = open_broker(url_of(path))
        store.close()
    assert tables_of(path) == OUR_TABLES
    raw = sqlite3.connect(path)
    assert raw.execute(SQL.schema_version).fetchone()[0] == 2
    raw.close()

    store = open_broker(url_of(path))
    store.enqueue([NewJob(id="new-job", task="t", queue="default", payload="[]", rate_key='"k"')])
    store.controls = Controls(task_rates={"t": RateLimit(1, 60.0)})
    claimed = store.claim(["default"], 10, 30, "w")
    assert [(j.id, j.rate_key) for j in claimed] == [("old-job", None), ("new-job", '"k"')]
    store.close()


@pytest.mark.parametrize("create", [True, False])
def test_a_newer_schema_is_refused(tmp_path, create):
    path = tmp_path / "jobs.db"
    make_conveyor_database(path, "a")
    raw = sqlite3.connect(path)
    raw.execute("UPDATE conveyor_meta SET value = 3 WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    before = folder_snapshot(tmp_path)
    url = url_of(path)
    with pytest.raises(StoreMisconfigured) as info:
        SQLiteBroker(url, SystemClock(), create=create)
    assert_one_line(info, url, f"schema version of {path}, 3, is newer than this conveyor's 2")
    assert folder_snapshot(tmp_path) == before


def test_unexpected_columns_are_refused(tmp_path):
    path = tmp_path / "jobs.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE conveyor_jobs (id TEXT, what TEXT)")
    raw.close()
    with pytest.raises(StoreMisconfigured) as info:
        open_broker(url_of(path))
    assert_one_line(info, "is not a conveyor database (unexpected conveyor_jobs columns)")


def test_a_folder_is_not_a_database(tmp_path):
    (tmp_path / "jobs.db").mkdir()
    url = url_of(tmp_path / "jobs.db")
    with pytest.raises(StoreMisconfigured) as info:
        open_broker(url)
    assert_one_line(info, url, "is a folder, not a database file")


def test_processes_opening_a_new_file_together_all_get_it(tmp_path):
    # Each one sees no file, then sets up under the write lock: no "table
    # exists" error, no refusal of a database another one just set up.
    path = tmp_path / "jobs.db"
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def open_one(n: int) -> None:
        start.wait()
        try:
            store = SQLiteBroker(url_of(path, "?timeout=30"), SystemClock())
            store.enqueue([job(f"from-{n}")])
            store.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store = open_broker(url_of(path))
    assert store.counts()["default"]["waiting"] == 6
    store.close()


def test_shared_must_be_1_or_0(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as info:
        open_broker("sqlite:///jobs.db?shared=true")
    assert_one_line(info, "sqlite:///jobs.db?shared=true", "shared must be 1 or 0, not 'true'")
    with pytest.raises(ConfigurationError) as info:
        open_broker("sqlite:///jobs.db?share=1")
    assert_one_line(info, "unknown option 'share' (known: synchronous, timeout, shared)")
    assert list(tmp_path.iterdir()) == []
    open_broker("sqlite:///jobs.db?shared=0").close()


# -- read-only opens (create=False) ------------------------------------------

ODD_NAMES = ["jobs.db", "my jobs.db", "what?.db", "hash#tag.db", "100%.db", "a%20b.db", "é.db"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_a_read_only_open_of_a_missing_file_creates_nothing(tmp_path, name):
    path = tmp_path / name
    url = url_of(path)
    with pytest.raises(StoreMisconfigured) as info:
        open_broker(url, create=False)
    assert str(info.value) == (
        f"{url}: no database at {path} (this command never creates one: "
        "check the path or CONVEYOR_URL)"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_open_in_a_missing_folder_creates_nothing(tmp_path):
    path = tmp_path / "no" / "jobs.db"
    with pytest.raises(StoreMisconfigured) as info:
        open_broker(url_of(path), create=False)
    assert_one_line(info, f"no database at {path}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_file_names_name_the_same_file_every_way(tmp_path, name):
    path = tmp_path / name
    store = open_broker(url_of(path))
    store.enqueue([job("a")])
    store.close()
    # SQLite's -wal and -shm sit beside it; nothing else appeared.
    assert {p.name for p in tmp_path.iterdir()} <= {name, name + "-wal", name + "-shm"}
    assert path.is_file()
    reader = open_broker(url_of(path), create=False)
    try:
        assert reader.get("a") is not None
        again = open_broker(reader.location, create=False)  # location is a URL too
        assert again.path == str(path)
        again.close()
    finally:
        reader.close()


def test_a_read_only_open_of_an_empty_file_changes_nothing(tmp_path):
    path = tmp_path / "jobs.db"
    path.touch()
    url = url_of(path)
    with pytest.raises(StoreMisconfigured) as info:
        open_broker(url, create=False)
    assert_one_line(info, url, f"{path} holds no conveyor tables", "never creates a store")
    assert folder_snapshot(tmp_path) == {"jobs.db": b""}


def test_a_read_only_open_of_a_conveyor_database_reads_and_writes_jobs(tmp_path):
    path = tmp_path / "jobs.db"
    make_conveyor_database(path, "a", "b")
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA journal_mode = delete")  # to see that it is not switched back
    raw.close()

    store = open_broker(url_of(path), create=False)
    try:
        assert [j.id for j in store.list()] == ["a", "b"]
        assert store.counts()["default"]["waiting"] == 2
        assert store.cancel("a")  # retry and cancel open this way too
        assert store.retry(["a"]) == 1
    finally:
        store.close()
    assert pragma(path, "journal_mode") == "delete"


# -- the file deleted or replaced under a running process --------------------


@pytest.fixture
def running(tmp_path):
    """A store with a job, as a worker holds it."""
    path = tmp_path / "jobs.db"
    store = SQLiteBroker(url_of(path), SystemClock())
    store.enqueue([job("a")])
    yield store
    store.close()


def test_recover_works_while_the_file_is_untouched(running):
    for _ in range(3):
        assert running.recover(max_stalled=1) == []


def test_recover_notices_the_file_was_deleted(running, tmp_path):
    path = tmp_path / "jobs.db"
    os.remove(path)
    with pytest.raises(StoreMisconfigured) as info:
        running.recover(max_stalled=1)
    assert_one_line(
        info,
        running.url,
        f"the database file {path} was deleted or moved away while this process had it open",
        "restart the process",
    )


def test_recover_notices_the_file_was_moved_away(running, tmp_path):
    os.rename(tmp_path / "jobs.db", tmp_path / "moved.db")
    with pytest.raises(StoreMisconfigured) as info:
        running.recover(max_stalled=1)
    assert_one_line(info, "was deleted or moved away")


def test_recover_notices_the_file_was_replaced(running, tmp_path):
    path = tmp_path / "jobs.db"
    make_conveyor_database(tmp_path / "other.db", "b")
    os.replace(tmp_path / "other.db", path)
    with pytest.raises(StoreMisconfigured) as info:
        running.recover(max_stalled=1)
    assert_one_line(
        info,
        running.url,
        f"the database file {path} was replaced by another file while this process had it open",
        "jobs enqueued from now on go to the new one, which it never sees",
    )


def test_a_new_thread_never_recreates_a_deleted_file(running, tmp_path):
    path = tmp_path / "jobs.db"
    os.remove(path)
    seen: list[BaseException] = []

    def read() -> None:
        try:
            running.get("a")
        except BaseException as exc:
            seen.append(exc)

    thread = threading.Thread(target=read)  # its connection opens now
    thread.start()
    thread.join()
    assert isinstance(seen[0], StoreMisconfigured), seen
    assert "was deleted or moved away" in str(seen[0])
    assert not path.exists()


def test_files_that_vanish_while_a_new_thread_connects_are_told_as_deleted(
    running, tmp_path, monkeypatch
):
    """The race a worker met: its new thread's connection passed the look at
    the file, then the file and its -wal and -shm went before the first
    statement ("disk I/O error"). That is the deleted-file story, not a bug."""
    from conveyor.brokers.sqlite_file import DatabaseFile

    looked = DatabaseFile.check_unchanged

    def look_then_delete(self: DatabaseFile) -> None:
        looked(self)
        for path in tmp_path.glob("jobs.db*"):
            path.unlink()
        monkeypatch.setattr(DatabaseFile, "check_unchanged", looked)

    monkeypatch.setattr(DatabaseFile, "check_unchanged", look_then_delete)
    # The first statement fails, as it did there (SQLite's "disk I/O error"
    # cannot be had on demand; any error of that statement takes this path).
    monkeypatch.setattr(running._file, "synchronous", "NORMAL; SELECT 1")
    seen: list[BaseException] = []

    def read() -> None:
        try:
            running.get("a")
        except BaseException as exc:
            seen.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    assert isinstance(seen[0], StoreMisconfigured), seen
    assert "was deleted or moved away" in str(seen[0])
    assert not (tmp_path / "jobs.db").exists()


def test_a_new_thread_never_works_on_a_replacing_file(running, tmp_path):
    make_conveyor_database(tmp_path / "other.db", "b")
    os.replace(tmp_path / "other.db", tmp_path / "jobs.db")
    seen: list[object] = []

    def read() -> None:
        try:
            seen.append(running.get("b"))
        except BaseException as exc:
            seen.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    assert isinstance(seen[0], StoreMisconfigured), seen


# -- location ----------------------------------------------------------------


def test_location_is_the_absolute_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_broker("sqlite:///rel.db?timeout=3")
    try:
        assert store.location == f"sqlite:///{tmp_path / 'rel.db'}"
        assert store.location.startswith("sqlite:////")
    finally:
        store.close()
