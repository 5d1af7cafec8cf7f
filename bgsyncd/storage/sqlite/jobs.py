"""The SQLite queue's jobs: discovery, dispatch, status and retry (``storage.JobStore``).

A job's life: ``pending`` -> ``in_flight`` (claimed with a lease) -> ``done``,
``quarantined`` or ``retry_wait`` (back to ``pending`` when its time comes).
A run that dies leaves ``in_flight`` rows; :meth:`SqliteJobs.recover` returns
them to ``pending`` with ``resend`` set, because the API may already have charged.

Each claim gets a fresh token; a change to a claimed job is made only while
that claim still holds it, else :class:`~bgsyncd.storage.contract.LeaseLost` (the
fencing of ``storage.JobStore``): a job given back, taken by another handle
after a restart, finished or forgotten meanwhile is left as it is.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import replace

from bgsyncd.storage.contract import (
    COLUMNS,
    STATES,
    Found,
    HookEvent,
    Job,
    LeaseLost,
    Recent,
    job_of,
)
from bgsyncd.storage.sqlite.db import SqliteBase
from bgsyncd.storage.sqlite.hooks import insert_hooks
from bgsyncd.storage.sqlite.schema import (
    SQL_ANY_PENDING,
    SQL_ANY_PENDING_IN,
    SQL_COUNTS,
    SQL_FIRST_FOLDER,
    SQL_IS_UNCHANGED,
    SQL_NEXT_FOLDER,
    SQL_NEXT_RETRY,
    SQL_NEXT_RETRY_IN,
    SQL_OLDEST_IN_FOLDER,
    SQL_OLDEST_OPEN,
    SQL_PROMOTE,
    SQL_QUARANTINED,
    SQL_QUARANTINED_IN,
    SQL_RECOVER,
    SQL_UPSERT,
)


class SqliteJobs(SqliteBase):
    """The ``jobs`` table."""

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

    def forget(self, job: Job) -> None:
        """Delete a claimed job and its output claims (its input vanished)."""
        with self._write() as conn:
            cur = conn.execute(
                "DELETE FROM jobs WHERE id = ? AND state = 'in_flight' AND claim_token = ?",
                (job.id, job.claim_token),
            )
            if cur.rowcount != 1:
                raise _lost(job)
            conn.execute("DELETE FROM output_claims WHERE job_id = ?", (job.id,))

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
            job = job_of(conn.execute(SQL_OLDEST_IN_FOLDER, (folder,)).fetchone())
            token = uuid.uuid4().hex
            conn.execute(
                "UPDATE jobs SET state = 'in_flight', lease_until = ?, claim_token = ?,"
                " updated_at = ? WHERE id = ?",
                (now + lease_seconds, token, now, job.id),
            )
            self._last_folder = job.folder
        return replace(job, state="in_flight", claim_token=token)

    def holds(self, job: Job) -> bool:
        """The claim ``job`` was taken under still holds it (nothing gave it back meanwhile)."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT 1 FROM jobs WHERE id = ? AND state = 'in_flight' AND claim_token = ?",
                (job.id, job.claim_token),
            ).fetchone()
        return row is not None

    def claim_path(self, folder: str, relpath: str, lease_seconds: float) -> Job | None:
        """Take the job of one path, if it may start now (pending, or its wait is over)."""
        with self._write() as conn:
            now = self._clock()
            row = conn.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE folder = ? AND relpath = ?"  # noqa: S608
                " AND (state = 'pending' OR (state = 'retry_wait' AND next_attempt_at <= ?))",
                (folder, relpath, now),
            ).fetchone()
            if row is None:
                return None
            job = job_of(row)
            token = uuid.uuid4().hex
            conn.execute(
                "UPDATE jobs SET state = 'in_flight', next_attempt_at = NULL, lease_until = ?,"
                " claim_token = ?, updated_at = ? WHERE id = ?",
                (now + lease_seconds, token, now, job.id),
            )
        return replace(job, state="in_flight", next_attempt_at=None, claim_token=token)

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

    def record_version(self, job: Job, size: int, mtime_ns: int, inode: int) -> None:
        """Record the version of the input a claimed job read, when it is not the one
        queued: a later find of that same version is not new (not sent twice, nor
        forgotten as vanished once it was deleted after success)."""
        self._change(job, "size = ?, mtime_ns = ?, inode = ?", size, mtime_ns, inode)

    def set_sha256(self, job: Job, sha256: str) -> None:
        """Record the content hash of a claimed job's input."""
        self._change(job, "sha256 = ?", sha256)

    def complete(self, job: Job, outputs: Sequence[str], hooks: Sequence[HookEvent] = ()) -> None:
        """Mark a claimed job done with the outputs it wrote, and record its hooks."""
        with self._write() as conn:
            self._change(
                job,
                "state = 'done', outputs = ?, lease_until = NULL, claim_token = NULL, resend = 0,"
                " next_attempt_at = NULL, last_error = NULL, http_status = NULL, reason = NULL",
                json.dumps(list(outputs)),
            )
            insert_hooks(conn, hooks, self._clock())

    def quarantine(
        self,
        job: Job,
        reason: str,
        message: str,
        http_status: int | None,
        location: str | None = None,
        hooks: Sequence[HookEvent] = (),
    ) -> None:
        """Mark a job quarantined, keeping why and where the file went; record its hooks.

        ``location`` (the file's path relative to the quarantine folder, which
        may carry a ``~2`` suffix) is kept in ``outputs``: a quarantined job
        has no other outputs, and ``retry`` needs to find the right file.
        """
        with self._write() as conn:
            self._change(
                job,
                "state = 'quarantined', reason = ?, last_error = ?, http_status = ?,"
                " lease_until = NULL, claim_token = NULL, resend = 0, next_attempt_at = NULL,"
                " outputs = ?",
                reason, message, http_status, json.dumps([location] if location else []),
            )  # fmt: skip
            insert_hooks(conn, hooks, self._clock())

    def retry_later(self, job: Job, at: float, error: str, *, resend: bool = False) -> int:
        """Count a failed attempt and wait until ``at``; return the attempts so far.

        ``resend``: the failed request's outcome is unknown, so the next send
        may be a second charge (a read timeout after the upload, say).
        """
        with self._write() as conn:
            self._change(
                job,
                "state = 'retry_wait', attempts = attempts + 1, next_attempt_at = ?,"
                " last_error = ?, lease_until = NULL, claim_token = NULL, resend = ?",
                at, error, int(resend),
            )  # fmt: skip
            row = conn.execute("SELECT attempts FROM jobs WHERE id = ?", (job.id,)).fetchone()
        return int(row[0])

    def release(self, job: Job, *, resend: bool = False) -> None:
        """Put a claimed job back to pending without counting an attempt.

        ``resend``: its request may have reached the API (a shutdown that could
        not wait for it), so the next send is a possible second charge.
        """
        self._change(
            job,
            "state = 'pending', lease_until = NULL, claim_token = NULL, resend = resend OR ?",
            int(resend),
        )

    def defer(self, job: Job, at: float, note: str) -> None:
        """Wait until ``at`` without counting an attempt (an input not yet quiet, say)."""
        self._change(
            job,
            "state = 'retry_wait', next_attempt_at = ?, last_error = ?, lease_until = NULL,"
            " claim_token = NULL",
            at,
            note,
        )

    def _change(self, job: Job, assignments: str, *params: object) -> None:
        """Update a claimed job, only while ``job``'s claim still holds it; else LeaseLost."""
        with self._write() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET {assignments}, updated_at = ?"  # noqa: S608 (our constants)
                " WHERE id = ? AND state = 'in_flight' AND claim_token = ?",
                (*params, self._clock(), job.id, job.claim_token),
            )
            if cur.rowcount != 1:
                raise _lost(job)

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
        return [job_of(row) for row in rows]

    def recent(self, limit: int) -> list[Recent]:
        """The ``limit`` jobs whose state changed last, newest first (the status page)."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS}, updated_at FROM jobs"  # noqa: S608 (our constants)
                " ORDER BY updated_at DESC, id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [Recent(job_of(row), float(row[-1])) for row in rows]

    def done_since(self, t: float) -> dict[str, int]:
        """Jobs done at ``t`` or later, per folder (the status page's "done today")."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT folder, COUNT(*) FROM jobs WHERE state = 'done' AND updated_at >= ?"
                " GROUP BY folder",
                (t,),
            ).fetchall()
        return {folder: int(n) for folder, n in rows}

    def last_done(self) -> dict[str, float]:
        """When each folder's last job was done."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT folder, MAX(updated_at) FROM jobs WHERE state = 'done' GROUP BY folder"
            ).fetchall()
        return {folder: float(at) for folder, at in rows}

    def retry_waiting(self) -> list[Job]:
        """Jobs waiting on a retry, soonest first (``once`` lists those it leaves)."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE state = 'retry_wait'"  # noqa: S608
                " ORDER BY next_attempt_at, id"
            ).fetchall()
        return [job_of(row) for row in rows]

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

    def requeue_done(self, folder: str, relpath: str) -> bool:
        """Put the done job of this input back to pending, to be made again (``retry`` after
        the settings changed: the outputs are remade, from the cache when it has the
        answer); False if the path has no done job. Its claimed names stay its own."""
        with self._write() as conn:
            now = self._clock()
            cur = conn.execute(
                "UPDATE jobs SET state = 'pending', attempts = 0, last_error = NULL,"
                " http_status = NULL, reason = NULL, resend = 0, next_attempt_at = NULL,"
                " queued_at = ?, updated_at = ?"
                " WHERE folder = ? AND relpath = ? AND state = 'done'",
                (now, now, folder, relpath),
            )
            return cur.rowcount == 1


def _lost(job: Job) -> LeaseLost:
    return LeaseLost(f"job {job.id} ({job.relpath}) is no longer held by this claim")
