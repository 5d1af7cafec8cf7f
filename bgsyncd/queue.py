"""The durable job queue: jobs, output-name claims, the request log, daemon state.

SQLite in WAL mode with ``synchronous=FULL``: once a write method returns, the
change survives kill -9 and power loss. This is the only module that imports
``sqlite3``; its public methods speak ``Found``, ``Job``, str, int and float
only, so a second backend (PostgreSQL, for several hosts sharing one key) can
implement the same interface. SQLite failures surface as :class:`QueueError`.

A job's life: ``pending`` -> ``in_flight`` (claimed with a lease) -> ``done``,
``quarantined`` or ``retry_wait`` (back to ``pending`` when its time comes).
A run that dies leaves ``in_flight`` rows; :meth:`Queue.recover` returns them
to ``pending`` with ``resend`` set, because the API may already have charged.

Methods that change one job by id do nothing if the job was forgotten meanwhile
(its input vanished): there is nothing left to record.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bgsyncd.errors import BgsyncdError
from bgsyncd.queue_sql import (
    COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    SQL_ANY_PENDING,
    SQL_ANY_PENDING_IN,
    SQL_CLAIMED_BY,
    SQL_COUNTS,
    SQL_FIRST_FOLDER,
    SQL_IS_UNCHANGED,
    SQL_NEXT_FOLDER,
    SQL_NEXT_RETRY,
    SQL_NEXT_RETRY_IN,
    SQL_OLDEST_IN_FOLDER,
    SQL_OLDEST_OPEN,
    SQL_OWNER,
    SQL_PROMOTE,
    SQL_QUARANTINED,
    SQL_QUARANTINED_IN,
    SQL_RECOVER,
    SQL_SINCE,
    SQL_UPSERT,
)

STATES = ("pending", "in_flight", "retry_wait", "done", "quarantined")


class QueueError(BgsyncdError):
    """The queue database cannot be opened, read or written."""


@dataclass(frozen=True)
class Found:
    """A complete file in an inbox, as the watcher saw it."""

    folder: str
    relpath: str
    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class Job:
    """One input file's row in the queue."""

    id: int
    folder: str
    relpath: str
    size: int
    mtime_ns: int
    inode: int
    sha256: str | None
    state: str
    attempts: int
    first_seen: float
    queued_at: float
    resend: bool  # was in flight when a run died: the next send may be a second charge
    reason: str | None = None  # quarantine reason
    last_error: str | None = None  # last failure or quarantine message
    http_status: int | None = None
    next_attempt_at: float | None = None
    outputs: tuple[str, ...] = ()


def _connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) and migrate the database at ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, because a
        # deferred read-then-write transaction fails with SQLITE_BUSY at once.
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except (OSError, sqlite3.Error) as exc:
        raise QueueError(f"cannot open the queue database {path}: {exc}") from exc
    if str(mode).lower() != "wal":
        conn.close()
        raise QueueError(f"{path}: WAL mode unavailable (the database must be on a local disk)")
    try:
        with _transaction(conn):
            version = _check_version(conn, path)
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[number - 1]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


def _check_version(conn: sqlite3.Connection, path: Path | str) -> int:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise QueueError(
            f"{path} has queue schema version {version}, but this bgsyncd knows only up to "
            f"{SCHEMA_VERSION}: upgrade bgsyncd or use another database"
        )
    return version


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error; joins one already open."""
    if conn.in_transaction:
        yield
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except (sqlite3.Error, UnicodeError) as exc:
        raise QueueError(f"queue database: {exc}") from exc


def _job(row: Any) -> Job:
    return Job(
        id=row[0], folder=row[1], relpath=row[2], size=row[3], mtime_ns=row[4], inode=row[5],
        sha256=row[6], state=row[7], attempts=row[8], first_seen=row[9], queued_at=row[10],
        resend=bool(row[11]), reason=row[12], last_error=row[13], http_status=row[14],
        next_attempt_at=row[15], outputs=tuple(json.loads(row[16])),
    )  # fmt: skip


class Queue:
    """The job queue; one connection shared by the daemon's threads behind a lock."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._setup(_connect(Path(path)), clock, readonly=False)

    def _setup(self, conn: sqlite3.Connection, clock: Callable[[], float], readonly: bool) -> None:
        self._conn = conn
        self._clock = clock
        self._readonly = readonly
        self._lock = threading.RLock()
        self._last_folder: str | None = None  # round-robin position

    @classmethod
    def open_readonly(cls, path: Path, clock: Callable[[], float] = time.time) -> Queue:
        """A read-only view for ``status``, safe beside a running daemon.

        Never creates the database: when it does not exist yet (or was never
        initialised) the view is empty, so ``counts()`` is ``{}`` and
        ``get_state`` is None. Write methods raise :class:`QueueError`.
        """
        path = Path(path)
        try:
            conn = None
            if path.exists():
                uri = path.resolve().as_uri() + "?mode=ro"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
                current = False
                try:
                    conn.execute("PRAGMA busy_timeout = 5000")
                    current = _check_version(conn, path) == SCHEMA_VERSION
                finally:
                    if not current:  # not yet initialised (or too new): nothing to show
                        conn.close()
                        conn = None
            if conn is None:
                conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
                for statement in (s for migration in MIGRATIONS for s in migration):
                    conn.execute(statement)
            conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise QueueError(f"cannot read the queue database {path}: {exc}") from exc
        view = cls.__new__(cls)
        view._setup(conn, clock, readonly=True)
        return view

    def close(self) -> None:
        """Close the connection; the queue cannot be used afterwards."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except (sqlite3.Error, UnicodeError) as exc:
                # UnicodeError: a name that is not valid UTF-8 cannot be stored.
                raise QueueError(f"queue database: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self._readonly:
            raise QueueError("the queue was opened read-only")
        with self._read() as conn, _transaction(conn):
            yield conn

    def _update(self, job_id: int, assignments: str, *params: object) -> None:
        with self._write() as conn:
            conn.execute(
                f"UPDATE jobs SET {assignments}, updated_at = ? WHERE id = ?",  # noqa: S608
                (*params, self._clock(), job_id),
            )

    # discovery

    def is_unchanged(self, folder: str, relpath: str, size: int, mtime_ns: int, inode: int) -> bool:
        """True when the queue already knows this path with exactly this size, mtime and inode."""
        with self._read() as conn:
            params = (folder, relpath, size, mtime_ns, inode)
            return conn.execute(SQL_IS_UNCHANGED, params).fetchone() is not None

    def enqueue_many(self, found: Iterable[Found]) -> list[Found]:
        """Queue new and changed files in one transaction; return those queued.

        A changed file goes back to pending with its attempts and hash reset,
        unless it is in flight: the worker notices the change itself.
        """
        queued: dict[tuple[str, str], Found] = {}
        with self._write() as conn:
            now = self._clock()
            for f in found:
                params = (f.folder, f.relpath, f.size, f.mtime_ns, f.inode, now, now, now)
                if conn.execute(SQL_UPSERT, params).rowcount:
                    queued[(f.folder, f.relpath)] = f
        return list(queued.values())

    def forget(self, job_id: int) -> None:
        """Delete a job and its output claims (its input vanished)."""
        with self._write() as conn:
            conn.execute("DELETE FROM output_claims WHERE job_id = ?", (job_id,))
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def find(self, folder: str, relpath: str) -> Job | None:
        """The job for this input path, if any."""
        with self._read() as conn:
            sql = f"SELECT {COLUMNS} FROM jobs WHERE folder = ? AND relpath = ?"  # noqa: S608
            row = conn.execute(sql, (folder, relpath)).fetchone()
        return None if row is None else _job(row)

    def get(self, job_id: int) -> Job | None:
        """The job with this id, if it still exists."""
        with self._read() as conn:
            sql = f"SELECT {COLUMNS} FROM jobs WHERE id = ?"  # noqa: S608
            row = conn.execute(sql, (job_id,)).fetchone()
        return None if row is None else _job(row)

    # dispatch

    def recover(self) -> int:
        """At start: every in_flight job goes back to pending marked resend; return how many."""
        with self._write() as conn:
            return conn.execute(SQL_RECOVER, (self._clock(),)).rowcount

    def claim(self, lease_seconds: float, folders: Collection[str] | None = None) -> Job | None:
        """Take the next job: round-robin over folders with pending work, oldest first.

        ``folders`` limits the claim to those folders (the configured ones: a
        folder removed by a reload keeps its jobs for a later configuration).
        """
        with self._write() as conn:
            now = self._clock()
            conn.execute(SQL_PROMOTE, (now, now))
            folder = self._next_folder(conn, folders)
            if folder is None:
                return None
            job = _job(conn.execute(SQL_OLDEST_IN_FOLDER, (folder,)).fetchone())
            conn.execute(
                "UPDATE jobs SET state = 'in_flight', lease_until = ?, updated_at = ? WHERE id = ?",
                (now + lease_seconds, now, job.id),
            )
            self._last_folder = job.folder
        return replace(job, state="in_flight")

    def _next_folder(self, conn: sqlite3.Connection, allowed: Collection[str] | None) -> str | None:
        """The folder after the last one served that has pending work (wrapping round)."""
        after = self._last_folder
        wrapped = after is None
        while True:
            if after is None:
                row = conn.execute(SQL_FIRST_FOLDER).fetchone()
            else:
                row = conn.execute(SQL_NEXT_FOLDER, (after,)).fetchone()
            if row is None:
                if wrapped:
                    return None
                wrapped, after = True, None
                continue
            folder: str = row[0]
            if allowed is None or folder in allowed:
                return folder
            if wrapped and self._last_folder is not None and folder >= self._last_folder:
                return None  # came round to where we started
            after = folder

    def next_ready_at(self, folders: Collection[str] | None = None) -> float | None:
        """Now if a job is pending, else when the earliest retry is due, else None.

        ``folders`` limits the answer to those folders, as for ``claim``.
        """
        with self._read() as conn:
            if folders is None:
                if conn.execute(SQL_ANY_PENDING).fetchone() is not None:
                    return self._clock()
                at = conn.execute(SQL_NEXT_RETRY).fetchone()[0]
                return None if at is None else float(at)
            times = []
            for folder in folders:
                if conn.execute(SQL_ANY_PENDING_IN, (folder,)).fetchone() is not None:
                    return self._clock()
                at = conn.execute(SQL_NEXT_RETRY_IN, (folder,)).fetchone()[0]
                if at is not None:
                    times.append(float(at))
        return min(times, default=None)

    def set_sha256(self, job_id: int, sha256: str) -> None:
        """Record the content hash of a job's input."""
        self._update(job_id, "sha256 = ?", sha256)

    def complete(self, job_id: int, outputs: Sequence[str]) -> None:
        """Mark a job done with the outputs it wrote."""
        self._update(
            job_id,
            "state = 'done', outputs = ?, lease_until = NULL, resend = 0, next_attempt_at = NULL,"
            " last_error = NULL, http_status = NULL, reason = NULL",
            json.dumps(list(outputs)),
        )

    def quarantine(
        self,
        job_id: int,
        reason: str,
        message: str,
        http_status: int | None,
        location: str | None = None,
    ) -> None:
        """Mark a job quarantined, keeping why and where the file went.

        ``location`` (the file's path relative to the quarantine folder, which
        may carry a ``~2`` suffix) is kept in ``outputs``: a quarantined job
        has no other outputs, and ``retry`` needs to find the right file.
        """
        self._update(
            job_id,
            "state = 'quarantined', reason = ?, last_error = ?, http_status = ?,"
            " lease_until = NULL, resend = 0, next_attempt_at = NULL, outputs = ?",
            reason, message, http_status, json.dumps([location] if location else []),
        )  # fmt: skip

    def retry_later(self, job_id: int, at: float, error: str, *, resend: bool = False) -> int:
        """Count a failed attempt and wait until ``at``; return the attempts so far.

        ``resend``: the failed request's outcome is unknown, so the next send
        may be a second charge (a read timeout after the upload, say).
        """
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET state = 'retry_wait', attempts = attempts + 1,"
                " next_attempt_at = ?, last_error = ?, lease_until = NULL, resend = ?,"
                " updated_at = ? WHERE id = ?",
                (at, error, int(resend), self._clock(), job_id),
            )
            row = conn.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def release(self, job_id: int, *, resend: bool = False) -> None:
        """Put a claimed job back to pending without counting an attempt.

        ``resend``: its request may have reached the API (a shutdown that could
        not wait for it), so the next send is a possible second charge.
        """
        if resend:
            self._update(job_id, "state = 'pending', lease_until = NULL, resend = 1")
        else:
            self._update(job_id, "state = 'pending', lease_until = NULL")

    def claimed_outputs(self, job_id: int) -> list[str]:
        """The output paths (relative to the outbox) this job has claimed."""
        with self._read() as conn:
            rows = conn.execute(SQL_CLAIMED_BY, (job_id,)).fetchall()
        return sorted(row[0] for row in rows)

    def claim_output(self, folder: str, job_id: int, candidates: Iterable[str]) -> str:
        """Return the first candidate output path that is this job's or free, claiming it.

        ``candidates`` is in preference order and may be endless; it is read
        only up to the answer. A name this job owns stays its own across restarts.
        """
        with self._write() as conn:
            for outpath in candidates:
                row = conn.execute(SQL_OWNER, (folder, outpath)).fetchone()
                if row is None:
                    conn.execute(
                        "INSERT INTO output_claims (folder, outpath, job_id) VALUES (?, ?, ?)",
                        (folder, outpath, job_id),
                    )
                    return outpath
                if row[0] == job_id:
                    return outpath
        raise QueueError(f"no free output name for job {job_id} in {folder}")

    # status and retry

    def counts(self) -> dict[str, dict[str, int]]:
        """Jobs per folder and state; every state present for each folder with jobs."""
        result: dict[str, dict[str, int]] = {}
        with self._read() as conn:
            for folder, state, n in conn.execute(SQL_COUNTS):
                result.setdefault(folder, dict.fromkeys(STATES, 0))[state] = n
        return result

    def oldest_pending_queued_at(self) -> float | None:
        """When the oldest job not yet done or quarantined was queued."""
        with self._read() as conn:
            at = conn.execute(SQL_OLDEST_OPEN).fetchone()[0]
        return None if at is None else float(at)

    def quarantined(self, folder: str | None = None) -> list[Job]:
        """Quarantined jobs, of one folder or all, oldest first."""
        with self._read() as conn:
            if folder is None:
                rows = conn.execute(SQL_QUARANTINED).fetchall()
            else:
                rows = conn.execute(SQL_QUARANTINED_IN, (folder,)).fetchall()
        return [_job(row) for row in rows]

    def retry_waiting(self) -> list[Job]:
        """Jobs waiting on a retry, soonest first (``once`` lists those it leaves)."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE state = 'retry_wait'"  # noqa: S608
                " ORDER BY next_attempt_at, id"
            ).fetchall()
        return [_job(row) for row in rows]

    def requeue(self, job_id: int) -> bool:
        """Put a quarantined job back to pending with a fresh count; False if not quarantined."""
        with self._write() as conn:
            now = self._clock()
            cur = conn.execute(
                "UPDATE jobs SET state = 'pending', attempts = 0, last_error = NULL,"
                " http_status = NULL, reason = NULL, sha256 = NULL, resend = 0,"
                " next_attempt_at = NULL, queued_at = ?, updated_at = ?"
                " WHERE id = ? AND state = 'quarantined'",
                (now, now, job_id),
            )
            return cur.rowcount == 1

    def get_state(self, key: str) -> str | None:
        """A daemon state value (pause reason, last credits...), or None."""
        with self._read() as conn:
            row = conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_state(self, key: str, value: str | None) -> None:
        """Set a daemon state value; None deletes it."""
        with self._write() as conn:
            if value is None:
                conn.execute("DELETE FROM state WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT INTO state (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )


class SqliteRequestLog:
    """The pacer's log of request start times, durable across restarts.

    Lives in the queue database file with its own connection, so a pacer wait
    never queues behind a queue write. Times are wall-clock seconds.
    """

    def __init__(self, path: Path, keep_seconds: float = 3600.0) -> None:
        self._conn = _connect(Path(path))
        self._lock = threading.Lock()
        self._keep = keep_seconds
        self._records = 0

    def record(self, t: float) -> None:
        """Log a request start; committed (durable) before it returns."""
        with self._lock, _transaction(self._conn):
            self._conn.execute("INSERT INTO request_log (t) VALUES (?)", (t,))
            self._records += 1
            if self._records % 100 == 1:  # prune now and then, not on every request
                self._conn.execute("DELETE FROM request_log WHERE t < ?", (t - self._keep,))

    def since(self, t: float) -> list[float]:
        """Start times at or after ``t``, oldest first."""
        with self._lock:
            try:
                return [row[0] for row in self._conn.execute(SQL_SINCE, (t,))]
            except sqlite3.Error as exc:
                raise QueueError(f"queue database: {exc}") from exc

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()
