"""The PostgreSQL queue's output-name claims, shared by the fleet (``storage.OutputClaims``).

A claim is an ``INSERT ... ON CONFLICT``: of two hosts racing for one name in
one folder, the second waits for the first's commit and then sees its owner,
so a name is never given to two inputs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from bgsyncd.pg_db import NOW, PgBase
from bgsyncd.storage import Found, QueueError

_SQL_ADOPT = f"""
INSERT INTO jobs (folder, relpath, size, mtime_ns, inode, state, first_seen, queued_at,
                  updated_at, outputs)
VALUES (%s, %s, %s, %s, %s, 'done', {NOW}, {NOW}, {NOW}, %s)
ON CONFLICT (folder, relpath) DO NOTHING
RETURNING id
"""


class _NotAdopted(Exception):
    """Internal: roll an adoption back (an output name belongs to another input)."""


class PgClaims(PgBase):
    """The ``output_claims`` table."""

    def adopt(self, found: Found, outputs: Sequence[str]) -> bool:
        """Record ``found`` as done with ``outputs`` already written, without a request.

        False (and nothing changed) when the queue knows the path already or
        another input owns one of the names.
        """
        try:
            with self.transaction() as conn:
                row = conn.execute(_SQL_ADOPT, (
                    found.folder, found.relpath, found.size, found.mtime_ns, found.inode,
                    json.dumps(list(outputs)),
                )).fetchone()  # fmt: skip
                if row is None:
                    return False
                for outpath in outputs:
                    claimed = conn.execute(
                        "INSERT INTO output_claims (folder, outpath, job_id) VALUES (%s, %s, %s)"
                        " ON CONFLICT (folder, outpath) DO NOTHING RETURNING job_id",
                        (found.folder, outpath, row[0]),
                    ).fetchone()
                    if claimed is None:
                        raise _NotAdopted
        except _NotAdopted:
            return False
        return True

    def claimed_outputs(self, job_id: int) -> list[str]:
        """The output paths (relative to the outbox) this job has claimed."""
        with self.transaction() as conn:
            rows = conn.execute(
                "SELECT outpath FROM output_claims WHERE job_id = %s", (job_id,)
            ).fetchall()
        return sorted(row[0] for row in rows)

    def claim_output(self, folder: str, job_id: int, candidates: Iterable[str]) -> str:
        """Return the first candidate output path that is this job's or free, claiming it.

        ``candidates`` is in preference order and may be endless; it is read
        only up to the answer.
        """
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
