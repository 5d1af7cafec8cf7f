"""The SQLite hooks waiting to be delivered (``storage.HookQueue``, SPEC §10).

A hook's row is written by ``storage.sqlite.jobs`` in the transaction that
marks its job done or quarantined (:func:`insert_hooks`), and deleted once
delivered. A claim moves ``next_at`` to the end of its lease: a daemon killed
while a hook runs leaves it due again, at once after ``release_hooks`` at the
next start (one daemon per database: every claim left is a dead run's).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Collection, Sequence

from bgsyncd.storage.contract import HookEvent, PendingHook
from bgsyncd.storage.sqlite.db import SqliteBase

SQL_INSERT_HOOK = (
    "INSERT OR IGNORE INTO hooks (event_id, folder, kind, payload, next_at, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


def insert_hooks(conn: sqlite3.Connection, hooks: Sequence[HookEvent], now: float) -> None:
    """Record ``hooks``, due now, in the caller's open transaction."""
    conn.executemany(
        SQL_INSERT_HOOK, [(h.event_id, h.folder, h.kind, h.payload, now, now) for h in hooks]
    )


class SqliteHooks(SqliteBase):
    """The ``hooks`` table."""

    def claim_hooks(
        self, limit: int, lease_seconds: float, folders: Collection[str]
    ) -> list[PendingHook]:
        """Up to ``limit`` due hooks of ``folders`` (the configured ones), oldest first,
        each under a fresh token and lease. A folder removed from the configuration
        keeps its hooks for a later configuration, as it keeps its jobs."""
        names = list(folders)
        if limit <= 0 or not names:
            return []
        marks = ", ".join("?" * len(names))
        with self._write() as conn:
            now = self._clock()
            rows = conn.execute(
                "SELECT id, event_id, folder, kind, payload, attempts FROM hooks"  # noqa: S608
                f" WHERE next_at <= ? AND folder IN ({marks}) ORDER BY next_at, id LIMIT ?",
                (now, *names, limit),
            ).fetchall()
            claimed = []
            for hook_id, event_id, folder, kind, payload, attempts in rows:
                token = uuid.uuid4().hex
                conn.execute(
                    "UPDATE hooks SET next_at = ?, claim_token = ? WHERE id = ?",
                    (now + lease_seconds, token, hook_id),
                )
                event = HookEvent(event_id, folder, kind, payload)
                claimed.append(PendingHook(hook_id, event, attempts, token))
        return claimed

    def hook_delivered(self, hook: PendingHook) -> None:
        """Delete a delivered hook (if its claim still holds it)."""
        self.drop_hook(hook)

    def drop_hook(self, hook: PendingHook) -> None:
        """Delete ``hook`` undelivered (if its claim still holds it)."""
        with self._write() as conn:
            conn.execute(
                "DELETE FROM hooks WHERE id = ? AND claim_token = ?", (hook.id, hook.claim_token)
            )

    def hook_failed(self, hook: PendingHook, at: float) -> None:
        """Count a failed try; the hook is due again at ``at``."""
        with self._write() as conn:
            conn.execute(
                "UPDATE hooks SET attempts = attempts + 1, next_at = ?, claim_token = NULL"
                " WHERE id = ? AND claim_token = ?",
                (at, hook.id, hook.claim_token),
            )

    def release_hooks(self) -> int:
        """At start: hooks a dead run had claimed are due now; how many."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE hooks SET next_at = ?, claim_token = NULL WHERE claim_token IS NOT NULL",
                (self._clock(),),
            )
            return cur.rowcount

    def hooks_pending(self) -> int:
        """Hooks recorded and not yet delivered or dropped."""
        with self._read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM hooks").fetchone()[0])
