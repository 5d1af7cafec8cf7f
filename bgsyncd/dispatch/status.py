"""The ``status --json`` object (SPEC §3), built from a store: one shape for every reader.

``bgsyncd status`` builds it from a read-only view of the daemon's database,
the status page (:mod:`bgsyncd.web`) from the running daemon's own store; both
call :func:`status_of`, so ``GET /api/status`` answers exactly what
``status --json`` prints. The daemon keeps what only it knows (the pause, the
last credits, what the next request waits for) in the store's named state
under the keys below (:class:`bgsyncd.service.publisher.Publisher` writes them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from bgsyncd.dispatch.waiting import Waiting, decode
from bgsyncd.storage.contract import STATES, Store

# Keys of the store's named state that the daemon keeps for `bgsyncd status`.
STATE_PAUSED = "paused"
STATE_PAUSED_SINCE = "paused_since"  # when the pause in STATE_PAUSED began (unix seconds)
STATE_CREDITS = "credits"
STATE_WAITING = "waiting"  # what the next request waits for: see bgsyncd.dispatch.waiting


def status_of(
    queue: Store | None,
    folders: Iterable[str],
    clock: Callable[[], float],
    hosts: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``status --json`` object; zeros when ``queue`` is None (no daemon has run yet).

    ``hosts`` is the fleet's hosts (PostgreSQL), None on SQLite (no ``hosts`` key).
    """
    empty = dict.fromkeys(STATES, 0)
    result: dict[str, Any] = {
        "jobs": dict(empty),
        "folders": {name: dict(empty) for name in folders},
        "paused": None,
        "credits": None,
        "oldest_pending_seconds": None,
        "waiting": Waiting().as_json(),
    }
    if hosts is not None:
        result["hosts"] = list(hosts)
    if queue is None:
        return result
    for folder, counts in queue.counts().items():
        per = result["folders"].setdefault(folder, dict(empty))
        for state, n in counts.items():
            per[state] = n
            result["jobs"][state] += n
    oldest = queue.oldest_pending_queued_at()
    if oldest is not None:
        result["oldest_pending_seconds"] = round(max(0.0, clock() - oldest), 3)
    result["paused"] = queue.get_state(STATE_PAUSED)
    credits = queue.get_state(STATE_CREDITS)
    result["credits"] = int(credits) if credits not in (None, "") else None
    result["waiting"] = decode(queue.get_state(STATE_WAITING), clock()).as_json()
    return result
