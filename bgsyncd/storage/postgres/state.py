"""The PostgreSQL queue's named state values, shared by the fleet (``storage.StateStore``).

One row per key for every host: a pause one host sets (a revoked key, the
credit floor) is every host's pause, and a resume by any host resumes all.
"""

from __future__ import annotations

from bgsyncd.storage.postgres.db import PgBase


class PgState(PgBase):
    """The ``state`` table."""

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
