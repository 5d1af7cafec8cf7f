"""What the status page shows, read from the store and from the running daemon (SPEC §11).

:class:`Live` is what the service hands the page: the daemon's store, the
settings in force, and the few things only the running daemon knows (is an
inbox up, the requests in the rate window, the fleet's hosts), as callables
the page calls from its own threads. :func:`page_model` puts one page's worth
together; :func:`status_json` is ``GET /api/status``, the same object as
``bgsyncd status --json`` (:func:`bgsyncd.dispatch.status.status_of`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bgsyncd.config.schema import FolderSettings, Settings
from bgsyncd.dispatch.status import STATE_PAUSED_SINCE, status_of
from bgsyncd.storage.contract import STATES, Job, Recent, Store

RECENT_JOBS = 50  # the recent jobs listed (SPEC §11: the last 50 at least)


def _no_hosts() -> list[dict[str, Any]] | None:
    return None


def _unknown(_folder: str) -> bool | None:
    return None


def _no_window() -> int:
    return 0


@dataclass
class Live:
    """The running daemon, as the page reads it (every callable safe from any thread)."""

    queue: Store
    settings: Callable[[], Settings]
    hosts: Callable[[], list[dict[str, Any]] | None] = _no_hosts  # None on SQLite
    folder_up: Callable[[str], bool | None] = _unknown
    in_window: Callable[[], int] = _no_window  # request starts in the current rate window
    on_requeued: Callable[[], None] = field(default=lambda: None)
    clock: Callable[[], float] = time.time

    def folder(self, name: str) -> FolderSettings | None:
        """The folder of that name in the settings in force."""
        return next((f for f in self.settings().folders if f.name == name), None)


def status_json(live: Live) -> dict[str, Any]:
    """``GET /api/status``: the ``status --json`` object."""
    names = [f.name for f in live.settings().folders]
    return status_of(live.queue, names, live.clock, live.hosts())


def start_of_day(now: float) -> float:
    """Local midnight before ``now``."""
    t = time.localtime(now)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))


def when(t: float | None) -> str:
    """A time as the page shows it (local time), "-" for none."""
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def page_model(live: Live) -> dict[str, Any]:
    """Everything one rendering of the page shows."""
    settings = live.settings()
    status = status_json(live)
    now = live.clock()
    queue = live.queue
    done_today = queue.done_since(start_of_day(now))
    last_done = queue.last_done()
    folders = []
    for name, counts in sorted(status["folders"].items()):
        folders.append(
            {
                "name": name,
                "counts": [(state, counts.get(state, 0)) for state in STATES],
                "done_today": done_today.get(name, 0),
                "last_success": when(last_done.get(name)),
                "up": live.folder_up(name),
            }
        )
    since = queue.get_state(STATE_PAUSED_SINCE) if status["paused"] else None
    recent = queue.recent(RECENT_JOBS)
    quarantined = queue.quarantined()
    return {
        "folders": folders,
        "totals": [(state, status["jobs"][state]) for state in STATES],
        "paused": status["paused"],
        "paused_since": when(float(since)) if since else "-",
        "credits": status["credits"],
        "floor": settings.credits.floor,
        "in_window": live.in_window(),
        "limit": settings.api.rate_limit,
        "window": settings.api.rate_window_seconds,
        "waiting": status["waiting"],
        "hosts": [{**h, "last_seen": when(h["last_seen"])} for h in status.get("hosts") or []],
        "fleet": "hosts" in status,
        "recent": [_recent(r) for r in recent],
        "quarantine": [_quarantined(j) for j in quarantined],
        "updated": when(now),
    }


def _recent(r: Recent) -> dict[str, Any]:
    job = r.job
    return {
        "id": job.id,
        "folder": job.folder,
        "relpath": job.relpath,
        "outcome": job.state,
        "when": when(r.at),
        "version": thumb_version(r),
        "before": job.state in ("done", "quarantined"),
        "after": job.state == "done" and bool(job.outputs),
    }


def thumb_version(r: Recent) -> str:
    """What a job's thumbnails are made from, as 16 hex digits: the same while they cannot
    differ, another once the job's state, its file's recorded version or its outputs
    change (a retry, a redo). Part of a thumbnail's URL, so a browser may keep it."""
    job = r.job
    what = (repr(r.at), job.state, job.size, job.mtime_ns, job.inode, job.outputs)
    return hashlib.sha256(repr(what).encode()).hexdigest()[:16]


def _quarantined(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "folder": job.folder,
        "relpath": job.relpath,
        "reason": job.reason or "",
        "message": job.last_error or "",
    }
