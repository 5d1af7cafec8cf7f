"""The fleet's credit and pause tables on PostgreSQL, beside the lead's schema.

``FLEET_TABLES`` is meant to become the next versioned migration of
``pgqueue.MIGRATIONS``; until then :func:`ensure_tables` creates the tables
(idempotent) under the migration lock, so two hosts starting at once do not
race on ``CREATE TABLE``. Like ``pgqueue``, only the PostgreSQL backend
imports this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from bgsyncd.errors import QueueUnavailable
from bgsyncd.pgqueue import MIGRATION_LOCK, PgQueue
from bgsyncd.queue import QueueError

FLEET_TABLES: tuple[str, ...] = (
    # One row per account: the balance the last credit check of any host saw,
    # less what every host spent since.
    """CREATE TABLE IF NOT EXISTS credit_state (
        account TEXT PRIMARY KEY, available INTEGER, expires_at DOUBLE PRECISION,
        checked_at DOUBLE PRECISION)""",
    # One row per image request in flight, tied to its host's life (instance).
    """CREATE TABLE IF NOT EXISTS credit_reservations (
        id BIGSERIAL PRIMARY KEY, account TEXT NOT NULL, host TEXT NOT NULL,
        instance TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS credit_reservations_by_account"
    " ON credit_reservations (account, host)",
    # The pause reasons that hold for the whole fleet, per account.
    """CREATE TABLE IF NOT EXISTS fleet_pauses (
        account TEXT NOT NULL, reason TEXT NOT NULL, raised_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (account, reason))""",
)


def ensure_tables(queue: PgQueue) -> None:
    """Create the fleet's credit and pause tables if missing (under the migration lock)."""
    with transaction(queue) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        for statement in FLEET_TABLES:
            conn.execute(statement)


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
