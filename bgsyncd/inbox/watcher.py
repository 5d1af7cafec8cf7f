"""Finding complete files in the inboxes (the only module that imports watchdog).

One watchdog observer for all inotify inboxes and one for all polled inboxes
(each inbox a watch scheduled on it: one dispatch thread, not one per inbox)
feed a tracker keyed by path (``tracker.py``); the tracker thread decides
when a file is complete and hands it to ``sink``:

- inotify ``Closed`` (IN_CLOSE_WRITE) or a rename inside the inbox: complete now.
- ``Created`` with no open or write within ``grace_seconds``: moved in whole
  (``mv`` from outside the tree) -- complete unless a local process holds it
  open for writing.
- ``Opened`` by its creator, or ``Modified``: being written; wait for ``Closed``
  however long the writer pauses. Should the ``Closed`` be lost (an overflow:
  watchdog 7's ``EventsLostEvent``, in order behind the events read before it,
  or watchdog's warning), it is complete once unchanged for ``settle_seconds``.
- Found by a scan, created inside a folder that just appeared (watchdog
  synthesises those events, without closes), or anything in a polled folder:
  complete after ``settle_seconds`` without change and not held open for
  writing. A file whose mtime is already that old needs only the open check.

Files are ``lstat``-ed again just before they are emitted, and the fresh
values sent. Zero-byte files are never emitted (a placeholder is not an
image). Symlinks, folders, FIFOs, sockets and devices are never emitted,
nothing in an inbox is opened, no link is followed; memory: ``tracker.py``.

Roots are resolved (``realpath``) when the watcher is made. An inbox that
disappears or is replaced (deleted and made again, unmounted and mounted
again, swapped for a symlink) is noticed by ``roots.RootGuard`` within
``check_interval`` seconds: ``folder.lost``, its dead watch dropped, and
while it is down its events and scans are ignored; once a folder is there
again it is watched anew, ``folder.restored``, and scanned at once.
``on_folder(name, up)`` is told each change (``bgsyncd_folder_up``; 0.5: ``limits``).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import cast

import watchdog.events
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
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
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserverVFS

from bgsyncd.config.schema import FolderSettings
from bgsyncd.inbox.limits import Limits, out_of_watches
from bgsyncd.inbox.openfiles import OpenForWriting
from bgsyncd.inbox.roots import CHECK_SECONDS, Missing, RootGuard, look
from bgsyncd.inbox.scanner import IgnoreRules, Inbox, Scanner
from bgsyncd.inbox.tracker import MAX_ENTRIES, Tracker
from bgsyncd.logs import get_logger
from bgsyncd.storage.contract import Found

log = get_logger("bgsyncd.watcher")

GRACE_SECONDS = 0.25  # a Created with no open/write this soon after was moved in whole
FRESH_DIR_SECONDS = 2.0  # Created events this soon after their folder appeared may be synthesised
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
    DirDeletedEvent,  # the root itself: watchdog's last word before its watch ends
]
_LOST: type[FileSystemEvent] = getattr(watchdog.events, "EventsLostEvent", DirDeletedEvent)
_EVENT_TYPES.append(_LOST)  # watchdog 6 has none (it only logs an overflow): a repeat
# What each plain file event tells the tracker (inotify; polled folders only "settle").
_KINDS: dict[type[FileSystemEvent], str] = {
    FileCreatedEvent: "created",
    FileOpenedEvent: "opened",
    FileModifiedEvent: "modified",
    FileClosedEvent: "ready",
}


class Watcher:
    """Watches every inbox and calls ``sink`` with each file once it is complete.

    ``sink`` and ``is_unchanged`` are called from the watcher's threads (and
    from the caller's during ``start``); both must be cheap and thread-safe.
    ``poll_interval`` is the polling observers' period, ``wall_clock`` the
    clock that file mtimes are compared with, ``grace_seconds`` how long a new
    file may go without an open or write before it counts as moved in whole,
    ``max_in_progress`` how many files may be followed at once (memory bound;
    more are left to a rescan), ``check_interval`` how often every root is
    looked at (a lost or replaced inbox), ``on_folder(name, up)`` what is told
    when an inbox goes down (0), comes back (1) or is polled for want of
    inotify watches (0.5), from the watcher's threads and at ``start``.
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
        max_in_progress: int = MAX_ENTRIES,
        check_interval: float = CHECK_SECONDS,
        on_folder: Callable[[str, float], None] = lambda name, up: None,
    ) -> None:
        self._inboxes = [
            Inbox(
                f.name or os.path.basename(os.path.abspath(f.inbox)),
                # Resolved once: a root later replaced by a symlink is a lost folder.
                os.path.realpath(f.inbox),
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
            max_entries=max_in_progress,
            on_dropped=self.rescan,
        )
        self._limits = Limits(
            self._inboxes,
            events_lost=self._events_lost,
            is_up=lambda inbox: self._guard.up(inbox),  # noqa: PLW0108 (made below)
            watch=self._watch,
            unwatch=self._unwatch,
            scan=self._scan_inbox,
            report=on_folder,
            watched=lambda inbox: self._watches.get(inbox.name),
        )
        self._guard = RootGuard(
            self._inboxes,
            watch=self._watch,
            unwatch=self._unwatch,
            watch_alive=self._watch_alive,
            scan=self._scan_inbox,
            report=self._limits.report,
            interval=check_interval,
        )
        self._scanner = Scanner(self._inboxes, self._scanned, rescan_interval, self._guard.up)
        self._fresh: dict[str, float] = {}  # new folder -> until when its files count as scanned
        self._fresh_lock = threading.Lock()
        self._stopping = threading.Event()
        self._observers: list[BaseObserver] = []
        self._observer_for: dict[bool, BaseObserver] = {}  # polling? -> its observer
        self._watches: dict[str, tuple[BaseObserver, ObservedWatch]] = {}  # by inbox name

    def start(self) -> int:
        """Start observers and threads, run the start-up scan; return the files seen.

        The start-up scan runs in the caller's thread, so ``sink`` is called
        from it too until ``start`` returns.
        """
        self._tracker.start()
        try:
            self._limits.listen()
            for inbox in self._inboxes:
                self._first_watch(inbox)  # its observer started on first need
        except OSError:
            self.stop()
            raise
        seen = self._scanner.scan()
        self._scanner.start()
        self._guard.start()
        return seen

    def _events_lost(self) -> None:
        self._tracker.events_lost()
        self.rescan()

    def rescan(self) -> None:
        """Ask for a reconciliation scan of every inbox; returns at once."""
        self._scanner.request()

    def alive(self) -> bool:
        """True while every observer, the tracker, the scanner and the root guard run.

        A watch whose folder went away ends with it; the guard sees to the
        watches (a lost folder is ``bgsyncd_folder_up`` 0, not a dead daemon).
        """
        if not (self._scanner.alive() and self._tracker.alive() and self._guard.alive()):
            return False
        return all(o.is_alive() for o in self._observers)

    def pending(self) -> int:
        """Files seen but not yet complete, plus one while a scan is due or running."""
        return self._tracker.pending() + (1 if self._scanner.busy() else 0)

    def stop(self) -> None:
        """Stop observers and threads and wait for them."""
        self._stopping.set()
        self._limits.stop()
        self._guard.stop()  # first: it must not set up watches on stopping observers
        self._tracker.stop()  # first: it wakes a scan waiting for the tracker to drain
        self._scanner.stop()
        for observer in self._observers:
            observer.stop()  # also stops an inotify observer's reader, started or not
        for observer in self._observers:
            if observer.is_alive():
                observer.join()

    def _running(self, polling: bool) -> BaseObserver:
        """The started observer of that kind, made on first need."""
        observer = self._observer_for.get(polling)
        if observer is None:
            if polling:
                # lstat: a symlink is never followed. watchdog 6 types the interval int.
                interval = cast(int, self._poll_interval)
                observer = PollingObserverVFS(os.lstat, os.scandir, polling_interval=interval)
            else:
                observer = Observer()
            self._observers.append(observer)  # stopped by stop() whatever happens next
            self._observer_for[polling] = observer
            observer.start()
        return observer

    def _first_watch(self, inbox: Inbox) -> None:
        """Watch ``inbox`` at start; raise naming the inbox when it cannot be watched."""
        seen = look(inbox.root)
        if isinstance(seen, Missing):
            raise OSError(errno.ENOENT, f"cannot watch {inbox.root}: {seen.reason}")
        try:
            self._watch(inbox)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot watch {inbox.root}: {exc.strerror}") from exc
        self._guard.watching(inbox, seen)

    def _watch(self, inbox: Inbox) -> None:
        """Set up the watch of ``inbox`` (raises ``OSError``); poll it if inotify cannot."""
        with self._limits.lock:
            polled = self._limits.polled(inbox)
            observer = self._running(polled)
            try:
                # On a running observer the watch starts at once: a failure is raised here.
                watch = observer.schedule(
                    _Handler(self, inbox, polled),
                    inbox.root,
                    recursive=inbox.recursive,
                    event_filter=_EVENT_TYPES,
                )
            except OSError as exc:
                if polled or not out_of_watches(exc):
                    raise
                self._limits.degrade(inbox, exc.strerror or str(exc))
                self._watch(inbox)  # polled now
                return
            self._watches[inbox.name] = (observer, watch)

    def _unwatch(self, inbox: Inbox) -> None:
        """Drop the watch of ``inbox``, dead or alive; nothing if it has none."""
        with self._limits.lock:
            held = self._watches.pop(inbox.name, None)
        if held is None:
            return
        observer, watch = held
        try:
            observer.unschedule(watch)
        except (KeyError, OSError) as exc:  # the kernel may have dropped it already
            log.debug("folder.unwatch_failed", folder=inbox.name, error=repr(exc))

    def _watch_alive(self, inbox: Inbox) -> bool:
        """True while the watch of ``inbox`` is set up and its emitter thread runs."""
        with self._limits.lock:  # not between the two halves of a switch to polling
            observer, watch = self._watches.get(inbox.name, (None, None))
        emitters = list(observer.emitters) if observer is not None else []
        return any(e.watch is watch and e.is_alive() for e in emitters)

    def _scan_inbox(self, inbox: Inbox) -> None:
        self._scanner.request(inbox)

    def _scanned(self, inbox: Inbox, rel: str, st: os.stat_result) -> None:
        """Route one file found by a scan: skip, emit now, or let it settle."""
        if st.st_size == 0 or self._stopping.is_set():
            return
        if self._is_unchanged(inbox.name, rel, st.st_size, st.st_mtime_ns, st.st_ino):
            return
        path = f"{inbox.root}/{rel}"
        # Its own mtime says it has been quiet for settle_seconds already.
        quiet = self._wall() - st.st_mtime_ns / 1e9 >= self._settle
        if quiet and not self._open.holds(st.st_dev, st.st_ino):
            if self._tracker.begin_scan_emit(path):  # never while the tracker emits it
                try:
                    self._sink(_found(inbox, rel, st))
                finally:
                    self._tracker.done_emitting(path)
            return
        self._tracker.scanned(inbox, path, st)

    def on_event(self, inbox: Inbox, event: FileSystemEvent, polled: bool) -> None:
        """Feed one watchdog event for ``inbox`` to the tracker (observer thread).

        Cheap first: the tracker checks a path's rules only for a new path."""
        if self._stopping.is_set() or not self._guard.up(inbox):
            return  # a lost inbox: whatever its dying watch still says is not ours
        src = os.fsdecode(event.src_path)
        kind = _KINDS.get(type(event))
        if kind is not None:
            if polled:
                kind = "settle"  # no opens or closes are seen when polling
            elif kind == "created" and (
                event.is_synthetic or (self._fresh and self._in_fresh_dir(src))
            ):
                kind = "settle"
            self._tracker.note(kind, inbox, src)
        elif isinstance(event, (FileMovedEvent, FileDeletedEvent)):
            self._tracker.note("gone", inbox, src)
            self._tracker.forget_emitted(src)
            dest = os.fsdecode(event.dest_path)
            if dest:  # renamed into place: rsync's temp file, a browser's download
                self._tracker.note("settle" if polled else "ready", inbox, dest)
        elif isinstance(event, (DirCreatedEvent, DirMovedEvent)):
            dest = os.fsdecode(event.dest_path) or src
            if isinstance(event, DirMovedEvent):
                self._tracker.forget_emitted(src, tracked=True)  # what was there has left
            self._limits.new_folder(inbox, dest, event.is_synthetic)  # watchdog 6's gaps
            # A folder arrived: start afresh (polled, its files came first: keep them).
            self._tracker.forget_emitted(dest, tracked=not polled)
            self._fresh_dir(dest)
        elif isinstance(event, DirDeletedEvent):
            self._tracker.forget_emitted(src, tracked=True)
            if src == inbox.root:
                self._guard.check_soon()  # the watch ends with its folder: look now
        elif isinstance(event, _LOST):
            self._events_lost()  # after the Modified read before it: its Closed is lost

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
        if not self._guard.still_watched(inbox):
            return  # the root was swapped meanwhile: found again when it is back
        if self._tracker.first_emission(f"{inbox.root}/{rel}", st):
            self._sink(_found(inbox, rel, st))


def _found(inbox: Inbox, rel: str, st: os.stat_result) -> Found:
    return Found(inbox.name, rel, st.st_size, st.st_mtime_ns, st.st_ino)


class _Handler(FileSystemEventHandler):
    """Routes one inbox's watchdog events to the watcher, on the observer thread."""

    def __init__(self, watcher: Watcher, inbox: Inbox, polled: bool) -> None:
        self._watcher = watcher
        self._inbox = inbox
        self._polled = polled

    def dispatch(self, event: FileSystemEvent) -> None:
        """Handle ``event``; an error here must not kill the observer thread."""
        try:
            self._watcher.on_event(self._inbox, event, self._polled)
        except Exception:
            log.exception("watcher.event_failed", folder=self._inbox.name)
