"""The job queue on PostgreSQL: the storage contract of ``queue.Queue``, for a fleet.

Several hosts on one API key share one database (SPEC §8). The parts live in
a module each (``pg_db``: pool, migrations, errors; ``pg_jobs``;
``pg_claims``; ``pg_state``; the result cache in ``pg_cache``; the request
log and host rows in ``pgfleet``) and :class:`PgQueue` puts them together as
one ``storage.Store``. Only the PostgreSQL backend imports these modules
(psycopg is the ``postgresql`` extra).

What the contract's methods mean here, where it differs from SQLite:

- ``created``: this daemon created the schema (the database was empty), so
  outputs already present are adopted, as for a new SQLite file.
- ``lost()``: ``"deleted"`` when the schema is gone from the database,
  ``"replaced"`` when it was made anew since we opened it (its
  ``database_id`` differs): either way the jobs we knew are gone, and the
  daemon restarts. None while the server cannot be asked (that decides
  nothing; the next write says ``QueueUnavailable``).
- ``check_writable()``: one write (a ping in ``state``); raises
  ``QueueUnavailable`` while the server cannot be reached.
- ``recover()``: this host's claims only; a dead host's are taken over when
  its lease runs out (``pgfleet.Hosts``).
- ``get_state``/``set_state``: shared by every host (one pause for all).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg

from bgsyncd.errors import QueueUnavailable
from bgsyncd.pg_claims import PgClaims
from bgsyncd.pg_db import MIGRATION_LOCK, MIGRATIONS, NOW, SCHEMA_VERSION, migrate
from bgsyncd.pg_jobs import SQL_UPSERT, PgJobs
from bgsyncd.pg_state import PgState
from bgsyncd.storage import Store

__all__ = [
    "MIGRATIONS",
    "MIGRATION_LOCK",
    "NOW",
    "SCHEMA_VERSION",
    "SQL_UPSERT",
    "PgQueue",
    "migrate",
]

# Written by check_writable: a write that proves the database answers again.
_PING_KEY = "queue_ping"


class PgQueue(PgJobs, PgClaims, PgState):
    """The queue contract of ``queue.Queue`` on PostgreSQL, for host ``host_id``.

    ``timeout``: how long a call waits for a connection before it raises
    ``QueueUnavailable`` (the server is down or unreachable).
    """

    def __init__(
        self,
        dsn: str,
        host_id: str,
        *,
        pool_size: int = 4,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._open(dsn, host_id, pool_size=pool_size, timeout=timeout, clock=clock)

    @classmethod
    def open_readonly(cls, dsn: str, host_id: str = "status", *, timeout: float = 10.0) -> PgQueue:
        """A read-only view for ``status``: migrates nothing, and every write is refused.

        Unlike SQLite's view, a database no daemon has initialised (or one of
        another schema version) is a :class:`~bgsyncd.storage.QueueError`
        saying so: a server has no "nothing there yet" file to show as empty.
        """
        view = cls.__new__(cls)
        view._open(dsn, host_id, pool_size=1, timeout=timeout, readonly=True)
        return view

    def __enter__(self) -> PgQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lost(self) -> str | None:
        """``"deleted"`` or ``"replaced"`` when the schema we opened is gone; else None."""
        try:
            with self._pool.connection() as conn, conn.transaction():
                row = conn.execute("SELECT database_id FROM bgsyncd_schema").fetchone()
        except psycopg.errors.UndefinedTable:
            return "deleted"
        except psycopg.Error:
            return None  # cannot ask now: decides nothing
        if row is None or row[0] is None:
            return "deleted"
        return None if row[0] == self._database_id else "replaced"

    def check_writable(self) -> None:
        """One write in the database; raise :class:`QueueUnavailable` while it fails.

        The daemon's probe for resuming: when the pool still fails but the
        server answers a connection of our own, the pool is renewed rather
        than waited for.
        """
        try:
            self._ping()
        except QueueUnavailable:
            if not self._server_answers():
                raise
            self._renew_pool()
            self._ping()

    def _ping(self) -> None:
        try:
            self.set_state(_PING_KEY, repr(self._clock()))
        except QueueUnavailable:
            raise
        except Exception as exc:  # any failure to write is unavailability here
            raise QueueUnavailable(str(exc)) from None


def _is_a_store(queue: PgQueue) -> Store:
    """Checked by mypy: the PostgreSQL queue keeps the whole storage contract."""
    return queue
