"""``bgsyncd retry``: put quarantined files back into their inboxes and queue them again.

A PATH may also be a done input still in its inbox: it is queued again and
its outputs, the folder's own and each rendition's, are made anew under the
settings in force (a rendition added since, a changed format...), from the
result cache when it holds the answer, so with no credit (SPEC §9).

Runs beside the daemon with its own connection to the queue database. A running
daemon needs no signal: its dispatcher looks for pending work every
``dispatch.dispatcher.IDLE_LOOK_SECONDS`` (mirrored here as ``PICKUP_SECONDS``, so this
command does not import the HTTP stack).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bgsyncd.config.schema import Settings
from bgsyncd.errors import describe_os_error
from bgsyncd.files import fsops
from bgsyncd.inbox.returns import quarantined_at, return_quarantined
from bgsyncd.service.backends import open_fleet_queue
from bgsyncd.storage.sqlite.store import SqliteStore

# dispatch.dispatcher.IDLE_LOOK_SECONDS; tests/system/test_cli.py checks the two agree.
PICKUP_SECONDS = 5.0


def retry(settings: Settings, paths: list[Path], *, everything: bool) -> int:
    """Move quarantined files back into their inboxes and queue them again."""
    db = settings.queue.database
    fleet = settings.queue.backend == "postgresql"
    if not fleet and not db.exists():
        print("bgsyncd: nothing is quarantined (no queue database yet)", file=sys.stderr)
        return 1 if paths else 0
    folders = {f.name: f for f in settings.folders}
    wanted = {p.resolve() for p in paths}
    queue = open_fleet_queue(settings) if fleet else SqliteStore(db)
    found: set[Path] = set()
    retried = 0
    failed = 0
    try:
        for job in queue.quarantined():
            folder = folders.get(job.folder)
            if folder is None:
                continue
            where = folder.quarantine / quarantined_at(job)
            inbox_path = folder.inbox / job.relpath
            matches = {where.resolve(), inbox_path.resolve()} & wanted
            if not everything and not matches:
                continue
            found |= matches
            try:
                if not return_quarantined(folder, job, queue):
                    print(f"bgsyncd: {where} is gone; skipped", file=sys.stderr)
                    continue
            except OSError as exc:  # the disk's answer, not a bug: the file stays where it is
                failed += 1
                print(
                    f"bgsyncd: cannot put {where} back into {inbox_path.parent}:"
                    f" {describe_os_error(exc)}; it stays quarantined",
                    file=sys.stderr,
                )
                continue
            retried += 1
            print(f"queued again: {folder.name}/{job.relpath}")
        for path in sorted(wanted - found):
            done = _done_input(settings, path)
            if done is not None and queue.requeue_done(*done):
                found.add(path)
                retried += 1
                print(f"queued again, to be made anew: {done[0]}/{done[1]}")
    finally:
        queue.close()
    missing = wanted - found
    for path in sorted(missing):
        print(f"bgsyncd: {path} is neither a quarantined file nor a done one", file=sys.stderr)
    print(
        f"{retried} file(s) queued again; a running daemon takes them within "
        f"{PICKUP_SECONDS:g} s (its dispatcher looks for work that often)"
    )
    return 1 if missing or failed else 0


def _done_input(settings: Settings, path: Path) -> tuple[str, str] | None:
    """(folder, relpath) of ``path`` (resolved) as an input file in a configured inbox; or None."""
    for folder in settings.folders:
        try:
            rel = path.relative_to(folder.inbox.resolve())
        except ValueError:
            continue
        relpath = rel.as_posix()
        try:
            there = relpath != "." and fsops.regular_stat(folder.inbox, relpath) is not None
        except OSError:  # the disk's answer: not an input that can be made anew now
            there = False
        if there:
            return folder.name, relpath
    return None
