"""The watcher under test: an event sink, its environment, files written with a given mtime."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bgsyncd.config.schema import FolderSettings
from bgsyncd.inbox.watcher import Watcher
from bgsyncd.storage.contract import Found
from tests.support.helpers import wait_until

OLD = time.time() - 3600


class Sink:
    """A thread-safe list of what the watcher emitted, with when."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[Found, float]] = []

    def __call__(self, found: Found) -> None:
        with self.lock:
            self.items.append((found, time.monotonic()))

    def found(self, relpath: str | None = None) -> list[Found]:
        with self.lock:
            return [f for f, _ in self.items if relpath is None or f.relpath == relpath]

    def names(self) -> list[str]:
        return sorted(f.relpath for f in self.found())

    def at(self, relpath: str) -> float:
        with self.lock:
            return next(t for f, t in self.items if f.relpath == relpath)


class Env:
    """An inbox, a folder beside it (same filesystem) and started watchers."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.inbox = tmp_path / "inbox"
        self.outside = tmp_path / "outside"
        self.inbox.mkdir()
        self.outside.mkdir()
        self.watchers: list[Watcher] = []

    def folder(self, **kw: object) -> FolderSettings:
        return FolderSettings(
            name="products",
            inbox=self.inbox,
            outbox=self.tmp / "outbox",
            quarantine=self.tmp / "quarantine",
            **kw,
        )

    def start(
        self,
        settle: float = 5.0,
        rescan: float = 300.0,
        sink: Callable[[Found], None] | None = None,
        is_unchanged: Callable[[str, str, int, int, int], bool] | None = None,
        **folder: object,
    ) -> tuple[Watcher, Sink]:
        recorder = Sink()
        watcher = Watcher(
            [self.folder(**folder)],
            sink or recorder,
            is_unchanged or (lambda *_: False),
            settle,
            rescan,
            poll_interval=0.1,
        )
        self.watchers.append(watcher)
        self.seen = watcher.start()
        return watcher, recorder

    def sentinel(self, sink: Sink, timeout: float = 3.0) -> None:
        """Write a file and wait for it: events before it have been dealt with."""
        write(self.inbox / SENTINEL)
        wait_until(lambda: sink.found(SENTINEL), timeout, what="the sentinel file")


def write(path: Path, data: bytes = b"x" * 1000, mtime: float | None = None) -> Path:
    """Write ``path``; with ``mtime``, the file appears with that mtime already set.

    An ``os.utime`` after the close is an IN_ATTRIB, which watchdog 6 (Python
    3.10) reports as a modification: the file would then wait ``settle_seconds``
    as one being written. So an old file is written aside and renamed in.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path if mtime is None else path.with_name(f".{path.name}.writing")
    with open(target, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(target, (mtime, mtime))
        os.rename(target, path)
    return path


SENTINEL = "zz-sentinel.jpg"


RESCAN = 3600.0  # the periodic rescan never runs in these tests


LOST_WITHIN = 10.0  # SPEC: a lost or restored inbox is noticed within 10 seconds
