"""inotify's limits as watchdog reports them, and what the watcher does about them.

- The event queue overflowed (IN_Q_OVERFLOW): events were lost, and a rescan
  finds what they were about. watchdog only logs a warning for it.
- The watch limit (``fs.inotify.max_user_watches``) or the instance limit was
  reached: a folder is left unwatched. When a watch is set up (at start, or
  for an inbox that came back) watchdog raises ``OSError`` (ENOSPC, EMFILE);
  for a subfolder that appears later, it only logs a warning, on its own
  thread, and goes on without it. watchdog 6 says nothing at all: for each
  folder that appears in an inbox, bgsyncd asks inotify itself whether one
  more watch can be had (``watch_available``), and takes a no as watchdog's
  failure (for a folder moved in from outside, which watchdog 6 does not
  try to watch, ``moved_in``'s own try). Either way the inbox is polled
  instead (SPEC §6): ``folder.degraded`` in the log, ``bgsyncd_folder_up``
  0.5, and the daemon runs on. It stays polled until the watcher is made
  again (a reload that changes the folders, or a restart).

Nothing here imports watchdog: the hooks listen to its loggers.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any

from bgsyncd.inbox import moved_in
from bgsyncd.inbox.scanner import Inbox
from bgsyncd.logs import get_logger

log = get_logger("bgsyncd.watcher")

# watchdog's loggers: the shared inotify reader's (overflow), the watch groups' (limits).
OVERFLOW_LOGGER = "watchdog.observers.inotify_c"
LIMIT_LOGGER = "watchdog.observers.inotify"
# bgsyncd_folder_up of an inbox polled for want of inotify watches (1 watched, 0 lost).
DEGRADED = 0.5
_HINT = "polled instead; raise fs.inotify.max_user_watches to watch it again"
_OUT = (errno.ENOSPC, errno.EMFILE)  # out of inotify watches, out of inotify instances
# watchdog 6 drops a new sub-folder's failed watch without a word (``except OSError:
# continue`` in its inotify_c): nothing but inotify itself can tell.
SILENT_WATCHDOG = int(version("watchdog").split(".")[0]) < 7
_IN_DELETE_SELF, _IN_ONLYDIR, _IN_DONT_FOLLOW = 0x400, 0x01000000, 0x02000000


def out_of_watches(exc: OSError) -> bool:
    """``exc`` says inotify ran out of watches or instances (not that the folder is bad)."""
    return exc.errno in _OUT


class _WatchProbe:
    """Asks inotify, with an instance and a watch of its own, whether a watch can be had."""

    def __init__(self) -> None:
        self._libc: Any = None  # looked up at first use

    def __call__(self, path: str) -> bool:
        """False when inotify is out of watches (or instances) now; True otherwise.

        The watch is set on ``path`` (a folder, no link followed) and removed
        at once. Any other failure (``path`` gone, not a folder, no inotify
        here) is not this question's: True.
        """
        libc = self._libc
        if libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            if not hasattr(libc, "inotify_add_watch"):
                return True
            libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
            self._libc = libc
        fd = int(libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK))
        if fd < 0:
            return ctypes.get_errno() not in _OUT
        try:
            mask = _IN_DELETE_SELF | _IN_ONLYDIR | _IN_DONT_FOLLOW
            wd = int(libc.inotify_add_watch(fd, os.fsencode(path), mask))
            if wd < 0:
                return ctypes.get_errno() not in _OUT
            libc.inotify_rm_watch(fd, wd)
            return True
        finally:
            os.close(fd)


watch_available = _WatchProbe()


class OverflowHook(logging.Handler):
    """Asks for a rescan when watchdog reports that inotify dropped events."""

    def __init__(self, rescan: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self._rescan = rescan

    def emit(self, record: logging.LogRecord) -> None:
        """Request a rescan on watchdog's overflow warning."""
        if "overflow" in record.getMessage().lower():
            self._rescan()


class LimitHook(logging.Handler):
    """Calls ``on_limit(path)`` for each folder watchdog left unwatched for want of watches.

    watchdog logs ``"Unable to watch %r: %s"`` with the path and the
    ``OSError``; ``on_limit`` runs on watchdog's thread, under its locks, so
    it must only hand the news on.
    """

    def __init__(self, on_limit: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._on_limit = on_limit

    def emit(self, record: logging.LogRecord) -> None:
        """Pass on the path of a watch that failed with ENOSPC or EMFILE."""
        args = record.args
        if not isinstance(args, tuple) or len(args) != 2:
            return
        path, error = args
        if isinstance(path, (bytes, str)) and isinstance(error, OSError) and out_of_watches(error):
            self._on_limit(os.fsdecode(path))


class Limits:
    """One watcher's answers to inotify's limits: the hooks, and the inboxes polled instead.

    ``events_lost()`` is called on an overflow; ``is_up(inbox)`` says whether
    the root guard holds the inbox watched; ``unwatch(inbox)`` drops its
    watch and ``watch(inbox)`` sets it up (polled, once degraded here; raises
    ``OSError``); ``scan(inbox)`` asks for a scan; ``report(name, value)``
    publishes ``bgsyncd_folder_up``; ``watched(inbox)`` is its watch, ``(observer,
    watch)``, or None. ``lock`` is held while watches are set up.
    """

    def __init__(
        self,
        inboxes: Sequence[Inbox],
        *,
        events_lost: Callable[[], None],
        is_up: Callable[[Inbox], bool],
        watch: Callable[[Inbox], None],
        unwatch: Callable[[Inbox], None],
        scan: Callable[[Inbox], None],
        report: Callable[[str, float], None],
        watched: Callable[[Inbox], tuple[Any, object] | None] = lambda inbox: None,
    ) -> None:
        self._inboxes = tuple(inboxes)
        self._watched = watched
        self._is_up = is_up
        self._watch = watch
        self._unwatch = unwatch
        self._scan = scan
        self._report = report
        self.lock = threading.RLock()
        self._stopped = False
        self._degraded: set[str] = set()
        self._switching: set[str] = set()  # one switch an inbox, however many warnings
        self._hooks: dict[str, logging.Handler] = {
            OVERFLOW_LOGGER: OverflowHook(events_lost),
            LIMIT_LOGGER: LimitHook(self._out_of_watches),
        }

    def listen(self) -> None:
        """Start listening to watchdog's warnings."""
        for name, hook in self._hooks.items():
            logging.getLogger(name).addHandler(hook)

    def stop(self) -> None:
        """Stop listening; wait for a switch to polling under way; start none after."""
        for name, hook in self._hooks.items():
            logging.getLogger(name).removeHandler(hook)
        with self.lock:
            self._stopped = True

    def polled(self, inbox: Inbox) -> bool:
        """``inbox`` is polled: so configured, or degraded for want of watches."""
        return inbox.polling or inbox.name in self._degraded

    def degrade(self, inbox: Inbox, error: str) -> None:
        """From now on ``inbox`` is polled: say so, once."""
        self._degraded.add(inbox.name)
        log.warning("folder.degraded", folder=inbox.name, inbox=inbox.root, error=error, note=_HINT)

    def report(self, name: str, up: bool) -> None:
        """Publish ``name`` up (True, or 0.5 while degraded) or down (False)."""
        self._report(name, DEGRADED if up and name in self._degraded else up)

    def new_folder(self, inbox: Inbox, path: str, synthetic: bool = False) -> None:
        """A folder appeared at ``path`` in watched ``inbox`` (observer thread): watched?

        Only where watchdog would not say (watchdog 6). Should inotify have
        no watch to give now, watchdog's own try failed too, or took the last
        one: either way the inbox is polled (the safe side). A folder moved in
        from outside (or renamed inside) is watched here (``moved_in``), then
        the inbox scanned for what came before its watches; ``synthetic``
        (watchdog's walk of a folder that appeared) is below one seen already.
        """
        if not SILENT_WATCHDOG or not inbox.recursive or self.polled(inbox):
            return
        if not watch_available(path):
            self._out_of_watches(path)
            return
        held = None if synthetic else self._watched(inbox)
        inotify = moved_in.inotify_of(*held) if held is not None else None
        if inotify is None or not path.startswith(inbox.root + "/"):
            return
        try:
            added = moved_in.watch_tree(inotify, inbox.root, path[len(inbox.root) + 1 :])
        except OSError as exc:
            if not out_of_watches(exc):
                raise
            self._out_of_watches(path)
            return
        if added:
            self._scan(inbox)

    def _out_of_watches(self, path: str) -> None:
        """watchdog could not watch ``path`` (on its thread): poll its inbox instead."""
        for inbox in self._inboxes:
            inside = path == inbox.root or path.startswith(inbox.root + "/")
            if inside and not self.polled(inbox) and inbox.name not in self._switching:
                self._switching.add(inbox.name)
                # Not on this thread: dropping the watch needs watchdog's locks.
                thread = threading.Thread(
                    target=self._switch, args=(inbox, path), name="bgsyncd-degrade"
                )
                thread.start()

    def _switch(self, inbox: Inbox, path: str) -> None:
        try:
            self._switch_now(inbox, path)
        except Exception:  # its own thread: never silently
            log.exception("folder.degrade_failed", folder=inbox.name)

    def _switch_now(self, inbox: Inbox, path: str) -> None:
        with self.lock:
            if self._stopped or self.polled(inbox):
                return
            self.degrade(inbox, f"cannot watch {path}: inotify watch limit reached")
            if not self._is_up(inbox):
                return  # lost: polled once it is back
            self._unwatch(inbox)
            try:
                self._watch(inbox)
            except OSError as exc:
                # No watch now: the root guard sees it ended and sets one up.
                log.warning("folder.watch_failed", folder=inbox.name, error=str(exc))
                return
            self.report(inbox.name, True)
        self._scan(inbox)  # what arrived while it was not watched
