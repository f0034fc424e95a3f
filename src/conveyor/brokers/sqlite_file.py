"""The SQLite store's database file: ``DatabaseFile`` owns everything about it.

That is: the URL and its options, opening the file (and refusing one that is
not conveyor's), setting up its schema, the connections, the transactions
the operations run in, the one-line errors that name the URL, noticing a file
deleted or replaced under a running process, and forgetting the connections
in a forked child. The operations themselves (``SQLiteBroker``) live in
``sqlite.py`` and go through a ``DatabaseFile`` for every transaction and
read. This module also reads ``sqlite.sql`` into ``SQL`` once: the schema it
sets up lives there, beside the operations' statements, which ``sqlite.py``
takes from here.

Connections. Several threads and processes may share one database file.
Each thread gets its own connection (SQLite connections must not be used by
two threads at once), opened lazily. Connections are in autocommit mode and
every write is exactly one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction
(``DatabaseFile.tx``).

Durability. The database runs in WAL mode with ``synchronous=NORMAL`` by
default: a committed transaction survives a crash of the process (even
``kill -9``), but an operating-system crash or a power cut can roll back the
most recent commits, those made since the WAL was last synced to disk (at a
checkpoint). The database itself stays consistent either way; only those
last moves are lost (a completed job may be waiting again, an enqueued job
may be missing). ``?synchronous=full`` syncs the WAL on every commit, so a
commit survives a power cut too, at the cost of one fsync per transaction.

Whose file it is. Conveyor changes only a database it created, unless
asked. Before writing anything (even the persistent WAL switch) it looks at
what the file holds: no file, an empty file or a database without tables is
its own to set up; a database holding ``conveyor_jobs`` is used (its journal
mode left alone if other tables sit beside it); a database holding other
tables and no ``conveyor_jobs`` is refused (``StoreMisconfigured``) unless
the URL says ``?shared=1``, and then conveyor adds its tables beside the
others and switches the file to WAL. Its schema version lives in its own
table, ``conveyor_meta``: ``PRAGMA user_version`` is many applications'
migration marker and is never written.

``create=False`` (commands that only read or change existing jobs) never
creates a file, a table or a journal mode: a missing file or one without
conveyor's tables is an error, so a mistyped path does not leave an empty
database behind.

A file deleted or replaced under a running process: the process would keep
using the old file while new jobs go to the new one. ``recover()``, which
every worker calls every few seconds, checks that the path still names the
file opened (``DatabaseFile.check_unchanged``), and raises
``StoreMisconfigured`` when it does not.

URL: ``sqlite:///relative/path.db`` (from the current folder) or
``sqlite:////absolute/path.db``, with the options ``?synchronous=normal|full``,
``?timeout=SECONDS`` (how long to wait for another writer, default 10) and
``?shared=1`` (conveyor may add its tables to a database it did not create).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sqlite3
import threading
import weakref
from collections.abc import Callable, Sequence
from importlib.resources import files
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from conveyor.brokers.base import JobRecord
from conveyor.errors import (
    ConfigurationError,
    ConveyorError,
    StoreMisconfigured,
    StoreUnavailable,
)

# conveyor_meta's schema_version. 1: the jobs; 2: the jobs' rate_key, and the
# tables of flow control (conveyor_starts, conveyor_buckets). A version 1 file
# is brought up to 2 when a store that may create opens it. conveyor_unique
# (unique keys) is added, when missing, by any store that may create.
SCHEMA_VERSION = 2
OUR_TABLES = frozenset(
    {"conveyor_jobs", "conveyor_meta", "conveyor_starts", "conveyor_buckets", "conveyor_unique"}
)
SHOWN_TABLES = 5  # how many of a foreign database's tables an error names
# RETURNING (3.35), UPDATE ... FROM (3.33) and the ->> JSON operator (3.38).
MIN_SQLITE = (3, 38)
SYNCHRONOUS = ("normal", "full")
DEFAULT_TIMEOUT = 10.0
COLUMNS = tuple(field.name for field in dataclasses.fields(JobRecord))
# The columns of a version 1 file: all but rate_key, the last (added at the end).
COLUMNS_V1 = COLUMNS[: COLUMNS.index("rate_key")]


def _load_queries() -> SimpleNamespace:
    """Parse ``sqlite.sql`` into ``name -> SQL`` once, dropping comment lines."""
    text = files("conveyor.brokers").joinpath("sqlite.sql").read_text(encoding="utf-8")
    queries = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        queries[name.strip()] = "\n".join(lines).strip()
    return SimpleNamespace(**queries)


SQL = _load_queries()


def parse_url(url: str) -> tuple[str, str, float, bool]:
    """``(absolute path, synchronous, busy timeout, shared)`` from a ``sqlite:`` URL."""
    parts = urlsplit(url)
    path = unquote(parts.path)[1:]  # the SQLAlchemy convention: drop one slash
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    synchronous = options.pop("synchronous", "normal").lower()
    try:
        timeout = float(options.pop("timeout", DEFAULT_TIMEOUT))
    except ValueError:
        timeout = math.nan
    shared = options.pop("shared", "0")
    problem = None
    if parts.netloc or not path or path == ":memory:":
        problem = "write sqlite:///relative/path.db or sqlite:////absolute/path.db"
    elif options:
        problem = f"unknown option {next(iter(options))!r} (known: synchronous, timeout, shared)"
    elif synchronous not in SYNCHRONOUS:
        problem = "synchronous must be normal or full"
    elif not 0 <= timeout < math.inf:
        problem = "timeout must be a number of seconds"
    elif shared not in ("0", "1"):
        problem = f"shared must be 1 or 0, not {shared!r}"
    if problem:
        raise ConfigurationError(f"bad store URL {url!r}: {problem}")
    return os.path.abspath(path), synchronous, timeout, shared == "1"


def _listed(names: Sequence[str]) -> str:
    """A few names for a one-line message: ``a, b, c`` or ``a, b, ... (9 in all)``."""
    shown = ", ".join(names[:SHOWN_TABLES])
    return shown if len(names) <= SHOWN_TABLES else f"{shown}, ... ({len(names)} in all)"


@dataclasses.dataclass(slots=True)
class _Contents:
    """What a database file holds, as far as conveyor cares (read, never written)."""

    others: list[str]  # tables and views that are not conveyor's
    has_jobs: bool  # conveyor_jobs exists
    has_unique: bool  # conveyor_unique exists (databases made before it lack it)
    columns: tuple[str, ...]  # conveyor_jobs' columns, in table order
    version: Any  # conveyor_meta's schema_version; None when not recorded


# Files whose connections a forked child must forget (see _forget_connections).
_OPEN_FILES: weakref.WeakSet[DatabaseFile] = weakref.WeakSet()


def _forget_connections_after_fork() -> None:
    for database in list(_OPEN_FILES):
        database._forget_connections()


os.register_at_fork(after_in_child=_forget_connections_after_fork)


def _close_connection(
    conn: sqlite3.Connection, connections: list[sqlite3.Connection], lock: threading.Lock
) -> None:
    with lock:
        if conn in connections:
            connections.remove(conn)
    conn.close()


class _Transaction:
    """``with`` block running one ``BEGIN IMMEDIATE`` ... ``COMMIT`` on a connection."""

    __slots__ = ("__weakref__", "conn", "database")

    def __init__(self, database: DatabaseFile, conn: sqlite3.Connection) -> None:
        self.database = database
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise self.database._unavailable(exc) from exc
        return self.conn

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is None:
                self.conn.execute("COMMIT")
                return
        except sqlite3.OperationalError as commit_error:
            exc = commit_error
        if self.conn.in_transaction:  # SQLite may have rolled back already
            self.conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError):
            raise self.database._unavailable(exc) from exc


class DatabaseFile:
    """One SQLite database file, opened for the store: its connections (one
    per thread), its transactions, and the checks that it is, and stays,
    conveyor's file.

    ``after_fork`` is called in a forked child once the parent's connections
    are forgotten: the owner resets there whatever else the fork left behind.
    """

    def __init__(
        self, url: str, *, create: bool = True, after_fork: Callable[[], None] | None = None
    ) -> None:
        self.url = url
        self.create = create
        self.path, self.synchronous, self.timeout, self.shared = parse_url(url)
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StoreMisconfigured(
                f"cannot open {url}: the SQLite store needs SQLite 3.38 or newer, "
                f"this Python has {sqlite3.sqlite_version}"
            )
        self._after_fork = after_fork
        self.has_unique = False  # conveyor_unique exists (_open_database finds out)
        # The path as a file: URI, every character a URI gives a meaning to
        # (?, #, %, space...) escaped: only a URI can say ?mode=rw, which
        # forbids SQLite to create the file.
        self._uri = "file://" + quote(os.fsencode(self.path), safe="/")
        # (st_dev, st_ino) of the file opened, set once it is open: the path
        # must keep naming that file (see check_unchanged).
        self._identity: tuple[int, int] | None = None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._open_database()
        _OPEN_FILES.add(self)

    # -- connections -----------------------------------------------------

    def tx(self) -> _Transaction:
        """This thread's transaction helper: ``with database.tx() as conn:``
        runs one ``BEGIN IMMEDIATE`` ... ``COMMIT``."""
        try:
            tx: _Transaction = self._local.tx
            return tx
        except AttributeError:
            return self._connect()

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        return self.tx().conn

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Every row of one statement run outside a transaction."""
        try:
            return self.conn().execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            raise self._unavailable(exc) from exc

    def close(self) -> None:
        """Close every connection; the file is not used again."""
        _OPEN_FILES.discard(self)
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    def _unavailable(self, exc: sqlite3.Error, opening: bool = False) -> StoreUnavailable:
        """The one-line error for a failed SQLite call, naming the URL."""
        where = f"cannot open {self.url}" if opening else self.url
        if "locked" in str(exc) or "busy" in str(exc):
            return StoreUnavailable(
                f"{where}: the database is locked by another connection (waited {self.timeout:g}s)"
            )
        return StoreUnavailable(f"{where}: {exc}")

    def _open_error(self, exc: sqlite3.DatabaseError) -> ConveyorError:
        """The one-line error for a failed SQLite call while opening."""
        if isinstance(exc, sqlite3.OperationalError):  # locked, I/O trouble: may pass
            return self._unavailable(exc, opening=True)
        # "file is not a database", "database disk image is malformed": for good.
        return StoreMisconfigured(
            f"cannot open {self.url}: {self.path} is not a conveyor database ({exc})"
        )

    def _connect(self, mode: str = "rw") -> _Transaction:
        """Open this thread's connection (and its transaction helper).

        Only the first connection of a store that may create its file asks
        for ``mode=rwc``. Any later one (a new thread, a forked child) uses
        ``mode=rw``: after the file was deleted it must fail, not quietly
        start a new empty database of its own.
        """
        try:
            conn = sqlite3.connect(
                f"{self._uri}?mode={mode}",
                uri=True,
                timeout=self.timeout,
                isolation_level=None,  # autocommit: we write BEGIN/COMMIT ourselves
                check_same_thread=False,  # only so close() may close it from any thread
                cached_statements=128,
            )
        except sqlite3.Error as exc:
            if self._identity is None:
                raise  # still opening: _open_database explains it
            self.check_unchanged()  # the likeliest cause: the file is gone
            raise self._unavailable(exc) from exc
        if self._identity is not None:
            # Once per thread, not per call: a thread connecting after the
            # file was replaced would work on the new file while the others
            # work on the old one.
            try:
                self.check_unchanged()
            except ConveyorError:
                conn.close()
                raise
        try:
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except sqlite3.Error as exc:
            # The file went between the look above and this first statement
            # ("disk I/O error"): the same story, told the same way.
            conn.close()
            if self._identity is None:
                raise  # still opening: _open_database explains it
            self.check_unchanged()
            raise self._unavailable(exc) from exc
        with self._connections_lock:
            self._connections.append(conn)
        tx = self._local.tx = _Transaction(self, conn)
        # A thread's locals are dropped when it ends: close its connection
        # then, or a process whose threads come and go (a web server's, say)
        # would keep a file descriptor per thread it ever had.
        weakref.finalize(tx, _close_connection, conn, self._connections, self._connections_lock)
        return tx

    def _forget_connections(self) -> None:
        """In a forked child: drop the parent's connections (SQLite forbids
        using them across fork) and locks; new ones open on first use."""
        self._local = threading.local()
        self._connections = []
        self._connections_lock = threading.Lock()
        if self._after_fork is not None:
            self._after_fork()

    # -- the same file ---------------------------------------------------

    def _identity_now(self) -> tuple[int, int] | None:
        """``(st_dev, st_ino)`` of the file the path names now; None: no such file."""
        try:
            stat = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:  # permissions changed, a network file system...
            raise StoreUnavailable(f"{self.url}: cannot look at {self.path}: {exc}") from exc
        return stat.st_dev, stat.st_ino

    def check_unchanged(self) -> None:
        """Raise StoreMisconfigured when the path no longer names the file
        this store opened: one ``os.stat``.

        Deleted or replaced, the old file stays open and usable here, so
        nothing else would ever fail: this process would work on it while
        every process opening the path from now on works on another file.
        """
        now = self._identity_now()
        if now == self._identity:
            return
        if now is None:
            what = "was deleted or moved away"
            new_file = "a new file"
        else:
            what = "was replaced by another file"
            new_file = "the new one"
        raise StoreMisconfigured(
            f"{self.url}: the database file {self.path} {what} while this process had it "
            f"open: it still uses the old file, and jobs enqueued from now on go to "
            f"{new_file}, which it never sees; restart the process"
        )

    # -- opening ---------------------------------------------------------

    def _open_database(self) -> None:
        """Look at what the file holds; then use it, set it up, or refuse it.

        Nothing is written before the file is known to be conveyor's (or the
        URL says ``shared=1``), so a refusal leaves it as it was, byte for
        byte. With ``create=False`` nothing is written at all.
        """
        self._check_path()
        try:
            conn = self._connect("rwc" if self.create else "rw").conn
            identity = self._identity_now()
            if identity is None:  # without it, check_unchanged could never tell
                raise StoreUnavailable(f"cannot open {self.url}: {self.path} vanished meanwhile")
            found = self._contents(conn)
            changeable = self._judge(found)
            # Whether the unique-key locks' table is there (set up below, when
            # this store may write): a store that may not write to a database
            # made before it leaves the locks alone, and there are none.
            self.has_unique = found.has_unique or self.create
            if self.create:
                self._set_up(conn, changeable)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise self._open_error(exc) from exc
        except BaseException:
            self.close()
            raise
        self._identity = identity

    def _check_path(self) -> None:
        """Refuse, before connecting, a path that cannot be this store."""
        folder = os.path.dirname(self.path)
        if not self.create and not os.path.exists(self.path):
            raise StoreMisconfigured(
                f"{self.url}: no database at {self.path} (this command never creates one: "
                "check the path or CONVEYOR_URL)"
            )
        if os.path.isdir(self.path):
            problem = f"{self.path} is a folder, not a database file"
        elif not os.path.isdir(folder):
            problem = f"folder {folder} does not exist"
        else:
            return
        raise StoreMisconfigured(f"cannot open {self.url}: {problem}")

    @staticmethod
    def _contents(conn: sqlite3.Connection) -> _Contents:
        """What the database holds (reading only: the file is not ours yet)."""
        names = [row[0] for row in conn.execute(SQL.named_objects)]
        columns = tuple(row[0] for row in conn.execute(SQL.jobs_columns))
        version = None
        if "conveyor_meta" in names:
            rows = conn.execute(SQL.schema_version).fetchall()
            version = rows[0][0] if rows else None
        others = [name for name in names if name not in OUR_TABLES]
        return _Contents(
            others, "conveyor_jobs" in names, "conveyor_unique" in names, columns, version
        )

    def _judge(self, found: _Contents) -> bool:
        """Raise StoreMisconfigured for a database this store must not use.
        Otherwise: may conveyor change the file as a whole (switch it to WAL)?"""
        version = found.version
        if version is not None and (not isinstance(version, int) or version < 1):
            problem = (
                f"{self.path} is not a conveyor database "
                f"(conveyor_meta holds the schema_version {version!r})"
            )
        elif version is not None and version > SCHEMA_VERSION:
            problem = (
                f"the schema version of {self.path}, {version}, is newer than this "
                f"conveyor's {SCHEMA_VERSION}: upgrade conveyor"
            )
        elif found.has_jobs and found.columns not in (COLUMNS, COLUMNS_V1):
            problem = f"{self.path} is not a conveyor database (unexpected conveyor_jobs columns)"
        elif found.has_jobs:
            # Conveyor's tables: use them. Beside someone else's, the file
            # as a whole is conveyor's to change only if shared=1 says so.
            return not found.others or self.shared
        elif not self.create:
            holds = (
                f"is not a conveyor database (it holds {_listed(found.others)} "
                "and no conveyor_jobs)"
                if found.others
                else "holds no conveyor tables"
            )
            problem = (
                f"{self.path} {holds} and this command never creates a store: "
                "check the path or CONVEYOR_URL"
            )
        elif found.others and not self.shared:
            shared_url = self.url + ("&" if "?" in self.url else "?") + "shared=1"
            problem = (
                f"{self.path} is not a conveyor database: it holds other tables "
                f"({_listed(found.others)}) and no conveyor_jobs. Conveyor changes no "
                "database it did not create unless asked: to let it add its tables "
                f"beside these and switch the file to WAL mode, open {shared_url}"
            )
        else:
            return True  # empty: conveyor's to set up (or shared=1 allows it)
        raise StoreMisconfigured(f"cannot open {self.url}: {problem}")

    def _set_up(self, conn: sqlite3.Connection, changeable: bool) -> None:
        """Switch to WAL (only a file conveyor may change: the switch is
        persistent), then create whatever is missing of the schema, failing
        fast when the write lock cannot be had."""
        if changeable:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreMisconfigured(
                    f"cannot open {self.url}: cannot use WAL mode here (journal_mode is {mode})"
                )
        conn.execute("BEGIN IMMEDIATE")  # also proves we can get the write lock
        try:
            # Look again under the lock: another process may have set it up since.
            found = self._contents(conn)
            self._judge(found)
            # A new database, one from before conveyor_meta (its version is
            # 1, marked then in PRAGMA user_version, which stays as it is), or
            # one of version 1: what is missing is added, nothing is dropped.
            if not found.has_jobs or found.version != SCHEMA_VERSION or found.columns != COLUMNS:
                if found.has_jobs and found.columns == COLUMNS_V1:
                    conn.execute(SQL.add_rate_key)
                for statement in SQL.schema.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(SQL.set_schema_version, (SCHEMA_VERSION,))
            if not found.has_unique:  # a database made before unique keys
                for statement in SQL.unique_schema.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
