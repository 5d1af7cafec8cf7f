"""This host's lock in the fleet: a PostgreSQL session advisory lock keyed by ``host_id``.

:class:`HostLock` holds it on a connection of its own for the daemon's life: a
second live daemon with the same ``host_id`` is refused, while a restart after
kill -9 is not (the dead session's lock went with it). The fleet's membership
(``fleet.membership``) takes it; it is the only ``psycopg.connect`` outside
the pool.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any

import psycopg

from bgsyncd.errors import HostConflict
from bgsyncd.storage.postgres.db import HOST_LOCK_CLASS, dsn_secrets, failure
from bgsyncd.storage.postgres.guard import CALL_SECONDS, WATCHDOG, after, bounded_dsn


def _lock_key(host_id: str) -> int:
    """A signed 32-bit key for ``host_id`` (the second half of a two-key advisory lock)."""
    digest = hashlib.sha256(b"bgsyncd-host:" + host_id.encode()).digest()
    return int.from_bytes(digest[:4], "big", signed=True)


def _me(host_id: str) -> str:
    return f"bgsyncd {host_id} pid {os.getpid()} on {socket.gethostname()}"


class HostLock:
    """The session advisory lock of ``host_id``, on a connection of its own."""

    def __init__(self, dsn: str, host_id: str) -> None:
        self._dsn = bounded_dsn(dsn)  # no wait on a hung server is longer than a call's
        self._host_id = host_id
        self._secrets = dsn_secrets(dsn)
        self._conn: psycopg.Connection[Any] | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`HostConflict` naming the daemon that holds it."""
        try:
            conn = psycopg.connect(
                self._dsn, autocommit=True, application_name=_me(self._host_id)[:63]
            )
        except psycopg.Error as exc:
            raise failure(exc, self._secrets) from None
        try:
            with WATCHDOG.bound(conn, after(CALL_SECONDS)):
                self._take(conn)
        except psycopg.Error as exc:
            conn.close()
            raise failure(exc, self._secrets) from None
        self._conn = conn

    def _take(self, conn: psycopg.Connection[Any]) -> None:
        key = (HOST_LOCK_CLASS, _lock_key(self._host_id))
        row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", key).fetchone()
        if row is not None and row[0]:
            return
        holder = conn.execute(
            "SELECT a.application_name, host(a.client_addr) FROM pg_locks l"
            " JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'"
            " AND l.granted AND l.classid::bigint = %s"
            " AND l.objid::bigint = (%s::bigint & 4294967295)",
            key,
        ).fetchone()
        conn.close()
        other = "another daemon"
        if holder is not None and holder[0]:
            other = str(holder[0]) + (f" from {holder[1]}" if holder[1] else "")
        raise HostConflict(
            f"queue.host_id {self._host_id!r} is already used by a running daemon"
            f" ({other}); this one ({_me(self._host_id)}) will not start beside it:"
            " give each host its own queue.host_id"
        )

    def ensure(self) -> None:
        """Hold the lock again after the database restarted (the session, and its lock, died).

        Raises :class:`HostConflict` if another daemon took ``host_id`` meanwhile,
        :class:`QueueUnavailable` while the server cannot be reached.
        """
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                with WATCHDOG.bound(conn, after(CALL_SECONDS)):
                    conn.execute("SELECT 1")
                return
            except psycopg.Error:
                conn.close()
        self._conn = None
        self.acquire()

    def release(self) -> None:
        """Close the lock's session (the lock goes with it)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
