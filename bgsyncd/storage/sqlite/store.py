"""The durable job queue on SQLite: one host's jobs, output claims, request log, state.

The parts live in a module each of this folder (``db``: connection,
migrations, transactions; ``jobs``; ``claims``; ``hooks``; ``request_log``) and
:class:`SqliteStore` puts them together as one ``storage.contract.Store``,
with the named state values here. Its public methods speak ``Found``, ``Job``,
str, int and float only, so the PostgreSQL engine (``storage.postgres.store``)
implements the same contract. SQLite failures surface as :class:`QueueError`,
except those the disk caused (full, read-only, I/O error), which are
:class:`~bgsyncd.errors.QueueUnavailable` with the errno in the message:
dispatch pauses, and resumes when the database answers
(:meth:`SqliteStore.check_writable`). :meth:`SqliteStore.lost` tells whether
the file at the database's path is still the one opened (see ``faults``).

The contract's names (``Found``, ``Job``, ``QueueError``, ``STATES``) are
imported from ``storage.contract``, never through an engine.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from bgsyncd.errors import QueueUnavailable, describe_os_error
from bgsyncd.files.probe import probe_write
from bgsyncd.storage.contract import QueueError, Store
from bgsyncd.storage.sqlite.claims import SqliteClaims
from bgsyncd.storage.sqlite.db import check_version, connect
from bgsyncd.storage.sqlite.faults import Identity, identity_of, lost_reason
from bgsyncd.storage.sqlite.hooks import SqliteHooks
from bgsyncd.storage.sqlite.jobs import SqliteJobs
from bgsyncd.storage.sqlite.schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["SqliteStore"]

# Written by check_writable: a write that proves the database answers again.
_PING_KEY = "queue_ping"


class SqliteStore(SqliteJobs, SqliteClaims, SqliteHooks):
    """The job queue; one connection shared by the daemon's threads behind a lock."""

    created: bool
    _identity: Identity | None

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        path = Path(path)
        # New (or lost and made again): its inputs' outputs may already exist
        # and are adopted instead of sent again (SPEC §4).
        created = not path.exists() or path.stat().st_size == 0
        self._setup(connect(path), clock, readonly=False, path=path)
        self.created = created
        # Taken right after opening: what lost() compares the path with later.
        self._identity = identity_of(path)

    @classmethod
    def open_readonly(cls, path: Path, clock: Callable[[], float] = time.time) -> SqliteStore:
        """A read-only view for ``status``, safe beside a running daemon.

        Never creates the database: when it does not exist yet (or was never
        initialised) the view is empty, so ``counts()`` is ``{}`` and
        ``get_state`` is None. Write methods raise :class:`QueueError`.
        """
        path = Path(path)
        try:
            conn = None
            if path.exists():
                uri = path.resolve().as_uri() + "?mode=ro"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
                current = False
                try:
                    conn.execute("PRAGMA busy_timeout = 5000")
                    current = check_version(conn, path) == SCHEMA_VERSION
                finally:
                    if not current:  # not yet initialised (or too new): nothing to show
                        conn.close()
                        conn = None
            if conn is None:
                conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
                for statement in (s for migration in MIGRATIONS for s in migration):
                    conn.execute(statement)
            conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise QueueError(f"cannot read the queue database {path}: {exc}") from exc
        view = cls.__new__(cls)
        # No path: a reader never probes the daemon's folder with a write.
        view._setup(conn, clock, readonly=True)
        view._identity = None
        view.created = False
        return view

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lost(self) -> str | None:
        """``"deleted"`` or ``"replaced"`` when the database's path is no longer this file.

        Cheap (one ``lstat``): the daemon asks every few seconds.
        """
        if self._identity is None or self._path is None:
            return None
        return lost_reason(self._path, self._identity)

    def check_writable(self) -> None:
        """Write beside the database and in it; raise :class:`QueueUnavailable` if either fails.

        The probe file comes first: SQLite reuses the room its files already
        have, so a one-row write can pass on a disk with no space for a batch.
        """
        if self._path is not None:
            try:
                probe_write(self._path.parent)
            except OSError as exc:
                text = describe_os_error(exc)
                raise QueueUnavailable(f"queue database {self._path}: {text}") from None
        self.set_state(_PING_KEY, repr(self._clock()))

    # -- named state values (storage.StateStore) --------------------------------

    def get_state(self, key: str) -> str | None:
        """A daemon state value (pause reason, last credits...), or None."""
        with self._read() as conn:
            row = conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_state(self, key: str, value: str | None) -> None:
        """Set a daemon state value; None deletes it."""
        with self._write() as conn:
            if value is None:
                conn.execute("DELETE FROM state WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT INTO state (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )


def _is_a_store(queue: SqliteStore) -> Store:
    """Checked by mypy: the SQLite queue keeps the whole storage contract."""
    return queue
