"""The job queue on PostgreSQL: the same contract as ``queue.Queue``, for a fleet.

Several hosts on one API key share one database (SPEC §8). This module is the
only one that imports psycopg (the ``postgresql`` extra); the SQLite backend
never loads it. Every time that hosts compare is the database server's clock
(``clock_timestamp()``), never a host's: hosts' clocks disagree. Claims use
``FOR UPDATE SKIP LOCKED`` so two hosts never take one job and never wait for
each other. The schema is created and migrated by the first daemon that
starts, under an advisory lock; a newer schema than this bgsyncd knows is
refused with a clear message. Database failures surface as ``QueueError``,
with the server's message (never the DSN's password: libpq's messages do not
carry it, and the DSN is never put in one).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from bgsyncd.queue import STATES, Found, Job, QueueError

# Migration n (1-based) brings a database from version n-1 to n.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            id BIGSERIAL PRIMARY KEY,
            folder TEXT NOT NULL, relpath TEXT NOT NULL,
            size BIGINT NOT NULL, mtime_ns BIGINT NOT NULL, inode BIGINT NOT NULL,
            sha256 TEXT,
            state TEXT NOT NULL CHECK (state IN
                ('pending', 'in_flight', 'retry_wait', 'done', 'quarantined')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at DOUBLE PRECISION, lease_until DOUBLE PRECISION, owner TEXT,
            resend BOOLEAN NOT NULL DEFAULT FALSE,
            last_error TEXT, http_status INTEGER, reason TEXT,
            first_seen DOUBLE PRECISION NOT NULL, queued_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            outputs TEXT NOT NULL DEFAULT '[]',
            UNIQUE (folder, relpath))""",
        "CREATE INDEX jobs_by_state_folder ON jobs (state, folder, queued_at, id)",
        "CREATE INDEX jobs_by_state_retry ON jobs (state, next_attempt_at)",
        "CREATE INDEX jobs_by_owner ON jobs (owner) WHERE state = 'in_flight'",
        """CREATE TABLE output_claims (
            folder TEXT NOT NULL, outpath TEXT NOT NULL,
            job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            PRIMARY KEY (folder, outpath))""",
        "CREATE INDEX output_claims_by_job ON output_claims (job_id)",
        """CREATE TABLE request_log (
            account TEXT NOT NULL, t DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX request_log_by_account_t ON request_log (account, t)",
        "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE hosts (
            id TEXT PRIMARY KEY, folders TEXT NOT NULL DEFAULT '[]',
            last_seen DOUBLE PRECISION NOT NULL, in_flight INTEGER NOT NULL DEFAULT 0,
            instance TEXT NOT NULL DEFAULT '')""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
# pg_advisory_xact_lock keys: fixed, and far from hashtext() values of account hashes.
MIGRATION_LOCK = 0x62677379_6E630001  # "bgsync" + 1

NOW = "extract(epoch from clock_timestamp())"
COLUMNS = (
    "id, folder, relpath, size, mtime_ns, inode, sha256, state, attempts, first_seen,"
    " queued_at, resend, reason, last_error, http_status, next_attempt_at, outputs"
)
SQL_UPSERT = f"""
INSERT INTO jobs (folder, relpath, size, mtime_ns, inode, state, first_seen, queued_at,
                  updated_at)
VALUES (%s, %s, %s, %s, %s, 'pending', {NOW}, {NOW}, {NOW})
ON CONFLICT (folder, relpath) DO UPDATE SET
    size = excluded.size, mtime_ns = excluded.mtime_ns, inode = excluded.inode,
    sha256 = NULL, state = 'pending', attempts = 0, next_attempt_at = NULL,
    lease_until = NULL, owner = NULL, resend = FALSE, last_error = NULL, http_status = NULL,
    reason = NULL, queued_at = excluded.queued_at, updated_at = excluded.updated_at
WHERE jobs.state != 'in_flight'
    AND (jobs.size != excluded.size OR jobs.mtime_ns != excluded.mtime_ns
         OR jobs.inode != excluded.inode)
"""


def _job(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0], folder=row[1], relpath=row[2], size=row[3], mtime_ns=row[4], inode=row[5],
        sha256=row[6], state=row[7], attempts=row[8], first_seen=row[9], queued_at=row[10],
        resend=bool(row[11]), reason=row[12], last_error=row[13], http_status=row[14],
        next_attempt_at=row[15], outputs=tuple(json.loads(row[16])),
    )  # fmt: skip


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Create or upgrade the schema under an advisory lock; return the version found."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS bgsyncd_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM bgsyncd_schema").fetchone()
        version = 0 if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise QueueError(
                f"the PostgreSQL queue has schema version {version}, but this bgsyncd knows"
                f" only up to {SCHEMA_VERSION}: upgrade bgsyncd on this host"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[number - 1]:
                conn.execute(statement)
        if row is None:
            conn.execute("INSERT INTO bgsyncd_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        else:
            conn.execute("UPDATE bgsyncd_schema SET version = %s", (SCHEMA_VERSION,))
    return version


class PgQueue:
    """The queue contract of ``queue.Queue`` on PostgreSQL, for host ``host_id``."""

    def __init__(self, dsn: str, host_id: str, *, pool_size: int = 4) -> None:
        self.host_id = host_id
        self._last_folder: str | None = None  # this host's round-robin position
        try:
            self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
                dsn, min_size=1, max_size=pool_size, open=True, timeout=10.0,
                check=ConnectionPool.check_connection,
            )  # fmt: skip
            with self._pool.connection() as conn:
                migrate(conn)
        except psycopg.Error as exc:
            raise QueueError(f"PostgreSQL queue: {_message(exc)}") from None
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        """Close every connection of the pool."""
        self._pool.close()

    def __enter__(self) -> PgQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on a pooled connection; database errors become QueueError.

        Public for the fleet's other tables (``pgfleet``), which share the pool.
        """
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield conn
        except psycopg.Error as exc:
            raise QueueError(f"PostgreSQL queue: {_message(exc)}") from None
        except UnicodeError as exc:  # a name that is not valid UTF-8 cannot be stored
            raise QueueError(f"PostgreSQL queue: {exc}") from None

    def _update(self, job_id: int, assignments: str, *params: object) -> None:
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE jobs SET {assignments}, updated_at = {NOW} WHERE id = %s",
                (*params, job_id),
            )

    def now(self) -> float:
        """The database server's clock, in Unix seconds."""
        with self.transaction() as conn:
            row = conn.execute(f"SELECT {NOW}").fetchone()
        assert row is not None
        return float(row[0])

    # discovery

    def is_unchanged(self, folder: str, relpath: str, size: int, mtime_ns: int, inode: int) -> bool:
        """True when the queue already knows this path with exactly this size, mtime and inode."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT 1 FROM jobs WHERE folder = %s AND relpath = %s AND size = %s"
                " AND mtime_ns = %s AND inode = %s",
                (folder, relpath, size, mtime_ns, inode),
            ).fetchone()
        return row is not None

    def enqueue_many(self, found: Iterable[Found]) -> list[Found]:
        """Queue new and changed files in one transaction; return those queued."""
        queued: dict[tuple[str, str], Found] = {}
        with self.transaction() as conn:
            for f in found:
                cur = conn.execute(
                    SQL_UPSERT,
                    (f.folder, f.relpath, f.size, f.mtime_ns, f.inode),
                )
                if cur.rowcount:
                    queued[(f.folder, f.relpath)] = f
        return list(queued.values())

    def forget(self, job_id: int) -> None:
        """Delete a job and its output claims (its input vanished)."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM jobs WHERE id = %s", (job_id,))

    # dispatch

    def recover(self) -> int:
        """At start: this host's in_flight jobs go back to pending marked resend."""
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'pending', resend = TRUE, lease_until = NULL,"
                f" owner = NULL, updated_at = {NOW}"
                " WHERE state = 'in_flight' AND (owner = %s OR owner IS NULL)",
                (self.host_id,),
            )
            return cur.rowcount

    def claim(self, lease_seconds: float, folders: Collection[str] | None = None) -> Job | None:
        """Take the next job: round-robin over folders with pending work, oldest first.

        ``FOR UPDATE SKIP LOCKED``: a job another host is claiming right now is
        passed over, never waited for and never taken twice.
        """
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE jobs SET state = 'pending', next_attempt_at = NULL, updated_at = {NOW}"
                f" WHERE state = 'retry_wait' AND next_attempt_at <= {NOW}"
            )
            rows = conn.execute(
                "SELECT DISTINCT folder FROM jobs WHERE state = 'pending' ORDER BY folder"
            ).fetchall()
            names = [r[0] for r in rows if folders is None or r[0] in folders]
            if not names:
                return None
            after = self._last_folder
            order = [n for n in names if after is None or n > after]
            order += [n for n in names if n not in order]
            for folder in order:
                row = conn.execute(
                    f"SELECT {COLUMNS} FROM jobs WHERE state = 'pending' AND folder = %s"
                    " ORDER BY queued_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
                    (folder,),
                ).fetchone()
                if row is None:
                    continue
                job = _job(row)
                conn.execute(
                    f"UPDATE jobs SET state = 'in_flight', lease_until = {NOW} + %s,"
                    f" owner = %s, updated_at = {NOW} WHERE id = %s",
                    (lease_seconds, self.host_id, job.id),
                )
                self._last_folder = folder
                return replace(job, state="in_flight")
        return None

    def next_ready_at(self, folders: Collection[str] | None = None) -> float | None:
        """Now (server clock) if a job is pending, else the earliest retry, else None."""
        allowed = None if folders is None else list(folders)
        with self.transaction() as conn:
            row = conn.execute(
                f"SELECT CASE WHEN EXISTS (SELECT 1 FROM jobs WHERE state = 'pending'"
                f" AND (%(f)s::text[] IS NULL OR folder = ANY(%(f)s))) THEN {NOW} ELSE"
                " (SELECT MIN(next_attempt_at) FROM jobs WHERE state = 'retry_wait'"
                " AND (%(f)s::text[] IS NULL OR folder = ANY(%(f)s))) END",
                {"f": allowed},
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def set_sha256(self, job_id: int, sha256: str) -> None:
        """Record the content hash of a job's input."""
        self._update(job_id, "sha256 = %s", sha256)

    def complete(self, job_id: int, outputs: Sequence[str]) -> None:
        """Mark a job done with the outputs it wrote."""
        self._update(
            job_id,
            "state = 'done', outputs = %s, lease_until = NULL, owner = NULL, resend = FALSE,"
            " next_attempt_at = NULL, last_error = NULL, http_status = NULL, reason = NULL",
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
        """Mark a job quarantined, keeping why and where the file went."""
        self._update(
            job_id,
            "state = 'quarantined', reason = %s, last_error = %s, http_status = %s,"
            " lease_until = NULL, owner = NULL, resend = FALSE, next_attempt_at = NULL,"
            " outputs = %s",
            reason, message, http_status, json.dumps([location] if location else []),
        )  # fmt: skip

    def retry_later(self, job_id: int, at: float, error: str, *, resend: bool = False) -> int:
        """Count a failed attempt and wait until ``at``; return the attempts so far."""
        with self.transaction() as conn:
            row = conn.execute(
                "UPDATE jobs SET state = 'retry_wait', attempts = attempts + 1,"
                " next_attempt_at = %s, last_error = %s, lease_until = NULL, owner = NULL,"
                f" resend = %s, updated_at = {NOW} WHERE id = %s RETURNING attempts",
                (at, error, resend, job_id),
            ).fetchone()
        return 0 if row is None else int(row[0])

    def release(self, job_id: int, *, resend: bool = False) -> None:
        """Put a claimed job back to pending without counting an attempt."""
        if resend:
            self._update(
                job_id, "state = 'pending', lease_until = NULL, owner = NULL, resend = TRUE"
            )
        else:
            self._update(job_id, "state = 'pending', lease_until = NULL, owner = NULL")

    def claimed_outputs(self, job_id: int) -> list[str]:
        """The output paths (relative to the outbox) this job has claimed."""
        with self.transaction() as conn:
            rows = conn.execute(
                "SELECT outpath FROM output_claims WHERE job_id = %s", (job_id,)
            ).fetchall()
        return sorted(row[0] for row in rows)

    def claim_output(self, folder: str, job_id: int, candidates: Iterable[str]) -> str:
        """Return the first candidate output path that is this job's or free, claiming it."""
        with self.transaction() as conn:
            for outpath in candidates:
                row = conn.execute(
                    "INSERT INTO output_claims (folder, outpath, job_id) VALUES (%s, %s, %s)"
                    " ON CONFLICT (folder, outpath) DO UPDATE SET job_id = output_claims.job_id"
                    " RETURNING job_id",
                    (folder, outpath, job_id),
                ).fetchone()
                if row is not None and row[0] == job_id:
                    return outpath
        raise QueueError(f"no free output name for job {job_id} in {folder}")

    # status and retry

    def counts(self) -> dict[str, dict[str, int]]:
        """Jobs per folder and state; every state present for each folder with jobs."""
        result: dict[str, dict[str, int]] = {}
        with self.transaction() as conn:
            rows = conn.execute(
                "SELECT folder, state, COUNT(*) FROM jobs GROUP BY state, folder"
            ).fetchall()
        for folder, state, n in rows:
            result.setdefault(folder, dict.fromkeys(STATES, 0))[state] = int(n)
        return result

    def oldest_pending_queued_at(self) -> float | None:
        """When the oldest job not yet done or quarantined was queued."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT MIN(queued_at) FROM jobs"
                " WHERE state IN ('pending', 'in_flight', 'retry_wait')"
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def quarantined(self, folder: str | None = None) -> list[Job]:
        """Quarantined jobs, of one folder or all, oldest first."""
        with self.transaction() as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE state = 'quarantined'"
                " AND (%(f)s::text IS NULL OR folder = %(f)s) ORDER BY folder, queued_at, id",
                {"f": folder},
            ).fetchall()
        return [_job(row) for row in rows]

    def requeue(self, job_id: int) -> bool:
        """Put a quarantined job back to pending with a fresh count; False if not quarantined."""
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'pending', attempts = 0, last_error = NULL,"
                " http_status = NULL, reason = NULL, sha256 = NULL, resend = FALSE,"
                f" next_attempt_at = NULL, queued_at = {NOW}, updated_at = {NOW}"
                " WHERE id = %s AND state = 'quarantined'",
                (job_id,),
            )
            return cur.rowcount == 1

    def get_state(self, key: str) -> str | None:
        """A shared state value (pause reason, last credits...), or None."""
        with self.transaction() as conn:
            row = conn.execute("SELECT value FROM state WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_state(self, key: str, value: str | None) -> None:
        """Set a shared state value; None deletes it."""
        with self.transaction() as conn:
            if value is None:
                conn.execute("DELETE FROM state WHERE key = %s", (key,))
            else:
                conn.execute(
                    "INSERT INTO state (key, value) VALUES (%s, %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )


def _message(exc: psycopg.Error) -> str:
    """The server's or libpq's own text, on one line."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or str(exc) or type(exc).__name__
    return " ".join(text.split())
