"""The fleet's shared request log on PostgreSQL (``storage.SharedRequestLog``).

:class:`PostgresRequestLog` — the sliding-window rate limit for one API account,
across every host: a start is checked and recorded in one transaction under
one advisory lock per account, timed by the database server's clock, before
the request is sent. The account is a hash of the key, never the key.
"""

from __future__ import annotations

import hashlib

from bgsyncd.storage.contract import SharedRequestLog
from bgsyncd.storage.postgres.db import server_now
from bgsyncd.storage.postgres.store import PostgresStore


def account_id(api_key: str) -> str:
    """The name of an API account in the shared tables: a hash, never the key."""
    return hashlib.sha256(b"bgsyncd-account:" + api_key.encode()).hexdigest()[:32]


def _lock_key(account: str) -> int:
    """A signed 64-bit advisory lock key for ``account``."""
    return int.from_bytes(bytes.fromhex(account[:16]), "big", signed=True)


class PostgresRequestLog:
    """Request starts of one account, shared by every host of the fleet."""

    def __init__(self, queue: PostgresStore, account: str, keep_seconds: float = 3600.0) -> None:
        self._queue = queue
        self._account = account
        self._keep = keep_seconds
        self._starts = 0

    def try_start(self, limit: int, window: float, margin: float) -> float:
        """Record a start now if the window has room and return 0.0; else the seconds to wait.

        Check and record happen in one transaction under the account's advisory
        lock, on the server's clock, so no two hosts can both take the last slot.
        """
        span = window + margin
        with self._queue.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(self._account),))
            now = server_now(conn)
            rows = conn.execute(
                "SELECT t FROM request_log WHERE account = %s AND t > %s ORDER BY t",
                (self._account, now - span),
            ).fetchall()
            if len(rows) < limit:
                conn.execute(
                    "INSERT INTO request_log (account, t) VALUES (%s, %s)", (self._account, now)
                )
                self._starts += 1
                if self._starts % 100 == 1:
                    conn.execute(
                        "DELETE FROM request_log WHERE account = %s AND t < %s",
                        (self._account, now - self._keep),
                    )
                return 0.0
            # The start that must leave the window before one more fits.
            oldest = float(rows[len(rows) - limit][0])
            return max(0.001, oldest + span - now)

    def since(self, t: float) -> list[float]:
        """Start times (server clock) later than ``t``, oldest first."""
        with self._queue.transaction() as conn:
            rows = conn.execute(
                "SELECT t FROM request_log WHERE account = %s AND t > %s ORDER BY t",
                (self._account, t),
            ).fetchall()
        return [float(r[0]) for r in rows]


def _is_a_shared_request_log(log: PostgresRequestLog) -> SharedRequestLog:
    """Checked by mypy: the fleet's request log keeps its contract."""
    return log
