"""The fleet's credit and pause tables on PostgreSQL: their transactions.

The tables are migration 2 of the schema (``pg_db.MIGRATIONS``), created
under the migration lock by the first daemon that starts. Like ``pgqueue``,
only the PostgreSQL backend imports this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from bgsyncd.errors import QueueUnavailable
from bgsyncd.storage.contract import QueueError
from bgsyncd.storage.postgres.store import MIGRATIONS, PgQueue

# Migration 2 of the PostgreSQL schema (``pg_db.MIGRATIONS``) creates them.
FLEET_TABLES: tuple[str, ...] = MIGRATIONS[1]


@contextmanager
def transaction(queue: PgQueue) -> Iterator[psycopg.Connection[Any]]:
    """One transaction of ``queue``'s pool; a database that cannot answer is QueueUnavailable.

    The dispatcher pauses ``queue_unavailable`` on it and no request starts
    (fail closed) until the daemon sees the database answer again.
    """
    try:
        with queue.transaction() as conn:
            yield conn
    except QueueError as exc:
        raise QueueUnavailable(str(exc)) from None
