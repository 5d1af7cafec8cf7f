"""What a failing queue database means: the disk, or the file gone from under us.

Two questions the store asks when SQLite fails or now and then while the
daemon runs, answered here without ``sqlite3``:

- Is this failure the disk's (full, read-only, I/O error, cannot open)? Then
  the queue is *unavailable*, not broken: dispatch pauses ``queue_unavailable``
  and resumes when a write passes again. SQLite's own text ("database or disk
  is full") names no errno, so the folder is probed with a real write
  (:func:`bgsyncd.files.probe.probe_write`) and the kernel's answer is the message:
  ``[Errno 28] No space left on device``.
- Is the file at the database's path still the one we opened? A database
  deleted or replaced under a running daemon (and its ``.lock`` with it) would
  let a second daemon start beside us; the daemon notices and exits 1.

Neither question, nor :func:`check_openable` before SQLite opens the file,
ever opens a descriptor of the database file itself: closing one releases
every POSIX lock the process holds on that file, the daemon's connections'
included, and the next command to close its connection would then take
itself for the last user and delete the WAL under the daemon (SPEC §4).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from bgsyncd.errors import describe_os_error
from bgsyncd.files.probe import probe_write

# SQLite primary result codes that mean the disk, not the data or the caller.
SQLITE_PERM = 3
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
DISK_CODES = frozenset({SQLITE_PERM, SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN})
# Python < 3.11 gives no result code: the messages of those codes, as SQLite words them.
DISK_MESSAGES = (
    "access permission denied",
    "attempt to write a readonly database",
    "disk i/o error",
    "database or disk is full",
    "unable to open database file",
)

Identity = tuple[int, int]  # st_dev, st_ino


def is_disk_failure(code: int | None, message: str) -> bool:
    """A SQLite failure (result code, when known, and text) that the disk caused."""
    if code is not None:
        return code & 0xFF in DISK_CODES  # extended codes keep the primary in the low byte
    text = message.lower()
    return any(known in text for known in DISK_MESSAGES)


def describe_disk_failure(database: Path, sqlite_text: str) -> str:
    """The errno behind a disk failure of ``database``, found by a probe write beside it.

    Falls back to SQLite's own text when the probe passes (the fault has gone,
    or it is not the folder's).
    """
    try:
        probe_write(database.parent)
    except OSError as exc:
        return describe_os_error(exc)
    return sqlite_text


def check_openable(database: Path) -> None:
    """Raise the kernel's :class:`OSError` when ``database`` cannot be opened for writing.

    SQLite says "unable to open database file" (or opens read-only) where the
    kernel says ``[Errno 30] Read-only file system``. ``access(2)`` asks
    without opening the file (it answers ``EROFS`` even to root); when it says
    no, a probe write in the folder names the errno, else the file's own mode
    refuses: ``EACCES``.
    """
    target = database if database.exists() else database.parent
    if os.access(target, os.W_OK):
        return
    probe_write(database.parent)
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


def identity_of(path: Path) -> Identity:
    """The device and inode of ``path`` (not following a final symlink)."""
    st = os.lstat(path)
    return (st.st_dev, st.st_ino)


def identity_of_fd(fd: int) -> Identity:
    """The device and inode of an open file."""
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def lost_reason(path: Path, opened: Identity) -> str | None:
    """Why ``path`` is no longer the file we opened (``opened``), or None while it is.

    ``"deleted"`` when nothing is there (or a folder on the way is gone);
    ``"replaced"`` when another file is. Any other failure to look (an I/O
    error) decides nothing: the next look, or the queue's own errors, will.
    """
    try:
        now = identity_of(path)
    except (FileNotFoundError, NotADirectoryError):
        return "deleted"
    except OSError:
        return None
    return None if now == opened else "replaced"
