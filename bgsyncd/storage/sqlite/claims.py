"""The SQLite queue's output-name claims (``storage.OutputClaims``).

An output name belongs to the first input that claims it, for good: a second
input whose name would collide gets the next candidate (``a.jpg.png``...).
A name is claimed with every folder on its way (``names.first_free_output``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from bgsyncd.files.names import first_free_output
from bgsyncd.storage.contract import Found, QueueError
from bgsyncd.storage.sqlite.db import SqliteBase
from bgsyncd.storage.sqlite.schema import (
    SQL_CLAIMED_BY,
    SQL_INPUT_INSIDE,
    SQL_OUTPUT_INSIDE,
    SQL_OWNER,
)

# An input adopted as done (its outputs exist, the queue is new): only when the
# path is unknown.
_SQL_ADOPT = """
INSERT INTO jobs (folder, relpath, size, mtime_ns, inode, state, first_seen, queued_at,
                  updated_at, outputs)
VALUES (?, ?, ?, ?, ?, 'done', ?, ?, ?, ?)
ON CONFLICT (folder, relpath) DO NOTHING
"""


class _NotAdopted(Exception):
    """Internal: roll an adoption back (an output name belongs to another input)."""


class SqliteClaims(SqliteBase):
    """The ``output_claims`` table."""

    def adopt(self, found: Found, outputs: Sequence[str]) -> bool:
        """Record ``found`` as done with ``outputs`` already written, without a request.

        For an input whose outputs exist when the queue is new. The output
        names are claimed, so they stay this input's. False (and nothing
        changed) when the queue knows the path already or another input owns
        one of the names.
        """
        try:
            with self._write() as conn:
                now = self._clock()
                cur = conn.execute(_SQL_ADOPT, (
                    found.folder, found.relpath, found.size, found.mtime_ns, found.inode,
                    now, now, now, json.dumps(list(outputs)),
                ))  # fmt: skip
                if not cur.rowcount:
                    return False
                for outpath in outputs:
                    if conn.execute(SQL_OWNER, (found.folder, outpath)).fetchone() is not None:
                        raise _NotAdopted
                    conn.execute(
                        "INSERT INTO output_claims (folder, outpath, job_id) VALUES (?, ?, ?)",
                        (found.folder, outpath, cur.lastrowid),
                    )
        except _NotAdopted:
            return False
        return True

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

            def owner_of(outpath: str) -> int | None:
                row = conn.execute(SQL_OWNER, (folder, outpath)).fetchone()
                return None if row is None else int(row[0])

            def holds_inside(path: str) -> bool:
                bounds = (folder, path + "/", path + "0")
                return any(
                    conn.execute(sql, bounds).fetchone() is not None
                    for sql in (SQL_OUTPUT_INSIDE, SQL_INPUT_INSIDE)
                )

            found = first_free_output(candidates, job_id, owner_of, holds_inside)
            if found is not None:
                outpath, new = found
                if new:
                    conn.execute(
                        "INSERT INTO output_claims (folder, outpath, job_id) VALUES (?, ?, ?)",
                        (folder, outpath, job_id),
                    )
                return outpath
        raise QueueError(f"no free output name for job {job_id} in {folder}")
