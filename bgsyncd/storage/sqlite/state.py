"""The SQLite queue's named state values (``storage.StateStore``)."""

from __future__ import annotations

from bgsyncd.storage.sqlite.db import SqliteBase


class SqliteState(SqliteBase):
    """The ``state`` table: pause reason, last credits and the like."""

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
