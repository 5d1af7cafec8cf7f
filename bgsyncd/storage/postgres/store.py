"""The job store on PostgreSQL: the storage contract (``storage.contract.Store``), for a fleet.

Several hosts on one API key share one database (SPEC §8). The parts live in
a module each of this folder (``db``: pool, migrations, errors; ``jobs``;
``claims``; the result cache in ``cache``; the request log in
``request_log``; the fleet's host rows in ``fleet.hosts``) and
:class:`PostgresStore` puts them together as one ``storage.contract.Store``, with the
named state values here. Only the PostgreSQL backend imports these modules
(psycopg is the ``postgresql`` extra).

What the contract's methods mean here, where it differs from SQLite:

- ``created``: this daemon created the schema (the database was empty), so
  outputs already present are adopted, as for a new SQLite file.
- ``lost()``: ``"deleted"`` when the schema is gone from the database,
  ``"replaced"`` when it was made anew since we opened it (its
  ``database_id`` differs): either way the jobs we knew are gone, and the
  daemon restarts. None while the server cannot be asked (that decides
  nothing; the next write says ``QueueUnavailable``). Asked on every turn of
  the main loop, it is also how an idle host notices a hung server: it waits
  ``LIVENESS_SECONDS`` at most, then every call fails at once and the daemon
  pauses (``PgBase.outage``).
- ``check_writable()``: one write (a ping in ``state``), and every table of
  the schema there with our rights on it; raises ``QueueUnavailable`` while
  not (a revoked grant, a dropped table). It asks the server even while
  other calls fail at once: the daemon's resume probe.
- ``recover()``: this host's claims only; a dead host's are taken over when
  its lease runs out (``fleet.hosts.Hosts``).
- ``get_state``/``set_state``: shared by every host (one pause for all).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import psycopg

from bgsyncd.errors import QueueUnavailable
from bgsyncd.storage.contract import Store
from bgsyncd.storage.postgres.claims import PgClaims
from bgsyncd.storage.postgres.db import MIGRATION_LOCK, MIGRATIONS, NOW, SCHEMA_VERSION, migrate
from bgsyncd.storage.postgres.guard import LIVENESS_SECONDS
from bgsyncd.storage.postgres.hooks import PgHooks
from bgsyncd.storage.postgres.jobs import SQL_UPSERT, PgJobs

__all__ = [
    "MIGRATIONS",
    "MIGRATION_LOCK",
    "NOW",
    "SCHEMA_VERSION",
    "SQL_UPSERT",
    "PostgresStore",
    "migrate",
]

# Written by check_writable: a write that proves the database answers again.
_PING_KEY = "queue_ping"
# Every table the migrations create: check_writable finds each there and ours.
TABLES: tuple[str, ...] = tuple(
    match.group(1)
    for migration in MIGRATIONS
    for statement in migration
    for match in [re.match(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", statement)]
    if match is not None
)
# The tables among those missing, or on which this role lacks a right it uses.
_SQL_LACKING = (
    "SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NULL"
    " OR NOT has_table_privilege(to_regclass(name), 'SELECT, INSERT, UPDATE, DELETE')"
)


class PostgresStore(PgJobs, PgClaims, PgHooks):
    """The storage contract on PostgreSQL, for host ``host_id`` of a fleet.

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
    def open_readonly(
        cls, dsn: str, host_id: str = "status", *, timeout: float = 10.0
    ) -> PostgresStore:
        """A read-only view for ``status``: migrates nothing, and every write is refused.

        Unlike SQLite's view, a database no daemon has initialised (or one of
        another schema version) is a :class:`~bgsyncd.storage.contract.QueueError`
        saying so: a server has no "nothing there yet" file to show as empty.
        """
        view = cls.__new__(cls)
        view._open(dsn, host_id, pool_size=1, timeout=timeout, readonly=True)
        return view

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def is_unchanged(self, folder: str, relpath: str, size: int, mtime_ns: int, inode: int) -> bool:
        """As ``PgJobs.is_unchanged``; while the database fails, False: the watcher
        hands the file on, and queueing it pauses and defers it (``queue.ingest_deferred``)
        until the rescan after the database answers."""
        try:
            return super().is_unchanged(folder, relpath, size, mtime_ns, inode)
        except QueueUnavailable:
            return False

    def lost(self) -> str | None:
        """``"deleted"`` or ``"replaced"`` when the schema we opened is gone; else None."""
        if self.outage.down is not None:
            return None  # cannot ask now: decides nothing
        try:
            with self.connection(LIVENESS_SECONDS) as conn:
                row = conn.execute("SELECT database_id FROM bgsyncd_schema").fetchone()
        except psycopg.errors.UndefinedTable:
            return "deleted"
        except (psycopg.Error, QueueUnavailable):
            return None  # cannot ask now: decides nothing
        if row is None or row[0] is None:
            return "deleted"
        return None if row[0] == self._database_id else "replaced"

    def check_writable(self) -> None:
        """One write in the database, and every table there with our rights on it;
        raise :class:`QueueUnavailable` while not.

        The daemon's probe for resuming: it asks the server (on a fresh pool
        when it had stopped answering) even while other calls fail at once.
        """
        try:
            with self.transaction(look=True) as conn:
                lacking = [str(r[0]) for r in conn.execute(_SQL_LACKING, (list(TABLES),))]
                conn.execute(
                    "INSERT INTO state (key, value) VALUES (%s, %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (_PING_KEY, repr(self._clock())),
                )
        except QueueUnavailable:
            raise
        except Exception as exc:  # any failure to write is unavailability here
            raise QueueUnavailable(str(exc)) from None
        if lacking:
            raise QueueUnavailable(
                "PostgreSQL queue unavailable: tables missing, or rights on them revoked:"
                f" {', '.join(lacking)}"
            )

    # -- named state values (storage.StateStore) --------------------------------

    def get_state(self, key: str) -> str | None:
        """A shared state value (pause reason, last credits...), or None."""
        with self.transaction() as conn:
            row = conn.execute("SELECT value FROM state WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_state(self, key: str, value: str | None) -> None:
        """Set a shared state value; None deletes it."""
        with self.transaction() as conn:
            if value is None:
                conn.execute("DELETE FROM state WHERE key = %s", (key,))
            else:
                conn.execute(
                    "INSERT INTO state (key, value) VALUES (%s, %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )


def _is_a_store(queue: PostgresStore) -> Store:
    """Checked by mypy: the PostgreSQL queue keeps the whole storage contract."""
    return queue
