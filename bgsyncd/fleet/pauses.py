"""The fleet's pause reasons on PostgreSQL: one row per reason held, per account.

The :class:`~bgsyncd.dispatch.pauses.PauseStore` of a fleet: a 401 seen by one host is
written here and every other host's :class:`~bgsyncd.dispatch.pauses.Pauses` picks it
up at its next poll; a lift deletes the rows for everyone. Only the reasons
that hold fleet-wide are ever written (``Pauses`` sees to it). Like
``storage.postgres.store``, only the PostgreSQL backend imports this module.
"""

from __future__ import annotations

from collections.abc import Collection

from bgsyncd.storage.postgres.db import fleet_transaction
from bgsyncd.storage.postgres.store import NOW, PostgresStore


class FleetPauseStore:
    """The pause reasons held for the fleet of one account (a hash of the key)."""

    def __init__(self, queue: PostgresStore, account: str) -> None:
        self._queue = queue
        self._account = account

    def hold(self, reason: str) -> None:
        """Hold ``reason`` fleet-wide; a reason held already keeps its first raise time."""
        with fleet_transaction(self._queue) as conn:
            conn.execute(
                "INSERT INTO fleet_pauses (account, reason, raised_at)"  # noqa: S608 (NOW only)
                f" VALUES (%s, %s, {NOW}) ON CONFLICT DO NOTHING",
                (self._account, reason),
            )

    def release(self, reasons: Collection[str]) -> None:
        """Stop holding each of ``reasons`` fleet-wide."""
        with fleet_transaction(self._queue) as conn:
            conn.execute(
                "DELETE FROM fleet_pauses WHERE account = %s AND reason = ANY(%s)",
                (self._account, list(reasons)),
            )

    def held(self) -> list[str]:
        """Every reason held fleet-wide, first raised first."""
        with fleet_transaction(self._queue) as conn:
            rows = conn.execute(
                "SELECT reason FROM fleet_pauses WHERE account = %s ORDER BY raised_at, reason",
                (self._account,),
            ).fetchall()
        return [str(r[0]) for r in rows]
