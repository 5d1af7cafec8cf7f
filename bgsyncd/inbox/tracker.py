"""The completeness tracker: files in progress, and when each becomes complete.

``Tracker`` owns the decision rules listed in ``watcher.py``'s docstring. The
watcher feeds it what observers and scans saw (``note``, ``scanned``); its own
thread sleeps until the next deadline, ``lstat``-s the due files outside the
lock, asks ``OpenForWriting`` whether a local process still holds one open for
writing, and calls ``emit`` with each complete file. It knows nothing of
watchdog: events reach it as plain ``kind`` strings.

Memory is bounded: at most ``max_entries`` files are in progress. Above that,
events for new paths are dropped and a rescan is asked for (``on_dropped``)
once the tracker has drained to three quarters of the cap -- the same cure as
an inotify overflow, and the scan is streaming. A scan that finds a recent
file while the tracker is full waits for room (up to ``room_wait`` seconds),
so a burst found by a scan is handed over as fast as files complete.
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

from bgsyncd.errors import BgsyncdError
from bgsyncd.inbox.openfiles import OpenForWriting
from bgsyncd.inbox.scanner import Inbox, regular_file
from bgsyncd.logs import get_logger

# The watcher's logger name, as the scanner's: operators filter on one name.
log = get_logger("bgsyncd.watcher")

RECENT_SECONDS = 2.0  # an emission this recent is not repeated for the same version
MAX_ENTRIES = 20_000  # files in progress at most (~0.5 KB each); more are left to a rescan
WRITER_QUIET_SECONDS = 300.0
ROOM_WAIT_SECONDS = 10.0  # a scan waits this long for room before leaving files to a rescan
_BATCH = 256  # due entries taken per lock hold, so observers are not held back


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class _Mode(enum.Enum):
    CREATED = "created"  # appeared; no writer seen yet
    WRITING = "writing"  # a writer was seen: wait for Closed (settle only if it was lost)
    SETTLE = "settle"  # closes cannot be seen: wait for settle_seconds of quiet
    READY = "ready"  # complete: emit at once


@dataclass(eq=False, slots=True)
class _Entry:
    """One file in progress; changed only under the tracker's lock. Slots, no stored
    relative path: about 0.5 KB with its key and heap item, ``MAX_ENTRIES`` at most."""

    inbox: Inbox
    path: str  # the same str object as its key in ``Tracker._entries``
    mode: _Mode
    due: float = 0.0  # when to look at it next
    sig: tuple[int, int, int] | None = None  # (size, mtime_ns, inode) last seen
    since: float = 0.0  # when ``sig`` was first seen
    gen: int = 0  # bumped by events: a look that began before is stale
    heap_seq: int = -1  # its live heap item, if any
    heap_at: float = math.inf

    @property
    def relpath(self) -> str:
        """The path relative to the inbox."""
        return self.path[len(self.inbox.root) + 1 :]


class Tracker:
    """Files in progress, keyed by path; its thread emits each when complete.

    Memory is O(files in progress), at most ``max_entries`` of them. The
    thread sleeps on a Condition until the next deadline; observers and scans
    add or update entries from their threads. ``on_dropped`` is called (under
    the tracker's lock: it must only flag) when files left out for lack of
    room should be looked for again.
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
        max_entries: int = MAX_ENTRIES,
        on_dropped: Callable[[], None] = lambda: None,
        room_wait: float = ROOM_WAIT_SECONDS,
        writer_quiet: float = WRITER_QUIET_SECONDS,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._emit = emit
        self._open = open_files
        self._settle = settle_seconds
        # A writer was seen and its close was not (yet): wait much longer than
        # settle_seconds before trusting quiet alone. Under the hardened unit the
        # /proc check cannot see other users' writers, and a paused scp or SMB
        # copy must not be read half-written.
        self._writer_quiet = max(settle_seconds, writer_quiet)
        self._grace = grace_seconds
        self._clock = clock
        self._wall = wall_clock
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # the thread's next deadline
        self._room = threading.Condition(lock)  # a scan waiting for the tracker to drain
        self._room_waiters = 0
        self._max = max_entries
        self._low = max_entries * 3 // 4
        self._dropped = False  # files were left out; a rescan is due once drained to _low
        self._on_dropped = on_dropped
        self._room_wait = room_wait
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._recent: dict[str, tuple[tuple[int, int, int], float]] = {}  # path -> (sig, until)
        self._recent_order: deque[tuple[float, str]] = deque()
        self._emitting: set[str] = set()  # being handed on now, by this thread or a scan
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
            self._room.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    def alive(self) -> bool:
        """True while the tracker thread runs."""
        return self._thread.is_alive()

    def pending(self) -> int:
        """Files in progress, plus one while files left out wait for their rescan."""
        with self._cond:
            return len(self._entries) + (1 if self._dropped else 0)

    def begin_scan_emit(self, path: str) -> bool:
        """A scan found ``path`` complete: may it hand it on now? Not while it is in
        progress or being handed on by the tracker (then ``done_emitting``)."""
        with self._cond:
            if path in self._entries or path in self._emitting:
                return False
            self._emitting.add(path)
            return True

    def done_emitting(self, path: str) -> None:
        """``path``'s hand-over to ``emit`` or ``sink`` is over."""
        with self._cond:
            self._emitting.discard(path)

    def first_emission(self, path: str, st: os.stat_result) -> bool:
        """Record an emission; False if this version of ``path`` was emitted moments ago
        (a settle check and a late Closed event can both find the same complete file)."""
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

    def forget_emitted(self, path: str, *, tracked: bool = False) -> None:
        """``path`` (a file, or a folder and all below it) left or was replaced.

        Its emissions are void: a file that comes back (its folder moved out and
        in again, its job forgotten meanwhile as vanished) is emitted again at
        once, even in the same version and within ``RECENT_SECONDS``. With
        ``tracked`` (a folder appeared or left) the files followed below it are
        dropped too: what they were waiting for happened elsewhere, and the
        observer's synthetic events or a scan bring back those that are here.
        """
        below = path + "/"
        with self._cond:
            for old in [p for p in self._recent if p == path or p.startswith(below)]:
                del self._recent[old]
            if tracked:
                gone = [p for p in self._entries if p.startswith(below)]
                for old in gone:
                    del self._entries[old]
                if gone:
                    self._removed()

    def note(self, kind: str, inbox: Inbox, path: str) -> None:
        """Record what an observer saw at ``path`` (absolute, under ``inbox``).

        ``kind``: ``created`` (no writer yet), ``opened``, ``modified``,
        ``ready`` (closed after writing, or renamed into place), ``settle``
        (a change where closes cannot be seen) or ``gone``. Paths outside
        the inbox's rules are ignored; a new path finds no room when full.
        """
        with self._cond:
            e = self._entries.get(path)
            if e is None:
                if kind in {"gone", "opened"}:
                    return  # readers open files too: only a creator's open means a writer
                # Checked only for new paths: most events are for files followed already.
                if inbox.relpath(path) is None:
                    return
                if len(self._entries) >= self._max:
                    self._dropped = True  # found again by the rescan once drained
                    return
                now = self._clock()
                if kind == "created":
                    mode, due = _Mode.CREATED, now + self._grace
                elif kind == "modified":
                    mode, due = _Mode.WRITING, now + self._settle
                elif kind == "ready":
                    mode, due = _Mode.READY, now
                else:  # settle: looked at now, its mtime may settle it
                    mode, due = _Mode.SETTLE, now
                e = self._entries[path] = _Entry(inbox, path, mode)
                self._schedule(e, due)
            elif kind == "gone":
                del self._entries[path]
                self._removed()
            elif kind == "modified" or (kind == "opened" and e.mode is _Mode.CREATED):
                self._change(e, _Mode.WRITING, self._clock() + self._settle)
            elif kind == "ready":
                self._change(e, _Mode.READY, self._clock())
            elif kind == "settle" and e.mode is _Mode.SETTLE:
                self._change(e, _Mode.SETTLE, self._clock())

    def events_lost(self) -> None:
        """inotify dropped events: a writer's close may be among them, so files
        waiting for one fall back to settle_seconds of quiet."""
        with self._cond:
            now = self._clock()
            for e in self._entries.values():
                if e.mode is _Mode.WRITING:
                    self._change(e, _Mode.SETTLE, now)

    def scanned(self, inbox: Inbox, path: str, st: os.stat_result) -> bool:
        """A scan found a file that is recent or held open: wait for it to settle.

        When full, waits for room (never while files already wait for a
        rescan, which will find this one too). False if it was left out.
        """
        with self._cond:
            if path in self._entries:
                return True  # already followed, by rules at least as strict
            if len(self._entries) >= self._max and not self._wait_for_room():
                self._dropped = True
                return False
            now = self._clock()
            e = self._entries[path] = _Entry(inbox, path, _Mode.SETTLE)
            e.sig, e.since = _signature(st), now
            self._schedule(e, now + self._settle)
            return True

    # -- bookkeeping (lock held) -----------------------------------------------------

    def _wait_for_room(self) -> bool:
        if self._dropped:
            return False  # a rescan is due anyway: do not hold the scan back
        deadline = self._clock() + self._room_wait
        self._room_waiters += 1
        try:
            while len(self._entries) >= self._max and not self._stopping:
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._room.wait(left)
        finally:
            self._room_waiters -= 1
        return not self._stopping

    def _removed(self) -> None:
        """After an entry left: wake a waiting scan; ask for the rescan once drained."""
        if self._room_waiters:
            self._room.notify_all()
        if self._dropped and len(self._entries) <= self._low:
            self._dropped = False
            self._on_dropped()

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
                except (OSError, BgsyncdError):
                    # The file or the database failed us (EMFILE, EIO): looked at again
                    # later, never left out. Anything else is a bug and ends the thread.
                    log.exception("watcher.track_failed", folder=e.inbox.name, path=e.relpath)
                    with self._cond:
                        if self._entries.get(e.path) is e and e.gen == gen:
                            self._schedule(e, self._clock() + self._settle)

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
                need = self._writer_quiet if e.mode is _Mode.WRITING else self._settle
                due, sig, since = self._settle_due(st, sig, since, now, need)
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
            self._removed()
            emit = st is not None and st.st_size > 0 and e.path not in self._emitting
            if emit:  # a scan handing it on right now would make two
                self._emitting.add(e.path)
        if emit and st is not None:
            try:
                self._emit(e.inbox, e.relpath, st)
            finally:
                self.done_emitting(e.path)

    def _settle_due(
        self,
        st: os.stat_result,
        sig: tuple[int, int, int] | None,
        since: float,
        now: float,
        need: float,
    ) -> tuple[float | None, tuple[int, int, int], float]:
        """(next look, or None if complete; signature; since); ``need``: the quiet time."""
        fresh = _signature(st)
        if fresh != sig:
            sig, since = fresh, now
        # Unchanged for `need` seconds as we watched it, or by its own mtime.
        quiet = now - since >= need or self._wall() - st.st_mtime_ns / 1e9 >= need
        if not quiet:
            return since + need, sig, since
        if self._open.holds(st.st_dev, st.st_ino):
            return now + self._settle, sig, since
        return None, sig, since
