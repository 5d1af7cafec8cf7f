"""Finding complete files in the inboxes (the only module that imports watchdog).

One watchdog observer per inbox feeds a tracker keyed by path; the tracker
thread decides when a file is complete and hands it to ``sink``:

- inotify ``Closed`` (IN_CLOSE_WRITE) or a rename inside the inbox: complete now.
- ``Created`` with no open or write within ``grace_seconds``: moved in whole
  (``mv`` from outside the tree) -- complete unless a local process holds it
  open for writing.
- ``Opened`` by its creator, or ``Modified``: being written; wait for ``Closed``
  however long the writer pauses. Should the ``Closed`` be lost (overflow),
  it becomes complete once unchanged for ``settle_seconds`` and not held open
  for writing.
- Found by a scan, created inside a folder that just appeared (watchdog
  synthesises those events, without closes), or anything in a polled folder:
  complete after ``settle_seconds`` without change and not held open for
  writing. A file whose mtime is already that old needs only the open check.

Files are ``lstat``-ed again just before they are emitted, and the fresh
values sent. Zero-byte files are never emitted (a placeholder is not an
image; it counts once it has content). Symlinks, folders, FIFOs, sockets and
devices are never emitted, nothing in an inbox is opened, no link is followed.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from bgsyncd.config import FolderSettings
from bgsyncd.logs import get_logger
from bgsyncd.openfiles import OpenForWriting
from bgsyncd.queue import Found
from bgsyncd.scanner import IgnoreRules, Inbox, Scanner, regular_file

log = get_logger("bgsyncd.watcher")

GRACE_SECONDS = 0.25  # a Created with no open/write this soon after was moved in whole
FRESH_DIR_SECONDS = 2.0  # Created events this soon after their folder appeared may be synthesised
RECENT_SECONDS = 2.0  # an emission this recent is not repeated for the same version
_BATCH = 256  # due entries taken per lock hold, so observers are not held back
# Attrib and close-without-write are left out: our own worker's reads cost nothing.
_EVENT_TYPES: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileOpenedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
]
# watchdog 7 has no event for IN_Q_OVERFLOW; it logs a warning here instead.
_OVERFLOW_LOGGER = "watchdog.observers.inotify_c"


class Watcher:
    """Watches every inbox and calls ``sink`` with each file once it is complete.

    ``sink`` and ``is_unchanged`` are called from the watcher's threads (and
    from the caller's during ``start``); both must be cheap and thread-safe.
    ``poll_interval`` is the polling observers' period, ``wall_clock`` the
    clock that file mtimes are compared with, ``grace_seconds`` how long a new
    file may go without an open or write before it counts as moved in whole.
    """

    def __init__(
        self,
        folders: Sequence[FolderSettings],
        sink: Callable[[Found], None],
        is_unchanged: Callable[[str, str, int, int, int], bool],
        settle_seconds: float,
        rescan_interval: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        poll_interval: float = 1.0,
        wall_clock: Callable[[], float] = time.time,
        grace_seconds: float = GRACE_SECONDS,
    ) -> None:
        self._inboxes = [
            Inbox(
                f.name or os.path.basename(os.path.abspath(f.inbox)),
                os.path.abspath(f.inbox),
                f.recursive,
                f.polling,
                IgnoreRules(f.ignore),
            )
            for f in folders
        ]
        self._sink = sink
        self._is_unchanged = is_unchanged
        self._settle = settle_seconds
        self._clock = clock
        self._wall = wall_clock
        self._poll_interval = poll_interval
        self._open = OpenForWriting([i.root for i in self._inboxes], clock=clock)
        self._tracker = Tracker(
            self._emit,
            self._open,
            settle_seconds,
            grace_seconds=grace_seconds,
            clock=clock,
            wall_clock=wall_clock,
        )
        self._scanner = Scanner(self._inboxes, self._scanned, rescan_interval)
        self._fresh: dict[str, float] = {}  # new folder -> until when its files count as scanned
        self._fresh_lock = threading.Lock()
        self._stopping = threading.Event()
        self._observers: list[BaseObserver] = []
        self._overflow = _OverflowHook(self.rescan)

    def start(self) -> int:
        """Start observers and threads, run the start-up scan; return the files seen.

        The start-up scan runs in the caller's thread, so ``sink`` is called
        from it too until ``start`` returns.
        """
        self._tracker.start()
        try:
            for inbox in self._inboxes:
                self._observers.append(self._observe(inbox))
        except OSError:
            self.stop()
            raise
        logging.getLogger(_OVERFLOW_LOGGER).addHandler(self._overflow)
        seen = self._scanner.scan()
        self._scanner.start()
        return seen

    def rescan(self) -> None:
        """Ask for a reconciliation scan of every inbox; returns at once."""
        self._scanner.request()

    def alive(self) -> bool:
        """True while every observer and its emitters, the tracker and the scanner run."""
        if not (self._scanner.alive() and self._tracker.alive()):
            return False
        return all(o.is_alive() and all(e.is_alive() for e in o.emitters) for o in self._observers)

    def pending(self) -> int:
        """Files seen but not yet complete, plus one while a scan is due or running."""
        return self._tracker.pending() + (1 if self._scanner.busy() else 0)

    def stop(self) -> None:
        """Stop observers and threads and wait for them."""
        self._stopping.set()
        logging.getLogger(_OVERFLOW_LOGGER).removeHandler(self._overflow)
        self._scanner.stop()
        for observer in self._observers:
            observer.stop()
        for observer in self._observers:
            if observer.is_alive():
                observer.join()
        self._tracker.stop()

    def _observe(self, inbox: Inbox) -> BaseObserver:
        observer: BaseObserver
        if inbox.polling:
            # lstat, not watchdog's default stat: a symlink is never followed.
            observer = PollingObserverVFS(
                os.lstat, os.scandir, polling_interval=self._poll_interval
            )
        else:
            observer = Observer()
        handler = _Handler(self, inbox)
        observer.schedule(handler, inbox.root, recursive=inbox.recursive, event_filter=_EVENT_TYPES)
        try:
            observer.start()
        except OSError as exc:
            observer.stop()  # the inotify observer started its reader thread already
            hint = "; if inotify ran out of watches, raise fs.inotify.max_user_watches"
            raise OSError(exc.errno, f"cannot watch {inbox.root}: {exc.strerror}{hint}") from exc
        return observer

    def _scanned(self, inbox: Inbox, rel: str, st: os.stat_result) -> None:
        """Route one file found by a scan: skip, emit now, or let it settle."""
        if st.st_size == 0:
            return
        if self._is_unchanged(inbox.name, rel, st.st_size, st.st_mtime_ns, st.st_ino):
            return
        path = f"{inbox.root}/{rel}"
        # Its own mtime says it has been quiet for settle_seconds already.
        quiet = self._wall() - st.st_mtime_ns / 1e9 >= self._settle
        if quiet and not self._open.holds(st.st_dev, st.st_ino):
            if not self._tracker.tracking(path):
                # Not remembered as recent: a scan answers to is_unchanged alone,
                # and 100k remembered paths would not be O(files in progress).
                self._sink(_found(inbox, rel, st))
            return
        self._tracker.scanned(inbox, path, rel, st)

    def on_event(self, inbox: Inbox, event: FileSystemEvent) -> None:
        """Feed one watchdog event for ``inbox`` to the tracker (observer thread)."""
        if self._stopping.is_set():
            return
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path)
        if isinstance(event, (DirCreatedEvent, DirMovedEvent)):
            self._fresh_dir(dest or src)
            return
        if event.is_directory:
            return
        note = self._tracker.note
        if isinstance(event, (FileMovedEvent, FileDeletedEvent)):
            note("gone", inbox, src, "")
            rel = inbox.relpath(dest) if dest else None
            if rel is not None:  # renamed into place: rsync's temp file, a browser's download
                note("settle" if inbox.polling else "ready", inbox, dest, rel)
            return
        rel = inbox.relpath(src)
        if rel is None:
            return
        if inbox.polling:
            note("settle", inbox, src, rel)  # no opens or closes are seen when polling
        elif isinstance(event, FileCreatedEvent):
            scanned_like = event.is_synthetic or self._in_fresh_dir(src)
            note("settle" if scanned_like else "created", inbox, src, rel)
        elif isinstance(event, FileOpenedEvent):
            note("opened", inbox, src, rel)
        elif isinstance(event, FileModifiedEvent):
            note("modified", inbox, src, rel)
        elif isinstance(event, FileClosedEvent):
            note("ready", inbox, src, rel)

    def _fresh_dir(self, path: str) -> None:
        now = self._clock()
        with self._fresh_lock:
            for old in [p for p, until in self._fresh.items() if until <= now]:
                del self._fresh[old]
            self._fresh[path] = now + FRESH_DIR_SECONDS

    def _in_fresh_dir(self, path: str) -> bool:
        with self._fresh_lock:
            until = self._fresh.get(path.rsplit("/", 1)[0])
        return until is not None and until > self._clock()

    def _emit(self, inbox: Inbox, rel: str, st: os.stat_result) -> None:
        if self._is_unchanged(inbox.name, rel, st.st_size, st.st_mtime_ns, st.st_ino):
            return
        if self._tracker.first_emission(f"{inbox.root}/{rel}", st):
            self._sink(_found(inbox, rel, st))


def _found(inbox: Inbox, rel: str, st: os.stat_result) -> Found:
    return Found(inbox.name, rel, st.st_size, st.st_mtime_ns, st.st_ino)


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class _Mode(enum.Enum):
    CREATED = "created"  # appeared; no writer seen yet
    WRITING = "writing"  # a writer was seen: wait for Closed (settle only if it was lost)
    SETTLE = "settle"  # closes cannot be seen: wait for settle_seconds of quiet
    READY = "ready"  # complete: emit at once


@dataclass(eq=False)
class _Entry:
    """One file in progress; changed only under the tracker's lock."""

    inbox: Inbox
    path: str
    relpath: str
    mode: _Mode
    due: float = 0.0  # when to look at it next
    sig: tuple[int, int, int] | None = None  # (size, mtime_ns, inode) last seen
    since: float = 0.0  # when ``sig`` was first seen
    gen: int = 0  # bumped by events: a look that began before is stale
    heap_seq: int = -1  # its live heap item, if any
    heap_at: float = math.inf


class Tracker:
    """Files in progress, keyed by path; its thread emits each when complete.

    Memory is O(files in progress). The thread sleeps on a Condition until the
    next deadline; observers and scans add or update entries from their threads.
    """

    def __init__(
        self,
        emit: Callable[[Inbox, str, os.stat_result], None],
        open_files: OpenForWriting,
        settle_seconds: float,
        *,
        grace_seconds: float,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self._emit = emit
        self._open = open_files
        self._settle = settle_seconds
        self._grace = grace_seconds
        self._clock = clock
        self._wall = wall_clock
        self._cond = threading.Condition()
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._recent: dict[str, tuple[tuple[int, int, int], float]] = {}  # path -> (sig, until)
        self._recent_order: deque[tuple[float, str]] = deque()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="bgsyncd-tracker", daemon=True)

    def start(self) -> None:
        """Start the tracker thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the tracker thread and wait for it."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    def alive(self) -> bool:
        """True while the tracker thread runs."""
        return self._thread.is_alive()

    def pending(self) -> int:
        """Files in progress."""
        with self._cond:
            return len(self._entries)

    def tracking(self, path: str) -> bool:
        """True when ``path`` is in progress."""
        with self._cond:
            return path in self._entries

    def first_emission(self, path: str, st: os.stat_result) -> bool:
        """Record an emission; False if this version of ``path`` was emitted moments ago.

        A settle check and a late Closed event can both find the same complete
        file; the second is not worth a sink call.
        """
        sig = _signature(st)
        with self._cond:
            now = self._clock()
            order = self._recent_order
            while order and order[0][0] <= now:
                _, old = order.popleft()
                if old in self._recent and self._recent[old][1] <= now:
                    del self._recent[old]
            if path in self._recent and self._recent[path][0] == sig:
                return False
            self._recent[path] = (sig, now + RECENT_SECONDS)
            order.append((now + RECENT_SECONDS, path))
            return True

    def note(self, kind: str, inbox: Inbox, path: str, rel: str) -> None:
        """Record what an observer saw at ``path``.

        ``kind``: ``created`` (no writer yet), ``opened``, ``modified``,
        ``ready`` (closed after writing, or renamed into place), ``settle``
        (a change where closes cannot be seen) or ``gone``.
        """
        with self._cond:
            now = self._clock()
            e = self._entries.get(path)
            if kind == "gone":
                self._entries.pop(path, None)
            elif e is None:
                if kind == "opened":
                    return  # readers open files too: only a creator's open means a writer
                mode, due = {
                    "created": (_Mode.CREATED, now + self._grace),
                    "modified": (_Mode.WRITING, now + self._settle),
                    "ready": (_Mode.READY, now),
                    "settle": (_Mode.SETTLE, now),  # looked at now: its mtime may settle it
                }[kind]
                self._schedule(self._add(inbox, path, rel, mode), due)
            elif kind == "modified" or (kind == "opened" and e.mode is _Mode.CREATED):
                self._change(e, _Mode.WRITING, now + self._settle)
            elif kind == "ready":
                self._change(e, _Mode.READY, now)
            elif kind == "settle" and e.mode is _Mode.SETTLE:
                self._change(e, _Mode.SETTLE, now)

    def scanned(self, inbox: Inbox, path: str, rel: str, st: os.stat_result) -> None:
        """A scan found a file that is recent or held open: wait for it to settle."""
        with self._cond:
            if path in self._entries:
                return  # already followed, by rules at least as strict
            now = self._clock()
            e = self._add(inbox, path, rel, _Mode.SETTLE)
            e.sig, e.since = _signature(st), now
            self._schedule(e, now + self._settle)

    # -- bookkeeping (lock held) -----------------------------------------------------

    def _add(self, inbox: Inbox, path: str, rel: str, mode: _Mode) -> _Entry:
        e = self._entries[path] = _Entry(inbox, path, rel, mode)
        return e

    def _change(self, e: _Entry, mode: _Mode, due: float) -> None:
        e.mode = mode
        e.gen += 1
        self._schedule(e, due)

    def _schedule(self, e: _Entry, due: float) -> None:
        # A later deadline is applied lazily when the earlier heap item pops,
        # so a busy writer's stream of Modified events costs no heap growth.
        e.due = due
        if due < e.heap_at:
            seq = next(self._seq)
            e.heap_seq, e.heap_at = seq, due
            heapq.heappush(self._heap, (due, seq, e.path))
            if self._heap[0][1] == seq:
                self._cond.notify()

    def _take_due(self) -> list[tuple[_Entry, int]]:
        now = self._clock()
        taken: list[tuple[_Entry, int]] = []
        while self._heap and self._heap[0][0] <= now and len(taken) < _BATCH:
            _, seq, path = heapq.heappop(self._heap)
            e = self._entries.get(path)
            if e is None or e.heap_seq != seq:
                continue  # superseded by an earlier deadline, or forgotten
            e.heap_seq, e.heap_at = -1, math.inf
            if e.due > now:
                self._schedule(e, e.due)
            else:
                taken.append((e, e.gen))
        return taken

    # -- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                taken = self._take_due()
                while not taken and not self._stopping:
                    timeout = self._heap[0][0] - self._clock() if self._heap else None
                    self._cond.wait(timeout)
                    taken = self._take_due()
                if self._stopping:
                    return
            for e, gen in taken:
                try:
                    self._look(e, gen)
                except Exception:
                    log.exception("watcher.track_failed", folder=e.inbox.name, path=e.relpath)

    def _look(self, e: _Entry, gen: int) -> None:
        """Decide about one due entry; the system calls happen outside the lock."""
        st = regular_file(e.inbox.root, e.relpath)
        due: float | None = None  # None: done with it (emitted, or dropped)
        sig, since = e.sig, e.since
        if st is not None and st.st_size > 0:
            now = self._clock()
            if e.mode is _Mode.CREATED:
                if self._open.holds(st.st_dev, st.st_ino):
                    sig, since, due = _signature(st), now, now + self._settle
            elif e.mode is not _Mode.READY:
                due, sig, since = self._settle_due(st, sig, since, now)
        with self._cond:
            if self._entries.get(e.path) is not e or e.gen != gen:
                return  # an event changed it meanwhile and scheduled it again
            if due is not None:
                if e.mode is _Mode.CREATED:
                    e.mode = _Mode.SETTLE  # moved in but still being written
                e.sig, e.since = sig, since
                self._schedule(e, due)
                return
            del self._entries[e.path]
        if st is not None and st.st_size > 0:
            self._emit(e.inbox, e.relpath, st)

    def _settle_due(
        self, st: os.stat_result, sig: tuple[int, int, int] | None, since: float, now: float
    ) -> tuple[float | None, tuple[int, int, int], float]:
        """(next look, or None if complete; signature; since) for a settling file."""
        fresh = _signature(st)
        if fresh != sig:
            sig, since = fresh, now
        # Unchanged for settle_seconds as we watched it, or by its own mtime.
        quiet = now - since >= self._settle or self._wall() - st.st_mtime_ns / 1e9 >= self._settle
        if not quiet:
            return since + self._settle, sig, since
        if self._open.holds(st.st_dev, st.st_ino):
            return now + self._settle, sig, since
        return None, sig, since


class _Handler(FileSystemEventHandler):
    """Routes one inbox's watchdog events to the watcher, on the observer thread."""

    def __init__(self, watcher: Watcher, inbox: Inbox) -> None:
        self._watcher = watcher
        self._inbox = inbox

    def dispatch(self, event: FileSystemEvent) -> None:
        """Handle ``event``; an error here must not kill the observer thread."""
        try:
            self._watcher.on_event(self._inbox, event)
        except Exception:
            log.exception("watcher.event_failed", folder=self._inbox.name)


class _OverflowHook(logging.Handler):
    """Asks for a rescan when watchdog reports that inotify dropped events."""

    def __init__(self, rescan: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self._rescan = rescan

    def emit(self, record: logging.LogRecord) -> None:
        """Request a rescan on watchdog's overflow warning."""
        if "overflow" in record.getMessage().lower():
            self._rescan()
