"""Reading an input from an inbox without ever leaving it.

A file is read only when it is a regular file reached through real folders:
no symlink in its last place (``O_NOFOLLOW``), no folder on its path swapped
for a symlink (the opened file must be the one a symlink-refusing walk finds),
no FIFO that would block (``O_NONBLOCK``), and never more than a limit.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from bgsyncd.scanner import regular_file

Signature = tuple[int, int, int]  # size, mtime_ns, inode: what the queue compares


def signature_of(root: Path, relpath: str) -> Signature | None:
    """The signature of ``root/relpath``, or None when it is gone, not a regular
    file, or reached through a symlinked folder (which must never be followed)."""
    st = regular_file(str(root), relpath)
    return None if st is None else (st.st_size, st.st_mtime_ns, st.st_ino)


def read_input(root: Path, relpath: str, limit: int) -> tuple[bytes | None, Signature] | None:
    """The file's bytes and signature; bytes None when it is over ``limit``.

    None when it is gone or not a regular file inside the inbox. ``O_NOFOLLOW``
    refuses a symlink in the last place and ``O_NONBLOCK`` keeps a FIFO from
    blocking; comparing the opened file with a walk that refuses symlinked
    folders keeps a folder swapped for a symlink from leading out of the inbox.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(root / relpath, flags)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            return None
        raise
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        walked = regular_file(str(root), relpath)
        if walked is None or (walked.st_dev, walked.st_ino) != (st.st_dev, st.st_ino):
            return None
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
