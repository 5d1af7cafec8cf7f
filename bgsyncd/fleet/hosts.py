"""The hosts of a fleet on PostgreSQL (SPEC §8).

:class:`Hosts` — a row per host: its heartbeat, folders and requests in
flight; leases renewed while a host runs, and the claims of a host silent for
``lease_seconds`` handed back to the others (each counted as a resend). The
fleet's shared request log is the engine's (``storage.postgres.request_log``).

Like the engine, only the PostgreSQL backend imports this module.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass

from bgsyncd.errors import HostConflict
from bgsyncd.storage.postgres.db import server_now
from bgsyncd.storage.postgres.store import NOW, PostgresStore


@dataclass(frozen=True)
class Host:
    """One host of the fleet as ``status`` lists it."""

    id: str
    folders: tuple[str, ...]
    last_seen: float
    in_flight: int

    def as_json(self) -> dict[str, object]:
        """This host as ``status --json`` lists it (and the status page)."""
        return {
            "id": self.id,
            "folders": list(self.folders),
            "last_seen": self.last_seen,
            "in_flight": self.in_flight,
        }


class Hosts:
    """The fleet's host rows: heartbeats, lease renewal and takeover."""

    def __init__(self, queue: PostgresStore, lease_seconds: float) -> None:
        self._queue = queue
        self._lease = lease_seconds

    @property
    def host_id(self) -> str:
        """This host's name in the fleet."""
        return self._queue.host_id

    def join(self, folders: Collection[str], instance: str, *, locked: bool = False) -> None:
        """Register this daemon; refuse when a live daemon already holds the ``host_id``.

        ``instance`` tells two daemons with one ``host_id`` apart (a random
        token per run): a row of another instance seen within the lease is a
        conflict, an older one is this host's own earlier life. With
        ``locked`` the caller holds the host's session lock (:class:`HostLock`),
        which decides alone: a restart right after kill -9 is not refused.
        """
        with self._queue.transaction() as conn:
            now = server_now(conn)
            row = conn.execute(
                "SELECT instance, last_seen FROM hosts WHERE id = %s FOR UPDATE", (self.host_id,)
            ).fetchone()
            live = row is not None and float(row[1]) > now - self._lease
            if not locked and live and row is not None and row[0] != instance:
                raise HostConflict(
                    f"host_id {self.host_id!r} is already used by a running daemon (seen"
                    f" {now - float(row[1]):.0f} s ago): give each host its own queue.host_id"
                )
            conn.execute(
                "INSERT INTO hosts (id, folders, last_seen, in_flight, instance)"
                " VALUES (%s, %s, %s, 0, %s) ON CONFLICT (id) DO UPDATE SET"
                " folders = excluded.folders, last_seen = excluded.last_seen,"
                " in_flight = 0, instance = excluded.instance",
                (self.host_id, json.dumps(sorted(folders)), now, instance),
            )

    def set_folders(self, folders: Collection[str]) -> None:
        """This host now serves ``folders`` (a reload): other hosts' checks see them."""
        with self._queue.transaction() as conn:
            conn.execute(
                "UPDATE hosts SET folders = %s WHERE id = %s",
                (json.dumps(sorted(folders)), self.host_id),
            )

    def heartbeat(self, in_flight: int) -> None:
        """Say this host is alive and renew the leases of every job it holds.

        Two transactions: a host that lost its rights on ``jobs`` (a revoked
        grant) still says it is alive.
        """
        with self._queue.transaction() as conn:
            conn.execute(
                f"UPDATE hosts SET last_seen = {NOW}, in_flight = %s WHERE id = %s",
                (in_flight, self.host_id),
            )
        with self._queue.transaction() as conn:
            now = server_now(conn)
            conn.execute(
                "UPDATE jobs SET lease_until = %s WHERE state = 'in_flight' AND owner = %s",
                (now + self._lease, self.host_id),
            )

    def take_over_expired(self, folders: Collection[str]) -> int:
        """Hand back to pending (marked resend) the jobs whose lease ran out in ``folders``."""
        with self._queue.transaction() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET state = 'pending', resend = TRUE, owner = NULL,"
                f" lease_until = NULL, updated_at = {NOW}"
                f" WHERE state = 'in_flight' AND lease_until < {NOW} AND folder = ANY(%s)",
                (list(folders),),
            )
            return cur.rowcount

    def holds(self, job_id: int) -> bool:
        """This host still holds the claim on ``job_id`` (checked before writing outputs)."""
        with self._queue.transaction() as conn:
            row = conn.execute(
                "SELECT 1 FROM jobs WHERE id = %s AND state = 'in_flight' AND owner = %s",
                (job_id, self.host_id),
            ).fetchone()
        return row is not None

    def leave(self) -> None:
        """A clean stop: this host's row says it holds nothing."""
        with self._queue.transaction() as conn:
            conn.execute("UPDATE hosts SET in_flight = 0 WHERE id = %s", (self.host_id,))

    def listed(self, within: float = 86400.0) -> list[Host]:
        """Every host seen within ``within`` seconds, by id."""
        with self._queue.transaction() as conn:
            rows = conn.execute(
                f"SELECT id, folders, last_seen, in_flight FROM hosts"
                f" WHERE last_seen > {NOW} - %s ORDER BY id",
                (within,),
            ).fetchall()
        return [Host(r[0], tuple(json.loads(r[1])), float(r[2]), int(r[3])) for r in rows]

    def alive(self) -> int:
        """Hosts seen within ``lease_seconds`` (``bgsyncd_fleet_hosts``)."""
        with self._queue.transaction() as conn:
            row = conn.execute(
                f"SELECT COUNT(*) FROM hosts WHERE last_seen > {NOW} - %s", (self._lease,)
            ).fetchone()
        return 0 if row is None else int(row[0])
