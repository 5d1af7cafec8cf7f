"""The PostgreSQL queue's jobs, shared by the fleet (``storage.JobStore``).

The same life as on SQLite (``storage.sqlite.jobs``), with a host per claim: a job in
flight has an ``owner`` (the claiming host's ``host_id``) and a lease on the
server's clock, renewed by the host's heartbeat (``fleet.hosts.Hosts``). Claims
use ``FOR UPDATE SKIP LOCKED``: two hosts never take one job and never wait
for each other. The times in a :class:`~bgsyncd.storage.contract.Job` are the server's
clock; the times a caller passes or gets back (``retry_later``, ``defer``,
``next_ready_at``, ``oldest_pending_queued_at``) are this host's clock.

Fencing (``storage.JobStore``): each claim gets a fresh token, and every
change to a claimed job says ``WHERE id = %s AND state = 'in_flight' AND
claim_token = %s``. A host frozen, cut off or slow past its lease changes
nothing another host took over (:class:`~bgsyncd.storage.contract.LeaseLost`), and a
finished job stays finished.
"""

from __future__ import annotations

import json
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
from bgsyncd.storage.postgres.db import NOW, PgBase
from bgsyncd.storage.postgres.hooks import insert_hooks

SQL_UPSERT = f"""
INSERT INTO jobs (folder, relpath, size, mtime_ns, inode, state, first_seen, queued_at,
                  updated_at)
VALUES (%s, %s, %s, %s, %s, 'pending', {NOW}, {NOW}, {NOW})
ON CONFLICT (folder, relpath) DO UPDATE SET
    size = excluded.size, mtime_ns = excluded.mtime_ns, inode = excluded.inode,
    sha256 = NULL, state = 'pending', attempts = 0, next_attempt_at = NULL,
    lease_until = NULL, owner = NULL, claim_token = NULL, resend = FALSE, last_error = NULL,
    http_status = NULL,
    reason = NULL, queued_at = excluded.queued_at, updated_at = excluded.updated_at
WHERE jobs.state != 'in_flight'
    AND (jobs.size != excluded.size OR jobs.mtime_ns != excluded.mtime_ns
         OR jobs.inode != excluded.inode)
"""


# What every change that ends a claim sets.
_UNCLAIMED = "lease_until = NULL, owner = NULL, claim_token = NULL"


class PgJobs(PgBase):
    """The ``jobs`` table."""

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
                cur = conn.execute(SQL_UPSERT, (f.folder, f.relpath, f.size, f.mtime_ns, f.inode))
                if cur.rowcount:
                    queued[(f.folder, f.relpath)] = f
        return list(queued.values())

    def forget(self, job: Job) -> None:
        """Delete a claimed job and its output claims (its input vanished)."""
        with self.transaction() as conn:
            cur = conn.execute(
                "DELETE FROM jobs WHERE id = %s AND state = 'in_flight' AND claim_token = %s",
                (job.id, job.claim_token),
            )
            if cur.rowcount != 1:
                raise _lost(job)

    # dispatch

    def recover(self) -> int:
        """At start: this host's in_flight jobs go back to pending marked resend.

        Only this host's (and unowned ones): another host's claims are its own
        until its lease runs out (``fleet.hosts.Hosts.take_over_expired``).
        """
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'pending', resend = TRUE, lease_until = NULL,"
                f" owner = NULL, claim_token = NULL, updated_at = {NOW}"
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
                job = job_of(row)
                token = uuid.uuid4().hex
                conn.execute(
                    f"UPDATE jobs SET state = 'in_flight', lease_until = {NOW} + %s,"
                    f" owner = %s, claim_token = %s, updated_at = {NOW} WHERE id = %s",
                    (lease_seconds, self.host_id, token, job.id),
                )
                self._last_folder = folder
                return replace(job, state="in_flight", claim_token=token)
        return None

    def holds(self, job: Job) -> bool:
        """The claim ``job`` was taken under still holds it (no other host took it over).

        A lease that ran out while no host took the job over (a folder not
        shared, say) still holds: the job is this host's to finish.
        """
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT 1 FROM jobs WHERE id = %s AND state = 'in_flight' AND claim_token = %s",
                (job.id, job.claim_token),
            ).fetchone()
        return row is not None

    def claim_path(self, folder: str, relpath: str, lease_seconds: float) -> Job | None:
        """Take the job of one path, if it may start now (pending, or its wait is over)."""
        with self.transaction() as conn:
            row = conn.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE folder = %s AND relpath = %s"
                f" AND (state = 'pending' OR (state = 'retry_wait' AND next_attempt_at <= {NOW}))"
                " FOR UPDATE SKIP LOCKED",
                (folder, relpath),
            ).fetchone()
            if row is None:
                return None
            job = job_of(row)
            token = uuid.uuid4().hex
            conn.execute(
                f"UPDATE jobs SET state = 'in_flight', next_attempt_at = NULL,"
                f" lease_until = {NOW} + %s, owner = %s, claim_token = %s, updated_at = {NOW}"
                " WHERE id = %s",
                (lease_seconds, self.host_id, token, job.id),
            )
        return replace(job, state="in_flight", next_attempt_at=None, claim_token=token)

    def next_ready_at(self, folders: Collection[str] | None = None) -> float | None:
        """Now if a job is pending, else when the earliest retry is due, else None.

        On this host's clock: the server's answer less the server's now.
        """
        allowed = None if folders is None else list(folders)
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM jobs WHERE state = 'pending'"
                " AND (%(f)s::text[] IS NULL OR folder = ANY(%(f)s))) THEN 0.0 ELSE"
                " (SELECT MIN(next_attempt_at) FROM jobs WHERE state = 'retry_wait'"
                f" AND (%(f)s::text[] IS NULL OR folder = ANY(%(f)s))) - {NOW} END",
                {"f": allowed},
            ).fetchone()
        return None if row is None or row[0] is None else self._clock() + max(0.0, row[0])

    def record_version(self, job: Job, size: int, mtime_ns: int, inode: int) -> None:
        """Record the version of the input a claimed job read, when it is not the one
        queued: a later find of that same version is not new (not sent twice, nor
        forgotten as vanished once it was deleted after success)."""
        self._change(job, "size = %s, mtime_ns = %s, inode = %s", size, mtime_ns, inode)

    def set_sha256(self, job: Job, sha256: str) -> None:
        """Record the content hash of a claimed job's input."""
        self._change(job, "sha256 = %s", sha256)

    def complete(self, job: Job, outputs: Sequence[str], hooks: Sequence[HookEvent] = ()) -> None:
        """Mark a claimed job done with the outputs it wrote, and record its hooks."""
        self._change(
            job,
            f"state = 'done', outputs = %s, {_UNCLAIMED}, resend = FALSE,"
            " next_attempt_at = NULL, last_error = NULL, http_status = NULL, reason = NULL",
            json.dumps(list(outputs)),
            hooks=hooks,
        )

    def quarantine(
        self,
        job: Job,
        reason: str,
        message: str,
        http_status: int | None,
        location: str | None = None,
        hooks: Sequence[HookEvent] = (),
    ) -> None:
        """Mark a job quarantined, keeping why and where the file went; record its hooks."""
        self._change(
            job,
            "state = 'quarantined', reason = %s, last_error = %s, http_status = %s,"
            f" {_UNCLAIMED}, resend = FALSE, next_attempt_at = NULL, outputs = %s",
            reason, message, http_status, json.dumps([location] if location else []),
            hooks=hooks,
        )  # fmt: skip

    def retry_later(self, job: Job, at: float, error: str, *, resend: bool = False) -> int:
        """Count a failed attempt and wait until ``at`` (this host's clock); return the attempts."""
        return self._change(
            job,
            "state = 'retry_wait', attempts = attempts + 1,"
            f" next_attempt_at = {NOW} + %s, last_error = %s, {_UNCLAIMED}, resend = %s",
            at - self._clock(), error, resend,
        )  # fmt: skip

    def release(self, job: Job, *, resend: bool = False) -> None:
        """Put a claimed job back to pending without counting an attempt."""
        self._change(job, f"state = 'pending', {_UNCLAIMED}, resend = resend OR %s", resend)

    def defer(self, job: Job, at: float, note: str) -> None:
        """Wait until ``at`` (this host's clock) without counting an attempt."""
        self._change(
            job,
            f"state = 'retry_wait', next_attempt_at = {NOW} + %s, last_error = %s, {_UNCLAIMED}",
            at - self._clock(),
            note,
        )

    def _change(
        self, job: Job, assignments: str, *params: object, hooks: Sequence[HookEvent] = ()
    ) -> int:
        """Update a claimed job while ``job``'s claim still holds it (else LeaseLost),
        recording ``hooks`` in the same transaction; return its attempts."""
        with self.transaction() as conn:
            row = conn.execute(
                f"UPDATE jobs SET {assignments}, updated_at = {NOW}"
                " WHERE id = %s AND state = 'in_flight' AND claim_token = %s RETURNING attempts",
                (*params, job.id, job.claim_token),
            ).fetchone()
            if row is not None:
                insert_hooks(conn, hooks)
        if row is None:
            raise _lost(job)
        return int(row[0])

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
        """When the oldest job not yet done or quarantined was queued (this host's clock)."""
        with self.transaction() as conn:
            row = conn.execute(
                f"SELECT MIN(queued_at) - {NOW} FROM jobs"
                " WHERE state IN ('pending', 'in_flight', 'retry_wait')"
            ).fetchone()
        return None if row is None or row[0] is None else self._clock() + float(row[0])

    def quarantined(self, folder: str | None = None) -> list[Job]:
        """Quarantined jobs, of one folder or all, oldest first."""
        with self.transaction() as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE state = 'quarantined'"
                " AND (%(f)s::text IS NULL OR folder = %(f)s) ORDER BY folder, queued_at, id",
                {"f": folder},
            ).fetchall()
        return [job_of(row) for row in rows]

    def recent(self, limit: int) -> list[Recent]:
        """The ``limit`` jobs whose state changed last, newest first (the status page)."""
        with self.transaction() as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS}, updated_at - {NOW} FROM jobs"
                " ORDER BY updated_at DESC, id DESC LIMIT %s",
                (limit,),
            ).fetchall()
        now = self._clock()
        return [Recent(job_of(row), now + float(row[-1])) for row in rows]

    def done_since(self, t: float) -> dict[str, int]:
        """Jobs done at ``t`` (this host's clock) or later, per folder."""
        with self.transaction() as conn:
            rows = conn.execute(
                f"SELECT folder, COUNT(*) FROM jobs WHERE state = 'done'"
                f" AND updated_at >= {NOW} + %s GROUP BY folder",
                (t - self._clock(),),
            ).fetchall()
        return {folder: int(n) for folder, n in rows}

    def last_done(self) -> dict[str, float]:
        """When each folder's last job was done (this host's clock)."""
        with self.transaction() as conn:
            rows = conn.execute(
                f"SELECT folder, MAX(updated_at) - {NOW} FROM jobs WHERE state = 'done'"
                " GROUP BY folder"
            ).fetchall()
        now = self._clock()
        return {folder: now + float(at) for folder, at in rows}

    def retry_waiting(self) -> list[Job]:
        """Jobs waiting on a retry, soonest first (``once`` lists those it leaves)."""
        with self.transaction() as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE state = 'retry_wait'"
                " ORDER BY next_attempt_at, id"
            ).fetchall()
        return [job_of(row) for row in rows]

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

    def requeue_done(self, folder: str, relpath: str) -> bool:
        """Put the done job of this input back to pending, to be made again (``retry`` after
        the settings changed: the outputs are remade, from the cache when it has the
        answer); False if the path has no done job. Its claimed names stay its own."""
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'pending', attempts = 0, last_error = NULL,"
                " http_status = NULL, reason = NULL, resend = FALSE, next_attempt_at = NULL,"
                f" queued_at = {NOW}, updated_at = {NOW}"
                " WHERE folder = %s AND relpath = %s AND state = 'done'",
                (folder, relpath),
            )
            return cur.rowcount == 1


def _lost(job: Job) -> LeaseLost:
    return LeaseLost(f"job {job.id} ({job.relpath}) is no longer held by this claim")
