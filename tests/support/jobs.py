"""Reading one job back, as a test does and the daemon never needs to.

The package's stores answer the daemon's questions (claim, counts,
quarantined...); looking a job up by path or id is a test's question, so it
lives here, on the stores' one row format (``storage.COLUMNS``, ``storage.job_of``).
"""

from __future__ import annotations

from typing import Any

from bgsyncd.storage.contract import COLUMNS, Job, Store, job_of
from bgsyncd.storage.sqlite.store import SqliteStore


def find_job(store: Store, folder: str, relpath: str) -> Job | None:
    """The job for this input path, if any."""
    return _one(store, "folder = {p} AND relpath = {p}", (folder, relpath))


def get_job(store: Store, job_id: int) -> Job | None:
    """The job with this id, if it still exists."""
    return _one(store, "id = {p}", (job_id,))


def _one(store: Store, where: str, params: tuple[object, ...]) -> Job | None:
    row: Any
    if isinstance(store, SqliteStore):
        # The store's own connection: a handle opened read-only, or one whose
        # write another test holds open, reads exactly what it would.
        with store._read() as conn:
            sql = f"SELECT {COLUMNS} FROM jobs WHERE {where.format(p='?')}"
            row = conn.execute(sql, params).fetchone()
    else:
        from bgsyncd.storage.postgres.store import (
            PostgresStore,  # psycopg: only where PostgreSQL is tested
        )

        assert isinstance(store, PostgresStore), type(store)
        with store.transaction() as pg:
            sql = f"SELECT {COLUMNS} FROM jobs WHERE {where.format(p='%s')}"
            row = pg.execute(sql, params).fetchone()
    return None if row is None else job_of(row)
