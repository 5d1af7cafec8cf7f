"""Scanning inboxes: which names count, and a streaming walk that never follows a link.

``Scanner`` walks every inbox in the caller's thread at start-up, then in its
own thread every ``rescan_interval`` seconds and whenever asked (SIGHUP, an
inotify overflow: every inbox; an inbox that came back: that one): the
reconciliation that catches what events missed. An inbox that is down (see
``roots.py``) is skipped, and every walk starts from the root's held
descriptor (``rootfd``), never following a symlink at any level.

Ignored, never queued: any path component starting with "." (dotfiles, dot
folders, rsync's ``.name.XXXXXX`` temp files), the usual temp names
(``*.part``, ``*.crdownload``, ``*.tmp``, ``*~``, ``*.swp``, case-insensitive),
and a folder's ``ignore`` globs. A glob is matched (``fnmatchcase``, so ``*``
also crosses "/") against the file's path relative to the inbox, against its
name, and against the relative path and the name of every folder it is in:
``*.raw`` ignores ``a/b.raw``; ``scratch`` ignores everything under any folder
named ``scratch``; ``raw/*`` ignores everything under the top-level ``raw``.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from bgsyncd.errors import BgsyncdError
from bgsyncd.files import fsops
from bgsyncd.logs import get_logger

log = get_logger("bgsyncd.watcher")

TEMP_SUFFIXES = (".part", ".crdownload", ".tmp", "~", ".swp")

# O_NOFOLLOW: a folder swapped for a symlink between listing and opening is
# refused rather than followed out of the inbox.
_DIR_FLAGS = fsops.DIR_FLAGS


class IgnoreRules:
    """The built-in temp-file rules plus one folder's ``ignore`` globs."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        pats = [p for p in patterns if p]
        # One combined regex: a single match call per candidate, whatever the count.
        joined = "|".join(f"(?:{fnmatch.translate(p)})" for p in pats)
        self._glob = re.compile(joined) if pats else None

    def ignored(self, relpath: str) -> bool:
        """True when the file at ``relpath`` ("/"-separated) is never queued."""
        parts = relpath.split("/")
        name = parts[-1]
        if name.lower().endswith(TEMP_SUFFIXES):
            return True
        if not _utf8(relpath):
            return True
        return self._ignored_parts(parts)

    def ignored_dir(self, relpath: str) -> bool:
        """True when nothing under the folder ``relpath`` is ever queued."""
        return self._ignored_parts(relpath.split("/"))

    def _ignored_parts(self, parts: list[str]) -> bool:
        if any(p.startswith(".") or not p for p in parts):
            return True
        glob = self._glob
        if glob is None:
            return False
        prefix = ""
        for part in parts:
            prefix = f"{prefix}/{part}" if prefix else part
            if glob.match(part) or glob.match(prefix):
                return True
        return False


_warned: set[str] = set()


def _utf8(relpath: str) -> bool:
    """Names that are not valid UTF-8 (SMB shares, old zip files) cannot be stored
    or logged faithfully: they are skipped, with one warning per name."""
    try:
        relpath.encode("utf-8")
    except UnicodeEncodeError:
        shown = relpath.encode("utf-8", "backslashreplace").decode("ascii", "replace")
        if shown not in _warned and len(_warned) < 10_000:
            _warned.add(shown)
            log.warning("file.bad_name", path=shown, note="not valid UTF-8; rename it")
        return False
    return True


@dataclass(frozen=True)
class Inbox:
    """One watched folder as the watcher sees it."""

    name: str
    root: str
    recursive: bool
    polling: bool
    rules: IgnoreRules

    def relpath(self, path: str) -> str | None:
        """``path`` relative to the inbox, or None if outside, too deep or ignored."""
        prefix = self.root + "/"
        if not path.startswith(prefix):
            return None
        rel = path[len(prefix) :]
        if not self.recursive and "/" in rel:
            return None
        return None if self.rules.ignored(rel) else rel


def regular_file(root: str, rel: str) -> os.stat_result | None:
    """``lstat`` of ``root/rel`` if it is a regular file reached through real folders.

    Walked from the root by directory descriptors (``fsops``): a folder on the
    way swapped for a symlink, even mid-walk, gives None, never a file outside.
    """
    return fsops.regular_stat(root, rel)


def walk(root: str, recursive: bool, rules: IgnoreRules) -> Iterator[tuple[str, os.stat_result]]:
    """Yield ``(relpath, lstat)`` for each regular, non-ignored file under ``root``.

    Streaming: only the folders still to visit are held, never the file list.
    Symlinks (to files or folders) are skipped, never followed; unreadable or
    vanished folders are skipped silently (the next scan tries again).
    """
    try:
        # The root's held descriptor: a root, or a folder above it, swapped
        # for a symlink is a lost folder, not a way out.
        root_fd = fsops.open_root(root)
    except OSError:
        return
    try:
        pending = [""]
        while pending:
            rel = pending.pop()
            try:
                fd = _open_below(root_fd, rel)
            except OSError:
                continue
            try:
                yield from _walk_one(fd, rel, recursive, rules, pending)
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)


def _open_below(root_fd: int, rel: str) -> int:
    """A new descriptor of the folder ``rel`` under ``root_fd``, one real folder at a time."""
    fd = os.open(".", _DIR_FLAGS, dir_fd=root_fd)
    for part in rel.split("/") if rel else ():
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


def _walk_one(
    fd: int, rel: str, recursive: bool, rules: IgnoreRules, pending: list[str]
) -> Iterator[tuple[str, os.stat_result]]:
    try:
        entries = os.scandir(fd)
    except OSError:
        return
    with entries:
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive and not rules.ignored_dir(child):
                        pending.append(child)
                    continue
                # Names first: an ignored file costs no system call.
                if rules.ignored(child):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield child, st


class Scanner:
    """Walks the inboxes and passes each file found to ``found``.

    ``is_up(inbox)`` says whether an inbox is there and watched; one that is
    not is skipped (it is scanned when it comes back).
    """

    def __init__(
        self,
        inboxes: Iterable[Inbox],
        found: Callable[[Inbox, str, os.stat_result], None],
        interval: float,
        is_up: Callable[[Inbox], bool] = lambda inbox: True,
    ) -> None:
        self._inboxes = tuple(inboxes)
        self._found = found
        self._interval = interval
        self._is_up = is_up
        self._lock = threading.Lock()
        self._wanted: set[str] = set()  # inboxes asked for by name since the last scan
        self._all = False  # a scan of every inbox was asked for
        self._requested = threading.Event()
        self._stopping = threading.Event()
        self._scanning = False
        self._thread = threading.Thread(target=self._run, name="bgsyncd-scan", daemon=True)

    def scan(self, inboxes: Iterable[Inbox] | None = None) -> int:
        """Walk ``inboxes`` (default: all) that are up, in this thread; return the files seen."""
        seen = 0
        for inbox in self._inboxes if inboxes is None else inboxes:
            if not self._is_up(inbox):
                continue
            for rel, st in walk(inbox.root, inbox.recursive, inbox.rules):
                if self._stopping.is_set():
                    return seen
                seen += 1
                self._found(inbox, rel, st)
        return seen

    def start(self) -> None:
        """Start the periodic scans."""
        self._thread.start()

    def request(self, inbox: Inbox | None = None) -> None:
        """Ask for a scan of ``inbox`` (default: every inbox) soon; returns at once."""
        with self._lock:
            if inbox is None:
                self._all = True
            else:
                self._wanted.add(inbox.name)
        self._requested.set()

    def busy(self) -> bool:
        """True while a scan is requested or running."""
        return self._scanning or self._requested.is_set()

    def alive(self) -> bool:
        """True while the scan thread runs."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Abandon any scan and stop the thread."""
        self._stopping.set()
        self._requested.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        # A timed wait, not a poll: an idle daemon sleeps here for the interval.
        while not self._stopping.is_set():
            asked = self._requested.wait(self._interval)
            if self._stopping.is_set():
                return
            self._scanning = True
            # Cleared before the wishes are taken: a request made meanwhile
            # sets it again and is served by the next round, never lost.
            self._requested.clear()
            with self._lock:
                every = self._all or not asked  # the interval ran out: the periodic scan
                wanted, self._wanted, self._all = self._wanted, set(), False
            try:
                self.scan(None if every else [i for i in self._inboxes if i.name in wanted])
            except (OSError, BgsyncdError):  # anything else is a bug: the supervisor exits 1
                log.exception("watcher.scan_failed")
            finally:
                self._scanning = False
