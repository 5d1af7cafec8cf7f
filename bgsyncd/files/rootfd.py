"""The configured folders' roots: opened through a path with no symlink at any level, and held.

``O_NOFOLLOW`` guards only the last component of a path: a root opened by
its path string follows a symlink anywhere above it, so an attacker who
swaps ``/srv/in/team`` for a symlink moves the inbox ``/srv/in/team/x``
wherever they like. Here a root is opened with ``openat2`` and
``RESOLVE_NO_SYMLINKS`` (Linux 5.6; no Python binding, so ``ctypes``
syscall 437), or, where the kernel or a seccomp filter lacks it, by a walk
from ``/`` opening each component with ``O_DIRECTORY | O_NOFOLLOW``. Either
fails with ``ELOOP`` or ``ENOTDIR`` (a refusal, ``errors.is_refused``) when
a symlink or a file stands anywhere on the way.

:data:`ROOTS` holds a descriptor of every root once opened (an inbox, an
outbox, a quarantine or done folder, the result cache: one mechanism), and
every operation starts from it (:meth:`RootTable.open`). Before each one the
path is looked up again, symlink-free, and its device and inode compared
with the held descriptor's: a path that now leads through a symlink is
refused, never followed; a path that now names another real folder (deleted
and made again, unmounted and mounted again) has that folder opened and held
instead (``folder.reopened``). The roots' parents are created without
following a symlink either (:func:`make_dirs`: ``mkdirat`` one component at
a time), unlike ``os.makedirs``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys
import threading
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bgsyncd.logs import get_logger

log = get_logger("bgsyncd.roots")

# A folder on the way is looked up, not read: search permission is all it needs.
_O_PATH = getattr(os, "O_PATH", 0) or os.O_RDONLY
LOOKUP_FLAGS = _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A root opened to be read (listed) or to serve as the dir_fd of a write.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_SYS_OPENAT2 = 437  # the same number on every Linux architecture
_RESOLVE_NO_SYMLINKS = 0x04
_AT_FDCWD = -100
# More roots than any configuration has; the least recently used is closed beyond.
HELD_LIMIT = 1024


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


class _Openat2:
    """``openat2(AT_FDCWD, path, {flags, 0, RESOLVE_NO_SYMLINKS})``, while the kernel has it."""

    def __init__(self) -> None:
        self.available = sys.platform.startswith("linux")
        self._syscall: Any = None  # the libc function, looked up at first use

    def __call__(self, path: str, flags: int) -> int | None:
        """The descriptor; None where openat2 cannot be used; OSError as the kernel says."""
        if not self.available:
            return None
        if self._syscall is None:
            call = ctypes.CDLL(None, use_errno=True).syscall
            call.restype = ctypes.c_long
            call.argtypes = (
                ctypes.c_long,
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.POINTER(_OpenHow),
                ctypes.c_size_t,
            )
            self._syscall = call
        how = _OpenHow(flags, 0, _RESOLVE_NO_SYMLINKS)
        raw = os.fsencode(path)
        while True:
            size = ctypes.sizeof(how)
            fd = int(self._syscall(_SYS_OPENAT2, _AT_FDCWD, raw, ctypes.byref(how), size))
            if fd >= 0:
                return fd
            err = ctypes.get_errno()
            if err != errno.EINTR:
                break
        if err == errno.ENOSYS:
            self.available = False  # an old kernel: walk from now on
            return None
        if err in (errno.EPERM, errno.E2BIG, errno.EINVAL):
            return None  # a seccomp filter or an older struct: the walk decides
        raise OSError(err, os.strerror(err), path)


_openat2 = _Openat2()


def absolute(path: Path | str) -> str:
    """``path`` made absolute and normal (no ``.``, ``..`` or doubled ``/``), as a string."""
    return os.path.abspath(os.fspath(path))


def open_path(path: Path | str, flags: int = DIR_FLAGS) -> int:
    """A descriptor of the folder at ``path``, reached without following any symlink.

    ``ELOOP`` or ``ENOTDIR`` when a symlink or a file stands anywhere on the
    way (the last component included); ``ENOENT`` when a part is missing.
    """
    where = absolute(path)
    fd = _openat2(where, flags)
    if fd is None:
        fd = _walk(where, flags)
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):  # an O_PATH of a symlink, never a folder
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), where)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _walk(where: str, flags: int, *, create: bool = False) -> int:
    """Open ``where`` from ``/``, one ``O_NOFOLLOW`` component at a time.

    ``create``: a missing component is made (``mkdirat``) and then opened.
    """
    fd = os.open("/", LOOKUP_FLAGS)
    try:
        for part in [p for p in where.split("/") if p]:
            try:
                child = os.open(part, LOOKUP_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                child = os.open(part, LOOKUP_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        # Opened again with the caller's flags: "." never follows anything.
        final = os.open(".", flags, dir_fd=fd)
    finally:
        os.close(fd)
    return final


def make_dirs(path: Path | str) -> None:
    """``mkdir -p path`` without following a symlink at any level (mode ``0o777 & ~umask``).

    ``ELOOP`` or ``ENOTDIR`` when a symlink or a file stands on the way:
    nothing is made beyond it.
    """
    os.close(_walk(absolute(path), LOOKUP_FLAGS, create=True))


def lookup(path: Path | str) -> tuple[os.stat_result, os.stat_result]:
    """``fstat`` of the folder at ``path`` and of its parent, both reached symlink-free.

    ``OSError`` as :func:`open_path` (the parent's too).
    """
    fd, st, parent = _open_with_parent(absolute(path))
    os.close(fd)
    return st, parent


def _open_with_parent(where: str) -> tuple[int, os.stat_result, os.stat_result]:
    """An ``O_PATH`` descriptor of the folder ``where`` (symlink-free), its stat, its parent's."""
    parent, name = os.path.split(where)
    parent_fd = open_path(parent or "/", LOOKUP_FLAGS)
    try:
        fd = os.open(name or ".", LOOKUP_FLAGS, dir_fd=parent_fd)  # "" for "/" itself
        try:
            st = os.fstat(fd)
            if not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), where)
            return fd, st, os.fstat(parent_fd)
        except BaseException:
            os.close(fd)
            raise
    finally:
        os.close(parent_fd)


@dataclass(frozen=True, slots=True)
class _Held:
    fd: int | None  # O_PATH where the platform has it; None for a mount point (see open)
    dev: int
    ino: int


class RootTable:
    """The held descriptor of every root opened so far, keyed by its absolute path."""

    def __init__(self, limit: int = HELD_LIMIT) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._held: OrderedDict[str, _Held] = OrderedDict()

    def open(self, root: Path | str, *, create: bool = False) -> int:
        """A new descriptor of ``root``'s folder, started from the held one; the caller closes it.

        The path is looked up symlink-free first: a symlink or a file on the
        way raises ``ELOOP`` or ``ENOTDIR`` and nothing is opened. With
        ``create``, a missing root is made first (symlink-free), as at start.
        A path that names another real folder than the one held has that one
        held from now on. A root that is a mount point is not held open (a
        held descriptor would make ``umount`` of the share fail as busy; an
        unmounted share is a lost folder, SPEC §4): its identity is, and each
        operation starts from the symlink-free lookup that matched it.
        """
        where = absolute(root)
        try:
            try:
                now, st, parent = _open_with_parent(where)
            except FileNotFoundError:
                if not create:
                    raise
                make_dirs(where)
                now, st, parent = _open_with_parent(where)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise lost(exc.errno, where) from None
            raise
        mount_point = st.st_dev != parent.st_dev or st.st_ino == parent.st_ino
        try:
            with self._lock:
                held = self._held.get(where)
                if held is None or (held.dev, held.ino) != (st.st_dev, st.st_ino):
                    keep = None if mount_point else now
                    self._hold(where, _Held(keep, st.st_dev, st.st_ino), replaced=held)
                    if keep is not None:
                        now = -1  # held now: not closed below
                    held = self._held[where]
                else:
                    self._held.move_to_end(where)
                base = held.fd if held.fd is not None else now
                # Under the lock: the held descriptor is never closed while used.
                return os.open(".", DIR_FLAGS, dir_fd=base)
        finally:
            if now >= 0:
                os.close(now)

    def _hold(self, where: str, new: _Held, *, replaced: _Held | None) -> None:
        if replaced is not None:
            _close(replaced)
            log.warning(
                "folder.reopened",
                path=where,
                note="the folder at this path is not the one opened before "
                "(deleted and made again, or mounted again): using the one there now",
            )
        self._held[where] = new
        self._held.move_to_end(where)
        while len(self._held) > self._limit:
            _path, oldest = self._held.popitem(last=False)
            _close(oldest)

    def identity(self, root: Path | str) -> tuple[int, int] | None:
        """``(st_dev, st_ino)`` of the folder held for ``root``, or None."""
        with self._lock:
            held = self._held.get(absolute(root))
        return None if held is None else (held.dev, held.ino)

    def release(self, root: Path | str) -> None:
        """Close the descriptor held for ``root``, if any (the next use opens it again)."""
        with self._lock:
            held = self._held.pop(absolute(root), None)
            if held is not None:
                _close(held)


def _close(held: _Held) -> None:
    if held.fd is not None:
        os.close(held.fd)


def lost(code: int, where: str) -> OSError:
    """The refusal of a root whose path leads through a symlink or a file (``code``: its errno)."""
    text = f"{os.strerror(code)}: a folder on the way is a symlink or a file now (a lost folder)"
    return OSError(code, text, where)


ROOTS = RootTable()


def open_root(root: Path | str, *, create: bool = False) -> int:
    """:meth:`RootTable.open` on the process's table."""
    return ROOTS.open(root, create=create)
