"""The fleet's hooks waiting to be delivered (``storage.HookQueue``, SPEC §10).

A hook's row is written by ``storage.postgres.jobs`` in the transaction that
marks its job done or quarantined (:func:`insert_hooks`), and deleted once
delivered, by whichever host claims it, among the hosts that serve its folder
(a host claims only its configured folders' hooks). Claims take ``FOR UPDATE SKIP
LOCKED`` and move ``next_at`` (the server's clock) to the end of the lease:
two hosts never run one hook at once, and a hook whose host died is due
again when its lease runs out, or at once when that host starts again
(``release_hooks``). Every change says ``WHERE id = %s AND claim_token = %s``.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from typing import Any

from bgsyncd.storage.contract import HookEvent, PendingHook
from bgsyncd.storage.postgres.db import NOW, Connection, PgBase

SQL_INSERT_HOOK = (
    "INSERT INTO hooks (event_id, folder, kind, payload, next_at, created_at)"
    f" VALUES (%s, %s, %s, %s, {NOW}, {NOW}) ON CONFLICT (event_id, kind) DO NOTHING"
)


def insert_hooks(conn: Connection, hooks: Sequence[HookEvent]) -> None:
    """Record ``hooks``, due now, in the caller's open transaction."""
    for h in hooks:
        conn.execute(SQL_INSERT_HOOK, (h.event_id, h.folder, h.kind, h.payload))


class PgHooks(PgBase):
    """The ``hooks`` table."""

    def claim_hooks(
        self, limit: int, lease_seconds: float, folders: Collection[str]
    ) -> list[PendingHook]:
        """Up to ``limit`` due hooks of ``folders`` (the ones this host serves), oldest
        first, each under a fresh token and lease. Another host's folders are never
        taken: their hooks wait for a host that serves them."""
        names = list(folders)
        if limit <= 0 or not names:
            return []
        with self.transaction() as conn:
            rows: list[Any] = conn.execute(
                "SELECT id, event_id, folder, kind, payload, attempts FROM hooks"
                f" WHERE next_at <= {NOW} AND folder = ANY(%s)"
                " ORDER BY next_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
                (names, limit),
            ).fetchall()
            claimed = []
            for hook_id, event_id, folder, kind, payload, attempts in rows:
                token = uuid.uuid4().hex
                conn.execute(
                    f"UPDATE hooks SET next_at = {NOW} + %s, claim_token = %s, owner = %s"
                    " WHERE id = %s",
                    (lease_seconds, token, self.host_id, hook_id),
                )
                event = HookEvent(event_id, folder, kind, payload)
                claimed.append(PendingHook(int(hook_id), event, int(attempts), token))
        return claimed

    def hook_delivered(self, hook: PendingHook) -> None:
        """Delete a delivered hook (if its claim still holds it)."""
        self.drop_hook(hook)

    def drop_hook(self, hook: PendingHook) -> None:
        """Delete ``hook`` undelivered (if its claim still holds it)."""
        with self.transaction() as conn:
            conn.execute(
                "DELETE FROM hooks WHERE id = %s AND claim_token = %s",
                (hook.id, hook.claim_token),
            )

    def hook_failed(self, hook: PendingHook, at: float) -> None:
        """Count a failed try; the hook is due again at ``at`` (this host's clock)."""
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE hooks SET attempts = attempts + 1, next_at = {NOW} + %s,"
                " claim_token = NULL, owner = NULL WHERE id = %s AND claim_token = %s",
                (at - self._clock(), hook.id, hook.claim_token),
            )

    def release_hooks(self) -> int:
        """At start: the hooks this host had claimed (it died meanwhile) are due now."""
        with self.transaction() as conn:
            cur = conn.execute(
                f"UPDATE hooks SET next_at = {NOW}, claim_token = NULL, owner = NULL"
                " WHERE claim_token IS NOT NULL AND owner = %s",
                (self.host_id,),
            )
            return cur.rowcount

    def hooks_pending(self) -> int:
        """Hooks recorded and not yet delivered or dropped, by every host."""
        with self.transaction() as conn:
            row = conn.execute("SELECT COUNT(*) FROM hooks").fetchone()
        return int(row[0]) if row is not None else 0
