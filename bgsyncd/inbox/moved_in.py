"""A folder moved into an inbox from outside, watched on watchdog 6 as on watchdog 7.

watchdog 6 sets up inotify watches for a folder *made* in a recursive watch,
but not for one *moved in* from outside the watched tree (a TODO in its
``inotify_c``): the files already inside are reported (a walk), nothing
written into it later is. watchdog 7 watches it. So, on watchdog 6 only, for
each folder that appears in a recursive inotify inbox (made, moved in, renamed
inside), ``watch_tree`` gives every folder at and below it that the inbox's
inotify instance does not watch a watch there, named as watchdog names it, so
its events read like any other; the caller then scans the inbox for what
arrived before the watches were there.

Each folder is reached by descriptors walked down from the inbox's held root
(``fsops``: never through a symlink), and watched through that descriptor
(``/proc/self/fd/N``), never by its path string. watchdog 6's instance is
reached through its emitter (``emitter._inotify._inotify``: its ``_lock``,
``_closed``, ``_wd_for_path`` and ``_path_for_wd``, under that lock, as its
own reader thread uses them); watchdog 6 is frozen at 6.0.0, and anything
else found there means nothing is done (the periodic rescan finds the files).

Nothing here imports watchdog.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

from bgsyncd.files import fsops
from bgsyncd.logs import get_logger

log = get_logger("bgsyncd.watcher")

_IN_ONLYDIR, _IN_DONT_FOLLOW = 0x01000000, 0x02000000
_NEEDED = ("_lock", "_closed", "_wd_for_path", "_path_for_wd", "fd", "event_mask")


class _AddWatch:
    """``inotify_add_watch`` through libc, found at first use."""

    def __init__(self) -> None:
        self._fn: Any = None

    def __call__(self, inotify_fd: int, path: str, mask: int) -> int:
        """The watch descriptor; ``OSError`` when inotify refuses."""
        if self._fn is None:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.inotify_add_watch
            fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
            self._fn = fn
        wd = int(self._fn(inotify_fd, os.fsencode(path), mask))
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return wd


_add_watch = _AddWatch()


class _OutOfWatches(OSError):
    """inotify has no watch left to give (``ENOSPC`` from ``inotify_add_watch``)."""


def inotify_of(observer: Any, watch: object) -> Any:
    """watchdog 6's inotify instance behind ``watch`` on ``observer``, or None.

    None too when the watch has no running emitter, or its insides are not
    what watchdog 6.0.0 has.
    """
    emitter = next((e for e in list(observer.emitters) if e.watch is watch), None)
    inotify = getattr(getattr(emitter, "_inotify", None), "_inotify", None)
    if inotify is None or not all(hasattr(inotify, name) for name in _NEEDED):
        return None
    return inotify


def watch_tree(inotify: Any, root: str, rel: str) -> int:
    """Watch ``root/rel`` and every folder below it that ``inotify`` does not; how many.

    ``root`` is the inbox's, ``rel`` the new folder's path in it. A folder
    that went away, or is a symlink, is passed over. ``OSError`` when inotify
    is out of watches (``ENOSPC``): the caller polls the inbox instead.
    """
    mask = (int(inotify.event_mask) & ~_IN_DONT_FOLLOW) | _IN_ONLYDIR  # the fd's link followed
    added = 0
    # Under the instance's lock, as its reader adds a made folder's watches: a
    # rename it reads meanwhile is applied after, to these watches too.
    with inotify._lock:
        if inotify._closed:
            return 0
        pending = [rel]
        while pending:
            here = pending.pop()
            try:
                fd = fsops.open_dir(root, here)
            except OSError:
                continue  # gone, or not a real folder: its parent's events say what became of it
            try:
                added += _watch_one(inotify, mask, fd, os.fsencode(f"{root}/{here}"))
                with os.scandir(fd) as entries:
                    pending += [f"{here}/{e.name}" for e in entries if _is_dir(e)]
            except OSError as exc:
                if isinstance(exc, _OutOfWatches):
                    raise
                log.debug("folder.watch_below_failed", folder=here, error=repr(exc))
            finally:
                os.close(fd)
    return added


def _watch_one(inotify: Any, mask: int, fd: int, path: bytes) -> int:
    """Watch the folder open at ``fd``, known to watchdog as ``path``; 1 if it was not.

    Asked of inotify each time (it answers a folder it watches already with
    that watch): the name alone may still stand for a folder moved out, whose
    watch watchdog 6 keeps.
    """
    try:
        wd = _add_watch(inotify.fd, f"/proc/self/fd/{fd}", mask)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:  # not a full descriptor table (EMFILE) elsewhere
            raise _OutOfWatches(exc.errno, exc.strerror) from exc
        raise
    if inotify._wd_for_path.get(path) == wd:
        return 0
    inotify._wd_for_path[path] = wd
    inotify._path_for_wd[wd] = path
    return 1


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False
