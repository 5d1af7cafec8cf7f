"""The SQLite connection: opening, migrations, transactions, errors mapped.

SQLite in WAL mode with ``synchronous=FULL``: once a write method returns, the
change survives kill -9 and power loss. Only the modules of this folder
(``storage/sqlite/``) import ``sqlite3``. SQLite failures surface as :class:`QueueError`,
except those the disk caused (full, read-only, I/O error), which are
:class:`~bgsyncd.errors.QueueUnavailable` with the errno in the message.

:class:`SqliteBase` is what the parts of the SQLite queue (jobs, claims,
state) share: one connection behind a lock, the clock, read and write
transactions.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bgsyncd.errors import BgsyncdError, QueueUnavailable, describe_os_error
from bgsyncd.storage.contract import QueueError
from bgsyncd.storage.sqlite.faults import check_openable, describe_disk_failure, is_disk_failure
from bgsyncd.storage.sqlite.schema import MIGRATIONS, SCHEMA_VERSION


def failure(exc: Exception, path: Path | str) -> BgsyncdError:
    """The project's error for a SQLite (or encoding) failure of the database at ``path``."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
        if is_disk_failure(code, str(exc)) and isinstance(path, Path):
            return QueueUnavailable(
                f"queue database {path}: {describe_disk_failure(path, str(exc))}"
            )
    return QueueError(f"queue database: {exc}")


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) and migrate the database at ``path``.

    Whether it can be written is asked without opening it
    (:func:`~bgsyncd.storage.sqlite.faults.check_openable`): this process may already
    hold a connection to it (the daemon's queue and request log are two), and
    closing a descriptor of the file by hand would release that connection's
    locks, so that a command closing beside the daemon deletes its WAL.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_openable(path)
    except OSError as exc:
        raise QueueError(
            f"cannot open the queue database {path}: {describe_os_error(exc)}"
        ) from None
    try:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, because a
        # deferred read-then-write transaction fails with SQLITE_BUSY at once.
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        detail = str(exc)
        if is_disk_failure(getattr(exc, "sqlite_errorcode", None), detail):
            detail = describe_disk_failure(path, detail)
        raise QueueError(f"cannot open the queue database {path}: {detail}") from exc
    if str(mode).lower() != "wal":
        conn.close()
        raise QueueError(f"{path}: WAL mode unavailable (the database must be on a local disk)")
    try:
        with transaction(conn):
            version = check_version(conn, path)
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[number - 1]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except sqlite3.Error as exc:
        conn.close()
        raise failure(exc, path) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def check_version(conn: sqlite3.Connection, path: Path | str) -> int:
    """The schema version of the open database; a newer one than we know is refused."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise QueueError(
            f"{path} has queue schema version {version}, but this bgsyncd knows only up to "
            f"{SCHEMA_VERSION}: upgrade bgsyncd or use another database"
        )
    return version


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error; joins one already open.

    SQLite errors pass through unchanged: the caller knows the path to name.
    """
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def rollback(conn: sqlite3.Connection) -> None:
    """End an open transaction, whatever went wrong in it.

    A COMMIT that failed (disk full) leaves the transaction open: without this,
    every later write would join it and none would ever be committed.
    """
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


class SqliteBase:
    """One connection shared by the daemon's threads behind a lock."""

    _conn: sqlite3.Connection
    _path: Path | None
    _clock: Callable[[], float]
    _readonly: bool
    _lock: threading.RLock
    _last_folder: str | None

    def _setup(
        self,
        conn: sqlite3.Connection,
        clock: Callable[[], float],
        readonly: bool,
        path: Path | None = None,
    ) -> None:
        self._conn = conn
        self._path = path
        self._clock = clock
        self._readonly = readonly
        self._lock = threading.RLock()
        self._last_folder = None  # round-robin position

    def close(self) -> None:
        """Close the connection; the queue cannot be used afterwards."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except (sqlite3.Error, UnicodeError) as exc:
                # UnicodeError: a name that is not valid UTF-8 cannot be stored.
                raise failure(exc, self._path or "") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self._readonly:
            raise QueueError("the queue was opened read-only")
        with self._read() as conn, transaction(conn):
            yield conn
