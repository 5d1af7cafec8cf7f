"""The watcher alone, in process: start-up scan rate and the cost of an idle watcher.

Run from the repository root (see bench/README.md)::

    .venv/bin/python -m bench.watcher [--files 10000] [--idle 5]

These were assertions in tests/unit/inbox/test_watcher.py (>= 2,000 files/s; < 0.05 s of
CPU per second idle); timings on a shared machine do not belong in the suite.
The scan: ``--files`` old files in 50 folders, one ``Watcher.start`` (the
start-up scan is blocking), files/s = files / the time ``start`` took. Idle:
the process's CPU time over ``--idle`` seconds with one inotify and one polled
inbox watched (polling every second, the root guard looking every 2 s) and
nothing happening. Prints each figure beside its budget; exit status 1 on a miss.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.scale import Figure, print_table
from bgsyncd.config.schema import FolderSettings
from bgsyncd.inbox.watcher import Watcher
from bgsyncd.storage.contract import Found

OLD = time.time() - 3600  # quiet for an hour: the scan emits at once


def folder(root: Path, name: str, *, polling: bool = False) -> FolderSettings:
    """A folder whose inbox is ``root/name``."""
    (root / name).mkdir(exist_ok=True)
    return FolderSettings(
        name=name,
        inbox=root / name,
        outbox=root / f"{name}-out",
        quarantine=root / f"{name}-q",
        polling=polling,
    )


def scan_rate(root: Path, files: int) -> Figure:
    """Files/s of the start-up scan of ``files`` old files in 50 folders."""
    inbox = folder(root, "scan")
    for i in range(files):
        path = root / "scan" / f"d{i % 50:02}" / f"{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (OLD, OLD))
    found: list[Found] = []
    watcher = Watcher([inbox], found.append, lambda *_: False, 2.0, 300.0)
    started = time.monotonic()
    watcher.start()
    elapsed = time.monotonic() - started
    watcher.stop()
    if len(found) != files:
        raise SystemExit(f"the scan found {len(found)} of {files} files")
    return Figure("start-up scan, in process", files / elapsed, "files/s", 2000, True)


def idle_cpu(root: Path, seconds: float) -> Figure:
    """CPU seconds per second of a watcher with nothing to do."""
    folders = [folder(root, "idle-inotify"), folder(root, "idle-polled", polling=True)]
    watcher = Watcher(folders, lambda found: None, lambda *_: False, 2.0, 300.0)
    watcher.start()
    try:
        time.sleep(1.0)  # past start-up
        before = time.process_time()
        time.sleep(seconds)  # the point: what an idle watcher costs meanwhile
        used = time.process_time() - before
    finally:
        watcher.stop()
    return Figure("idle watcher CPU, per second", used / seconds, "s", 0.05)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, exit 1 when a budget is missed."""
    parser = argparse.ArgumentParser(prog="python -m bench.watcher", description=__doc__)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle measured")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bgsyncd-bench-watcher-") as tmp:
        figures = [scan_rate(Path(tmp), args.files), idle_cpu(Path(tmp), args.idle)]
    return 0 if print_table(figures) else 1


if __name__ == "__main__":
    raise SystemExit(main())
