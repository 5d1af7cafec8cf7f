"""Inbox roots: is each one there, and is it the folder being watched?

An inbox can disappear or be replaced under a running daemon: deleted and
made again, unmounted and mounted again, swapped for a symlink. An inotify
watch dies with the folder it was set on (``IN_DELETE_SELF`` or
``IN_UNMOUNT``, then ``IN_IGNORED``) and never follows a new folder of the
same name; a polling emitter stops when its folder vanishes. So
:class:`RootGuard` looks at every root every ``interval`` seconds (and at
once when asked): :func:`look` says what is there, :func:`judge` decides,
and the guard acts through the watcher's callbacks -- drop the dead watch,
set up a new one, scan the folder -- and reports each inbox up or down.

A root is looked at through a path with no symlink at any level
(:mod:`bgsyncd.files.rootfd`): an inbox whose root, or a folder above it, was
swapped for a symlink is lost, never followed, and comes back only once a
real folder is there again. A folder is the one watched when its
``(st_dev, st_ino)`` is the one recorded when its watch was set up. A root
that was a mount point and is no longer one (its ``st_dev`` is its
parent's) is unmounted: down, not a new folder to watch, so files dropped
into the bare mount point are not taken for the share's.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bgsyncd.errors import describe_os_error
from bgsyncd.files import rootfd
from bgsyncd.inbox.scanner import Inbox
from bgsyncd.logs import get_logger

# The watcher's logger name: operators filter on one name.
log = get_logger("bgsyncd.watcher")

# SPEC: a lost or restored inbox is noticed within 10 s; a look costs a few system calls.
CHECK_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Root:
    """An inbox root as found on disk: a real folder, and which one."""

    dev: int
    ino: int
    mount_point: bool  # its st_dev differs from its parent's


@dataclass(frozen=True, slots=True)
class Missing:
    """An inbox root that is not a usable folder, and why (for the log line)."""

    reason: str


def look(root: str, was_mount_point: bool = False) -> Root | Missing:
    """What is at ``root`` now, looked up without following a symlink at any level.

    A symlink in place of the root or of any folder above it makes the root
    missing (:func:`bgsyncd.files.rootfd.lookup`): a path that leads elsewhere is
    never taken for the folder. ``was_mount_point``: the root has been a
    mount point; a plain folder there now is the bare mount point of an
    unmounted share.
    """
    try:
        st, parent = rootfd.lookup(root)
    except FileNotFoundError:
        return Missing("missing")
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            return Missing(f"cannot be read: {describe_os_error(exc)}")
        return Missing(_refusal(root))
    mount_point = st.st_dev != parent.st_dev or st.st_ino == parent.st_ino
    if was_mount_point and not mount_point:
        return Missing("unmounted")
    return Root(st.st_dev, st.st_ino, mount_point)


def _refusal(root: str) -> str:
    """Why a symlink-free lookup of ``root`` was refused, for the log line."""
    try:
        st = os.lstat(root)  # only to word the reason: nothing is opened through it
    except OSError:
        return "a folder above it was replaced by a symlink or a file"
    if stat.S_ISLNK(st.st_mode):
        return "replaced by a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return "not a folder"
    return "a folder above it was replaced by a symlink or a file"


class Verdict(enum.Enum):
    """What to do about one inbox after a look."""

    KEEP = "keep"  # up and watched, or still not there
    LOST = "lost"  # it was up and is gone: drop its watch, report it down
    WATCH = "watch"  # there but not watched (back, replaced, or its watch ended): watch, scan


def judge(watched: Root | None, seen: Root | Missing, watch_alive: bool) -> Verdict:
    """Decide from the root being watched (None: down), what is there, and the watch's health."""
    if isinstance(seen, Missing):
        return Verdict.LOST if watched is not None else Verdict.KEEP
    if watched is not None and _same(watched, seen) and watch_alive:
        return Verdict.KEEP
    return Verdict.WATCH


def _same(a: Root, b: Root) -> bool:
    return (a.dev, a.ino) == (b.dev, b.ino)


class RootGuard:
    """Keeps every inbox watched while it is there; reports each up or down.

    Its thread looks at every root every ``interval`` seconds, or at once after
    :meth:`check_soon`. The callbacks, all called from that thread:
    ``watch(inbox)`` sets up a watch (raises ``OSError`` if it cannot),
    ``unwatch(inbox)`` drops it (nothing if there is none), ``watch_alive(inbox)``
    says whether its watch still runs, ``scan(inbox)`` asks for a scan of it,
    ``report(name, up)`` publishes the state (``bgsyncd_folder_up``).
    """

    def __init__(
        self,
        inboxes: Sequence[Inbox],
        *,
        watch: Callable[[Inbox], None],
        unwatch: Callable[[Inbox], None],
        watch_alive: Callable[[Inbox], bool],
        scan: Callable[[Inbox], None],
        report: Callable[[str, bool], None],
        interval: float = CHECK_SECONDS,
    ) -> None:
        self._inboxes = tuple(inboxes)
        self._watch = watch
        self._unwatch = unwatch
        self._watch_alive = watch_alive
        self._scan = scan
        self._report = report
        self._interval = interval
        self._watched: dict[str, Root | None] = {i.name: None for i in self._inboxes}
        self._was_mount: dict[str, bool] = {i.name: False for i in self._inboxes}
        self._failed: dict[str, str] = {}  # inbox -> the last watch failure logged
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bgsyncd-roots", daemon=True)

    def watching(self, inbox: Inbox, root: Root) -> None:
        """Record that ``inbox`` is watched at ``root`` (the watcher's start); report it up."""
        self._watched[inbox.name] = root
        self._was_mount[inbox.name] = self._was_mount[inbox.name] or root.mount_point
        self._report(inbox.name, True)

    def up(self, inbox: Inbox) -> bool:
        """True while ``inbox`` is there and watched (cheap: the observers ask per event)."""
        return self._watched.get(inbox.name) is not None

    def still_watched(self, inbox: Inbox) -> bool:
        """True when the folder at ``inbox``'s root now is the one watched (a symlink-free lookup).

        Asked before a file is handed on: between a swap and the next look, a
        polling emitter lists whatever the root names, a symlink's target too.
        """
        watched = self._watched.get(inbox.name)
        if watched is None:
            return False
        try:
            st, _parent = rootfd.lookup(inbox.root)
        except OSError:
            return False  # a symlink at any level above it too
        # The bare mount point of an unmounted share has another identity.
        return (st.st_dev, st.st_ino) == (watched.dev, watched.ino)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def check_soon(self) -> None:
        """Look at every root now rather than at the next interval; returns at once."""
        self._wake.set()

    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def check(self) -> None:
        """Look at every root once and act on what is found (the thread's one step)."""
        for inbox in self._inboxes:
            if self._stopping.is_set():
                return
            try:
                self._check_one(inbox)
            except Exception:
                log.exception("folder.check_failed", folder=inbox.name)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if not self._stopping.is_set():
                self.check()

    def _check_one(self, inbox: Inbox) -> None:
        name = inbox.name
        watched = self._watched[name]
        seen = look(inbox.root, self._was_mount[name])
        verdict = judge(watched, seen, watched is not None and self._watch_alive(inbox))
        if verdict is Verdict.KEEP:
            return
        if watched is not None:
            if isinstance(seen, Missing):
                reason = seen.reason
            elif _same(watched, seen):
                reason = "its watch ended"
            else:
                reason = "replaced by another folder"
            self._lost(inbox, reason)
        if isinstance(seen, Root):
            self._restore(inbox, seen)

    def _lost(self, inbox: Inbox, reason: str) -> None:
        self._watched[inbox.name] = None
        self._report(inbox.name, False)
        log.warning("folder.lost", folder=inbox.name, inbox=inbox.root, reason=reason)
        self._unwatch(inbox)

    def _restore(self, inbox: Inbox, seen: Root) -> None:
        self._unwatch(inbox)  # a dead watch on the old folder is replaced, never reused
        try:
            self._watch(inbox)
        except OSError as exc:
            # Tried again at every look: logged once per distinct failure, not every 2 s.
            if self._failed.get(inbox.name) != str(exc):
                self._failed[inbox.name] = str(exc)
                log.warning(
                    "folder.watch_failed", folder=inbox.name, inbox=inbox.root, error=str(exc)
                )
            return  # still down
        # The watch was set on whatever the path named then: make sure it is
        # the folder just looked at, or look again next time.
        after = look(inbox.root, self._was_mount[inbox.name])
        if not isinstance(after, Root) or not _same(after, seen):
            self._unwatch(inbox)
            return
        self._failed.pop(inbox.name, None)
        self.watching(inbox, seen)
        log.info("folder.restored", folder=inbox.name, inbox=inbox.root)
        self._scan(inbox)
