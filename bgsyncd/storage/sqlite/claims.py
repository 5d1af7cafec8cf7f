"""The SQLite queue's output-name claims (``storage.OutputClaims``).

An output name belongs to the first input that claims it, for good: a second
input whose name would collide gets the next candidate (``a.jpg.png``...).
A name is claimed with every folder on its way (``names.first_free_output``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from bgsyncd.files.names import first_free_output
from bgsyncd.storage.contract import OWN_TREE, Found, QueueError
from bgsyncd.storage.sqlite.db import SqliteBase
from bgsyncd.storage.sqlite.schema import (
    SQL_CLAIM,
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
                    owner = conn.execute(SQL_OWNER, (found.folder, OWN_TREE, outpath))
                    if owner.fetchone() is not None:
                        raise _NotAdopted
                    conn.execute(SQL_CLAIM, (found.folder, OWN_TREE, outpath, cur.lastrowid))
        except _NotAdopted:
            return False
        return True

    def claimed_outputs(self, job_id: int, tree: str = OWN_TREE) -> list[str]:
        """The output paths (relative to the tree's outbox) this job has claimed in ``tree``."""
        with self._read() as conn:
            rows = conn.execute(SQL_CLAIMED_BY, (job_id, tree)).fetchall()
        return sorted(row[0] for row in rows)

    def claim_output(
        self, folder: str, job_id: int, candidates: Iterable[str], tree: str = OWN_TREE
    ) -> str:
        """Return the first candidate output path in ``tree`` that is this job's or free,
        claiming it.

        ``candidates`` is in preference order and may be endless; it is read
        only up to the answer. A name this job owns stays its own across restarts.
        """
        with self._write() as conn:

            def owner_of(outpath: str) -> int | None:
                row = conn.execute(SQL_OWNER, (folder, tree, outpath)).fetchone()
                return None if row is None else int(row[0])

            def holds_inside(path: str) -> bool:
                low, high = path + "/", path + "0"
                return (
                    conn.execute(SQL_OUTPUT_INSIDE, (folder, tree, low, high)).fetchone()
                    is not None
                    or conn.execute(SQL_INPUT_INSIDE, (folder, low, high)).fetchone() is not None
                )

            found = first_free_output(candidates, job_id, owner_of, holds_inside)
            if found is not None:
                outpath, new = found
                if new:
                    conn.execute(SQL_CLAIM, (folder, tree, outpath, job_id))
                return outpath
        where = folder if tree == OWN_TREE else f"{folder} ({tree})"
        raise QueueError(f"no free output name for job {job_id} in {where}")
