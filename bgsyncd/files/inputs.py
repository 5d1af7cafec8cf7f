"""Reading an input from an inbox without ever leaving it.

A file is read only when it is a regular file reached through real folders:
every folder on its path is opened from the inbox's root with ``O_NOFOLLOW``
(:mod:`bgsyncd.files.fsops`), the file itself with ``O_NOFOLLOW`` too, so a folder
swapped for a symlink at any moment cannot lead out of the inbox; no FIFO
that would block (``O_NONBLOCK``), and never more than a limit. Anything that
makes the file unreachable that way means, for the caller, that it vanished.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from bgsyncd.files import fsops

Signature = tuple[int, int, int]  # size, mtime_ns, inode: what the queue compares

# Gone, or reached through a symlink or a non-folder, or a FIFO with no writer.
_VANISHED = frozenset({errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO})


def signature_of(root: Path, relpath: str) -> Signature | None:
    """The signature of ``root/relpath``, or None when it is gone, not a regular
    file, or reached through a symlinked folder (which must never be followed)."""
    st = fsops.regular_stat(root, relpath)
    return None if st is None else (st.st_size, st.st_mtime_ns, st.st_ino)


def read_input(root: Path, relpath: str, limit: int) -> tuple[bytes | None, Signature] | None:
    """The file's bytes and signature; bytes None when it is over ``limit``.

    None when it is gone, not a regular file, or not reachable through real
    folders from the inbox's root.
    """
    try:
        with fsops.parent_of(root, relpath) as (dir_fd, name):
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | fsops.FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _VANISHED:
            return None
        raise
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size > limit:
            return None, (st.st_size, st.st_mtime_ns, st.st_ino)
        data = fh.read(limit + 1)
        # Signature after the read: a write during it shows as a change later.
        st = os.fstat(fh.fileno())
        if len(data) > limit:
            return None, (st.st_size, st.st_mtime_ns, st.st_ino)
        return data, (st.st_size, st.st_mtime_ns, st.st_ino)
