"""The completeness tracker: files in progress, and when each becomes complete.

``Tracker`` owns the decision rules listed in ``watcher.py``'s docstring. The
watcher feeds it what observers and scans saw (``note``, ``scanned``); its own
thread sleeps until the next deadline, ``lstat``-s the due files outside the
lock, asks ``OpenForWriting`` whether a local process still holds one open for
writing, and calls ``emit`` with each complete file. It knows nothing of
watchdog: events reach it as plain ``kind`` strings.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from bgsyncd.logs import get_logger
from bgsyncd.openfiles import OpenForWriting
from bgsyncd.scanner import Inbox, regular_file

# The watcher's logger name, as the scanner's: operators filter on one name.
log = get_logger("bgsyncd.watcher")

RECENT_SECONDS = 2.0  # an emission this recent is not repeated for the same version
_BATCH = 256  # due entries taken per lock hold, so observers are not held back


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
