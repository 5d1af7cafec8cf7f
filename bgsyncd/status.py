"""The commands that look at (or nudge) the queue from outside the daemon.

``status`` and ``retry`` open the daemon's database with their own connection:
WAL lets them read while the daemon writes. ``credits`` goes through the same
persisted request log as the daemon, so it never pushes the account over its
rate limit.
"""

from __future__ import annotations

import json
import os
import posixpath
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bgsyncd import fsops
from bgsyncd.config import Settings, require_api_key
from bgsyncd.outputs import move_to, sidecar_name
from bgsyncd.pacer import MemoryRequestLog, Pacer, RequestLog
from bgsyncd.queue import STATES, Queue, SqliteRequestLog

if TYPE_CHECKING:
    from bgsyncd.client import Credits

# Keys of the queue's key/value state that the daemon keeps for these commands.
STATE_PAUSED = "paused"
STATE_CREDITS = "credits"
STATE_CREDITS_EXPIRY = "credits_expiry"


def collect_status(settings: Settings, clock: Any = time.time) -> dict[str, Any]:
    """The ``status --json`` object of SPEC §3."""
    empty = dict.fromkeys(STATES, 0)
    result: dict[str, Any] = {
        "jobs": dict(empty),
        "folders": {f.name: dict(empty) for f in settings.folders},
        "paused": None,
        "credits": None,
        "oldest_pending_seconds": None,
    }
    db = settings.queue.database
    if not db.exists():
        return result
    queue = Queue.open_readonly(db)
    try:
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
    finally:
        queue.close()
    return result


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
    return 0


def retry(settings: Settings, paths: list[Path], *, everything: bool) -> int:
    """Move quarantined files back into their inboxes and queue them again."""
    db = settings.queue.database
    if not db.exists():
        print("bgsyncd: nothing is quarantined (no queue database yet)", file=sys.stderr)
        return 1 if paths else 0
    folders = {f.name: f for f in settings.folders}
    wanted = {p.resolve() for p in paths}
    queue = Queue(db)
    found: set[Path] = set()
    retried = 0
    try:
        for job in queue.quarantined():
            folder = folders.get(job.folder)
            if folder is None:
                continue
            # Where the file went: its own name, or `photo~2.jpg` beside an older one.
            qrel = job.outputs[0] if job.outputs else job.relpath
            where = folder.quarantine / qrel
            inbox_path = folder.inbox / job.relpath
            matches = {where.resolve(), inbox_path.resolve()} & wanted
            if not everything and not matches:
                continue
            found |= matches
            if fsops.regular_stat(folder.quarantine, qrel) is not None:
                side = posixpath.join(
                    posixpath.dirname(qrel), sidecar_name(where.name, job.relpath)
                )
                move_to(folder.quarantine, qrel, folder.inbox, job.relpath)
                with suppress(FileNotFoundError):
                    fsops.unlink(folder.quarantine, side)
            elif fsops.regular_stat(folder.inbox, job.relpath) is None:
                print(f"bgsyncd: {where} is gone; skipped", file=sys.stderr)
                continue
            queue.requeue(job.id)
            retried += 1
            print(f"queued again: {folder.name}/{job.relpath}")
    finally:
        queue.close()
    missing = wanted - found
    for path in sorted(missing):
        print(f"bgsyncd: {path} is not a quarantined file", file=sys.stderr)
    print(f"{retried} file(s) queued again; a running daemon picks them up at its next scan")
    return 1 if missing else 0


def request_log_for(settings: Settings) -> RequestLog:
    """The persisted request log when the database is ours to write, else memory."""
    db = settings.queue.database
    if db.exists() and os.access(db, os.W_OK):
        return SqliteRequestLog(db)
    return MemoryRequestLog()


def fetch_credits(settings: Settings) -> Credits:
    """One paced credit check, outside the daemon."""
    from bgsyncd.client import Client  # httpx is slow to import; `status` needs none of it

    key = require_api_key(settings)
    pacer = Pacer(
        settings.api.rate_limit, settings.api.rate_window_seconds, request_log_for(settings)
    )
    with Client(
        settings.api.base_url, key, settings.api.timeout_seconds, gate=pacer.acquire
    ) as client:
        return client.available_credits()
