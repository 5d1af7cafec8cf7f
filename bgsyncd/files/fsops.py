"""File access under a configured folder, through directory descriptors only.

Every stat, open, rename, link and unlink of a file under an inbox, outbox,
quarantine or done folder goes through here. Every walk starts from the
descriptor held for the folder's root (:mod:`bgsyncd.files.rootfd`: opened through
a path with no symlink at any level, never by its path string); from there each folder
on the way is opened with ``openat(name, O_NOFOLLOW | O_DIRECTORY)`` relative
to its parent, and the file itself is reached with ``dir_fd=``. A folder
swapped for a symlink (or a file) at any moment makes the walk fail with
``ELOOP`` or ``ENOTDIR`` instead of leading out of the folder: checking a path
and then acting on the path string is a race an attacker wins with
``renameat2(RENAME_EXCHANGE)``; acting on a descriptor already held is not.

What a refusal means is the caller's business: under an inbox the input has
vanished; under an outbox, quarantine or done folder it is a refused write
(``bgsyncd.errors.is_refused``).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Generator, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from bgsyncd.files import rootfd

# A symlink or a non-folder anywhere on the way fails the walk (ELOOP, ENOTDIR).
DIR_FLAGS = rootfd.DIR_FLAGS
# Added to every file open: never through a symlink, never inherited by a child.
FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC
# What makes a file not there for regular_stat: gone, or swapped on the way.
_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})


def split_relpath(relpath: str) -> list[str]:
    """The components of a "/"-separated path relative to a folder.

    ValueError for a path that could leave the folder or name it itself
    (absolute, empty, ``.``, ``..``).
    """
    parts = relpath.split("/")
    if not relpath or relpath.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a relative path inside the folder: {relpath!r}")
    return parts


def open_root(root: Path | str) -> int:
    """A descriptor of a configured folder's root (the caller closes it).

    Started from the descriptor held for the root (:mod:`bgsyncd.files.rootfd`),
    whose path is looked up without following a symlink at any level: a root
    or a folder above it swapped for a symlink is refused (a lost folder),
    never followed.
    """
    return rootfd.open_root(root)


def open_dir(root: Path | str, reldir: str = "", *, create: bool = False) -> int:
    """A descriptor of ``root/reldir``, walked one real folder at a time.

    ``reldir`` "" is the root itself. ``create`` makes missing folders on the
    way (mode ``0o777 & ~umask``), the root too when it was deleted (as at
    start, so a removed outbox comes back), never through a symlink; a folder
    made and then swapped before it is opened is still refused. The caller
    closes the descriptor.
    """
    parts = split_relpath(reldir) if reldir else []
    fd = rootfd.open_root(root, create=create)
    try:
        for part in parts:
            if create:
                with suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def parent_of(root: Path | str, relpath: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
    """``(descriptor of the folder holding relpath, the file's name)``, closed on exit."""
    parts = split_relpath(relpath)
    fd = open_dir(root, "/".join(parts[:-1]), create=create)
    try:
        yield fd, parts[-1]
    finally:
        os.close(fd)


def lstat(root: Path | str, relpath: str) -> os.stat_result:
    """``lstat`` of ``root/relpath`` through a symlink-refusing walk; OSError when it fails."""
    with parent_of(root, relpath) as (fd, name):
        return os.stat(name, dir_fd=fd, follow_symlinks=False)


def regular_stat(root: Path | str, relpath: str) -> os.stat_result | None:
    """``lstat`` of ``root/relpath`` if it is a regular file reached through real folders.

    None when it is not there (``ENOENT``), not a regular file, or reached
    through a symlink or a non-folder (``ELOOP``, ``ENOTDIR``); any other
    failure (``EMFILE``, ``EIO``, ``EACCES``…) is raised: it says nothing of the file.
    """
    try:
        st = lstat(root, relpath)
    except ValueError:
        return None
    except OSError as exc:
        if exc.errno in _GONE_ERRNOS:
            return None
        raise
    return st if stat.S_ISREG(st.st_mode) else None


def exists_at(dir_fd: int, name: str) -> bool:
    """True when ``name`` (of any type, a dangling symlink too) is in the folder ``dir_fd``."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def unlink(root: Path | str, relpath: str) -> None:
    """Remove the file ``root/relpath`` and make that durable; FileNotFoundError if gone."""
    with parent_of(root, relpath) as (fd, name):
        os.unlink(name, dir_fd=fd)
        fsync_fd(fd)


def fsync_fd(dir_fd: int) -> None:
    """Make renames, links and unlinks in the folder ``dir_fd`` durable."""
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        # Some filesystems (certain FUSE and network mounts) cannot fsync a folder.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise


def walk_files(root: Path | str) -> Generator[tuple[int, str], None, None]:
    """``(folder descriptor, name)`` for every non-folder entry under ``root``.

    Folders are entered through their descriptor only, never through a
    symlink; one that vanishes or is swapped meanwhile is skipped. A
    descriptor is valid only until the next item is asked for.
    """
    try:
        stack = [open_root(root)]
    except OSError:
        return
    try:
        while stack:
            fd = stack.pop()
            try:
                yield from _entries(fd, stack)
            finally:
                os.close(fd)
    finally:
        # A caller that stops early must not leak the folders still to visit.
        for fd in stack:
            os.close(fd)


def _entries(fd: int, stack: list[int]) -> Iterator[tuple[int, str]]:
    try:
        names = os.listdir(fd)
    except OSError:
        return
    for name in names:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            yield fd, name
            continue
        try:
            stack.append(os.open(name, DIR_FLAGS, dir_fd=fd))
        except OSError:
            continue
