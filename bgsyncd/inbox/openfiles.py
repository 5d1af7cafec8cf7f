"""Which files under the inboxes a local process holds open for writing (Linux /proc).

Where closes cannot be seen (polling, files found by a scan) a quiet file is
complete only if no local process still holds it open for writing. The check
reads ``/proc/<pid>/fd/*`` (readlink) and, for links into an inbox, the flags
in ``/proc/<pid>/fdinfo/<fd>``. One walk of /proc answers for every file,
so the result is a set of ``(st_dev, st_ino)`` reused for ``max_age`` seconds.

Processes we may not read (another user's, without privileges) are skipped
silently: their writers are invisible, and settle time is all that guards
against them. Off Linux the set is always empty.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable

_ACCMODE = 0o3  # O_ACCMODE: the low two bits say read-only, write-only or read-write


class OpenForWriting:
    """Answers "does a local process hold this file open for writing?"."""

    def __init__(
        self,
        roots: Iterable[str],
        *,
        max_age: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        proc: str = "/proc",
    ) -> None:
        # /proc shows resolved paths, so compare against the resolved inbox roots.
        self._prefixes = tuple(os.path.realpath(r).rstrip("/") + "/" for r in roots)
        self._max_age = max_age
        self._clock = clock
        self._proc = proc
        self._supported = os.path.isdir(os.path.join(proc, "self", "fd"))
        self._lock = threading.Lock()
        self._taken = -float("inf")
        self._held: frozenset[tuple[int, int]] = frozenset()

    def holds(self, dev: int, ino: int) -> bool:
        """True when some readable local process has ``(dev, ino)`` open for writing."""
        return (dev, ino) in self.snapshot()

    def snapshot(self) -> frozenset[tuple[int, int]]:
        """The ``(st_dev, st_ino)`` of inbox files open for writing, at most ``max_age`` old."""
        if not self._supported or not self._prefixes:
            return frozenset()
        with self._lock:
            now = self._clock()
            if now - self._taken >= self._max_age:
                self._held = frozenset(self._walk())
                # Stamp after the walk: a slow walk must not make its result look older.
                self._taken = self._clock()
            return self._held

    def _walk(self) -> Iterable[tuple[int, int]]:
        try:
            procs = os.scandir(self._proc)
        except OSError:
            return
        with procs:
            pids = [p.name for p in procs if p.name.isdigit()]
        for pid in pids:
            yield from self._process(os.path.join(self._proc, pid))

    def _process(self, base: str) -> Iterable[tuple[int, int]]:
        fd_dir = os.path.join(base, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to read
            return
        for fd in fds:
            link = os.path.join(fd_dir, fd)
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if not target.startswith(self._prefixes):
                continue
            try:
                if not _writable(os.path.join(base, "fdinfo", fd)):
                    continue
                # stat through the magic link reaches the open file itself,
                # even if it was renamed since; it is inside an inbox.
                st = os.stat(link)
            except OSError:
                continue
            yield (st.st_dev, st.st_ino)


def _writable(fdinfo: str) -> bool:
    with open(fdinfo, encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("flags:"):
                mode = int(line.split()[1], 8) & _ACCMODE
                return mode in (os.O_WRONLY, os.O_RDWR)
    return False
