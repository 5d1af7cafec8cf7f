"""``bgsyncd status``: the queue as the daemon left it, read beside a running daemon.

It opens the daemon's database read-only with its own connection (WAL lets it
read while the daemon writes), never creates it, and never creates or checks
the folders: a status must answer whatever state the folders are in.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bgsyncd.config.schema import Settings
from bgsyncd.dispatch.status import status_of
from bgsyncd.dispatch.waiting import describe
from bgsyncd.storage.contract import STATES, QueueError, Store
from bgsyncd.storage.sqlite.store import SqliteStore


def collect_status(settings: Settings, clock: Any = time.time) -> dict[str, Any]:
    """The ``status --json`` object of SPEC §3 (:func:`bgsyncd.dispatch.status.status_of`)."""
    names = [f.name for f in settings.folders]
    queue: Store | None
    hosts: list[dict[str, Any]] | None = None
    if settings.queue.backend == "postgresql":
        hosts = []
        queue = _open_fleet(settings, hosts)
    else:
        db = settings.queue.database
        queue = SqliteStore.open_readonly(db) if db.exists() else None
    if queue is None:
        # no daemon has made the store yet: zeros, as SPEC §3 says
        return status_of(None, names, clock, hosts)
    try:
        return status_of(queue, names, clock, hosts)
    finally:
        queue.close()


def _open_fleet(settings: Settings, hosts: list[dict[str, Any]]) -> Store | None:
    """The fleet's database, read-only, its hosts put in ``hosts``; None before any daemon ran.

    PostgreSQL is imported here only (the SQLite path never loads psycopg).
    """
    from bgsyncd.storage.postgres.dsn import connection_dsn, require_psycopg

    require_psycopg()
    from bgsyncd.fleet.hosts import Hosts
    from bgsyncd.storage.postgres.store import PostgresStore

    try:
        view = PostgresStore.open_readonly(connection_dsn(settings.queue.dsn))
    except QueueError as exc:
        if "not initialised" in str(exc):
            return None  # no daemon has run on it yet: zeros, as SPEC §3 says
        raise
    try:
        listed = Hosts(view, settings.queue.lease_seconds).listed()
    except BaseException:
        view.close()
        raise
    hosts[:] = [h.as_json() for h in listed]
    return view


def print_status(settings: Settings, as_json: bool) -> int:
    """Print the status, as JSON or as a small table."""
    status = collect_status(settings)
    if as_json:
        print(json.dumps(status))
        return 0
    width = max([len("total"), *(len(name) for name in status["folders"])])
    print(f"{'folder':<{width}}  " + "  ".join(f"{s:>11}" for s in STATES))
    for name, counts in sorted(status["folders"].items()):
        print(f"{name:<{width}}  " + "  ".join(f"{counts[s]:>11}" for s in STATES))
    print(f"{'total':<{width}}  " + "  ".join(f"{status['jobs'][s]:>11}" for s in STATES))
    print(f"paused:         {status['paused'] or 'no'}")
    credits = status["credits"]
    print(f"credits:        {credits if credits is not None else 'unknown'}")
    oldest = status["oldest_pending_seconds"]
    print(f"oldest pending: {f'{oldest:.0f} s' if oldest is not None else '-'}")
    print(f"waiting:        {describe(status['waiting'])}")
    for host in status.get("hosts", []):
        seen = max(0.0, time.time() - host["last_seen"])
        folders = ", ".join(host["folders"]) or "-"
        print(
            f"host {host['id']}: seen {seen:.0f} s ago, {host['in_flight']} in flight;"
            f" folders {folders}"
        )
    return 0
