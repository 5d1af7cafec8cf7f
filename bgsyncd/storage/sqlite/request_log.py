"""The pacer's request log on SQLite (``storage.RequestLog``)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from bgsyncd.storage.contract import RequestLog
from bgsyncd.storage.sqlite.db import connect, failure, transaction
from bgsyncd.storage.sqlite.schema import SQL_SINCE


class SqliteRequestLog:
    """The pacer's log of request start times, durable across restarts.

    Lives in the queue database file with its own connection, so a pacer wait
    never queues behind a queue write. Times are wall-clock seconds.
    """

    def __init__(self, path: Path, keep_seconds: float = 3600.0) -> None:
        self._path = Path(path)
        self._conn = connect(self._path)
        self._lock = threading.Lock()
        self._keep = keep_seconds
        self._records = 0

    def record(self, t: float) -> None:
        """Log a request start; committed (durable) before it returns."""
        with self._lock:
            try:
                with transaction(self._conn):
                    self._conn.execute("INSERT INTO request_log (t) VALUES (?)", (t,))
                    self._records += 1
                    if self._records % 100 == 1:  # prune now and then, not on every request
                        self._conn.execute("DELETE FROM request_log WHERE t < ?", (t - self._keep,))
            except sqlite3.Error as exc:
                # Not recorded, so not sent: the pacer's gate fails closed.
                raise failure(exc, self._path) from exc

    def since(self, t: float) -> list[float]:
        """Start times at or after ``t``, oldest first."""
        with self._lock:
            try:
                return [row[0] for row in self._conn.execute(SQL_SINCE, (t,))]
            except sqlite3.Error as exc:
                raise failure(exc, self._path) from exc

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()


def _is_a_request_log(log: SqliteRequestLog) -> RequestLog:
    """Checked by mypy: the SQLite request log keeps its contract."""
    return log
