"""Reading one job back, as a test does and the daemon never needs to.

The package's stores answer the daemon's questions (claim, counts,
quarantined...); looking a job up by path or id is a test's question, so it
lives here, on each engine's own row format (``job_of`` and ``COLUMNS``).
"""

from __future__ import annotations

from bgsyncd import pg_db, sqlite_db
from bgsyncd.queue import Queue
from bgsyncd.queue_sql import COLUMNS
from bgsyncd.storage import Job, Store


def find_job(store: Store, folder: str, relpath: str) -> Job | None:
    """The job for this input path, if any."""
    return _one(store, "folder = {p} AND relpath = {p}", (folder, relpath))


def get_job(store: Store, job_id: int) -> Job | None:
    """The job with this id, if it still exists."""
    return _one(store, "id = {p}", (job_id,))


def _one(store: Store, where: str, params: tuple[object, ...]) -> Job | None:
    if isinstance(store, Queue):
        # The store's own connection: a handle opened read-only or on a
        # database another test process holds reads exactly what it would.
        with store._read() as conn:
            sql = f"SELECT {COLUMNS} FROM jobs WHERE {where.format(p='?')}"
            row = conn.execute(sql, params).fetchone()
        return None if row is None else sqlite_db.job_of(row)
    from bgsyncd.pgqueue import PgQueue  # psycopg: only where PostgreSQL is tested

    assert isinstance(store, PgQueue), type(store)
    with store.transaction() as pg:
        sql = f"SELECT {pg_db.COLUMNS} FROM jobs WHERE {where.format(p='%s')}"
        pg_row = pg.execute(sql, params).fetchone()
    return None if pg_row is None else pg_db.job_of(pg_row)
