"""The PostgreSQL queue's output-name claims, shared by the fleet (``storage.OutputClaims``).

Claims in one folder are made one at a time, under a transaction advisory
lock on the folder's name: of two hosts racing for one name, or for a file
name and a folder of the same name (``a.png`` and ``a.png/b.png``), the
second waits for the first's commit and then sees its claim, so a path is
never given to two inputs. A name is claimed with every folder on its way
(``names.first_free_output``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from bgsyncd.files.names import first_free_output
from bgsyncd.storage.contract import OWN_TREE, Found, QueueError
from bgsyncd.storage.postgres.db import NOW, PgBase

# pg_advisory_xact_lock(class, hashtext(folder)): one claimant per folder (all its
# trees) at a time.
CLAIM_LOCK_CLASS = 0x6267737A
_SQL_LOCK = "SELECT pg_advisory_xact_lock(%s, hashtext(%s))"
_SQL_OWNER = "SELECT job_id FROM output_claims WHERE folder = %s AND tree = %s AND outpath = %s"
_SQL_CLAIM = "INSERT INTO output_claims (folder, tree, outpath, job_id) VALUES (%s, %s, %s, %s)"
# Something inside the folder a path would be: another output of the tree, or an
# input in an inbox folder of that name (every tree mirrors the inbox). Compared
# bytewise (COLLATE "C", indexed so): '0' follows '/', whatever the database's
# collation says.
_SQL_INSIDE = """
SELECT EXISTS (SELECT 1 FROM output_claims WHERE folder = %(folder)s AND tree = %(tree)s
               AND outpath COLLATE "C" >= %(low)s AND outpath COLLATE "C" < %(high)s)
    OR EXISTS (SELECT 1 FROM jobs WHERE folder = %(folder)s
               AND relpath COLLATE "C" >= %(low)s AND relpath COLLATE "C" < %(high)s)
"""

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
                conn.execute(_SQL_LOCK, (CLAIM_LOCK_CLASS, found.folder))
                row = conn.execute(_SQL_ADOPT, (
                    found.folder, found.relpath, found.size, found.mtime_ns, found.inode,
                    json.dumps(list(outputs)),
                )).fetchone()  # fmt: skip
                if row is None:
                    return False
                for outpath in outputs:
                    claimed = conn.execute(
                        _SQL_CLAIM + " ON CONFLICT (folder, tree, outpath) DO NOTHING"
                        " RETURNING job_id",
                        (found.folder, OWN_TREE, outpath, row[0]),
                    ).fetchone()
                    if claimed is None:
                        raise _NotAdopted
        except _NotAdopted:
            return False
        return True

    def claimed_outputs(self, job_id: int, tree: str = OWN_TREE) -> list[str]:
        """The output paths (relative to the tree's outbox) this job has claimed in ``tree``."""
        with self.transaction() as conn:
            rows = conn.execute(
                "SELECT outpath FROM output_claims WHERE job_id = %s AND tree = %s", (job_id, tree)
            ).fetchall()
        return sorted(row[0] for row in rows)

    def claim_output(
        self, folder: str, job_id: int, candidates: Iterable[str], tree: str = OWN_TREE
    ) -> str:
        """Return the first candidate output path in ``tree`` that is this job's or free,
        claiming it.

        ``candidates`` is in preference order and may be endless; it is read
        only up to the answer.
        """
        with self.transaction() as conn:
            conn.execute(_SQL_LOCK, (CLAIM_LOCK_CLASS, folder))

            def owner_of(outpath: str) -> int | None:
                row = conn.execute(_SQL_OWNER, (folder, tree, outpath)).fetchone()
                return None if row is None else int(row[0])

            def holds_inside(path: str) -> bool:
                bounds = {"folder": folder, "tree": tree, "low": path + "/", "high": path + "0"}
                row = conn.execute(_SQL_INSIDE, bounds).fetchone()
                return bool(row and row[0])

            found = first_free_output(candidates, job_id, owner_of, holds_inside)
            if found is not None:
                outpath, new = found
                if new:
                    conn.execute(_SQL_CLAIM, (folder, tree, outpath, job_id))
                return outpath
        where = folder if tree == OWN_TREE else f"{folder} ({tree})"
        raise QueueError(f"no free output name for job {job_id} in {where}")
