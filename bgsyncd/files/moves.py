"""Moving and deleting inputs: into quarantine (with the sidecar), into ``done``,
and deleting after success.

Every file is reached through :mod:`bgsyncd.files.fsops` (directory descriptors
walked from a folder's root). Moves never rely on ``rename`` across
filesystems: the file is hard-linked (same filesystem) or copied and fsynced
under a temp name and then linked to its final name, so a name is claimed
atomically and an existing file is never overwritten. The source is unlinked
last. A source that is gone, not a regular file, or reached through a
symlinked folder raises ``FileNotFoundError`` (the input vanished); a symlink
or file on the way under the destination, ``OSError`` with ``ELOOP`` or
``ENOTDIR`` (a refused write, ``errors.is_refused``).
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

from bgsyncd.files import fsops, outputs
from bgsyncd.files.names import numbered_names, sidecar_name
from bgsyncd.files.outputs import SIDECAR_SUFFIX

_COPY_CHUNK = 1024 * 1024


def delete_input(root: Path, relpath: str, sig: tuple[int, int, int]) -> None:
    """Delete the input ``root/relpath`` if it is still the file with signature ``sig``.

    ``sig`` is ``(size, mtime_ns, inode)``. The name is renamed aside first (a
    hidden temp name in the same folder) and the file checked after: a version
    written in place before the name went gets its name back (or the next free
    ``~2`` name, should a new file have taken it) and ``InputRewritten`` is
    raised; a writer that opens the name afterwards makes a new file. (One that
    opened it before and writes after the check still writes into the deleted
    file: no check can close that last instant.) FileNotFoundError when it is
    gone, changed before, or no longer reachable through real folders.
    """
    with _source(root, relpath) as (fd, name, st):
        if (st.st_size, st.st_mtime_ns, st.st_ino) != sig:
            raise FileNotFoundError(errno.ENOENT, "changed since it was read", relpath)
        aside = outputs.temp_name(name)
        try:
            os.rename(name, aside, src_dir_fd=fd, dst_dir_fd=fd)
        except OSError as exc:
            raise _vanished(exc, relpath) from None
        moved = os.stat(aside, dir_fd=fd, follow_symlinks=False)
        fresh = (moved.st_size, moved.st_mtime_ns, moved.st_ino)
        back = None
        if fresh != sig:
            back = _link_free_name(fd, aside, fd, numbered_names(name, relpath), _never_taken)
            if back is None:
                back = _rename_free_name(fd, aside, numbered_names(name, relpath), _never_taken)
        with suppress(FileNotFoundError):
            os.unlink(aside, dir_fd=fd)
        fsops.fsync_fd(fd)
        if back is not None:
            raise InputRewritten(posixpath.join(posixpath.dirname(relpath), back), fresh)


def _never_taken(fd: int, name: str) -> bool:
    return False


class InputRewritten(OSError):
    """The input was rewritten in place while moved or deleted: it stays, at ``relpath``
    (its own, or a ``~2`` name if a new file took it meanwhile), as ``signature``."""

    def __init__(self, relpath: str, signature: tuple[int, int, int]) -> None:
        super().__init__(errno.EAGAIN, "rewritten while it was moved", relpath)
        self.relpath = relpath
        self.signature = signature


def quarantine_file(
    src_root: Path,
    relpath: str,
    quarantine_root: Path,
    sidecar: Mapping[str, object],
    sig: tuple[int, int, int] | None = None,
) -> str:
    """Move ``src_root/relpath`` to ``<quarantine_root>/<relpath>`` and write its sidecar.

    A file already quarantined under that name is kept: the newcomer becomes
    ``photo~2.jpg``, ``photo~3.jpg``... (the extension stays last, so it still
    opens), and a name whose sidecar is left over counts as taken too. The
    sidecar ``<final name>.error.json`` (shortened by the name rule when that
    would pass 255 bytes) holds ``sidecar`` as indented JSON. Returns the
    final path relative to the quarantine folder.

    With ``sig`` (the judged ``(size, mtime_ns, inode)``), a source rewritten in place
    meanwhile stays, the move is undone and ``InputRewritten`` raised.
    """
    text = json.dumps(sidecar, indent=2, ensure_ascii=False, default=str) + "\n"

    def taken(fd: int, name: str) -> bool:
        return fsops.exists_at(fd, sidecar_name(name, relpath))

    def then(fd: int, name: str) -> None:
        outputs.write_at(fd, sidecar_name(name, relpath), text.encode("utf-8"))

    return _move(src_root, relpath, quarantine_root, relpath, taken, then, SIDECAR_SUFFIX, sig)


def move_to(src_root: Path, src_rel: str, dest_root: Path, dest_rel: str) -> str:
    """Move ``src_root/src_rel`` to ``dest_root/dest_rel`` (``~2``... on a collision).

    Works across filesystems and never overwrites. Returns the final path
    relative to ``dest_root``.
    """
    return _move(src_root, src_rel, dest_root, dest_rel, _never_taken, None, "")


def _move(
    src_root: Path,
    src_rel: str,
    dest_root: Path,
    dest_rel: str,
    also_taken: Callable[[int, str], bool],
    then: Callable[[int, str], None] | None,
    keep: str,
    sig: tuple[int, int, int] | None = None,
) -> str:
    """The shared move: claim a free name beside the target, then unlink the source."""
    with _source(src_root, src_rel) as (sfd, sname, before):
        with fsops.parent_of(dest_root, dest_rel, create=True) as (dfd, dname):

            def names() -> Iterator[str]:
                return numbered_names(dname, src_rel, keep=len(keep.encode()))

            final = None
            if os.fstat(dfd).st_dev == before.st_dev:
                final = _link_free_name(sfd, sname, dfd, names(), also_taken)
            if final is None:
                final = _copy_in(sfd, sname, before, dfd, names, also_taken)
            fsops.fsync_fd(dfd)
            if then is not None:
                then(dfd, final)
            try:
                now = os.stat(sname, dir_fd=sfd, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            fresh = None if now is None else (now.st_size, now.st_mtime_ns, now.st_ino)
            if sig is not None and fresh is not None and fresh[2] == sig[2] and fresh != sig:
                for name in (final, sidecar_name(final, src_rel)):  # the move undone
                    with suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=dfd)
                fsops.fsync_fd(dfd)
                raise InputRewritten(src_rel, fresh)
        # Only remove the file we moved: a new file written under the same name
        # meanwhile is new input, not ours to delete.
        if now is not None and (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino):
            with suppress(FileNotFoundError):
                os.unlink(sname, dir_fd=sfd)
            fsops.fsync_fd(sfd)
    return posixpath.join(posixpath.dirname(dest_rel), final)


@contextmanager
def _source(root: Path, relpath: str) -> Iterator[tuple[int, str, os.stat_result]]:
    """The source of a move or delete: its folder's descriptor, its name, its ``lstat``.

    Anything that makes it unreachable through real folders, or not a regular
    file, is ``FileNotFoundError``: for an input, that means it vanished.
    """
    parts = fsops.split_relpath(relpath)
    try:
        fd = fsops.open_dir(root, "/".join(parts[:-1]))
    except OSError as exc:
        raise _vanished(exc, relpath) from None
    try:
        try:
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except OSError as exc:
            raise _vanished(exc, relpath) from None
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a regular file", relpath)
        yield fd, parts[-1], st
    finally:
        os.close(fd)


def _vanished(exc: OSError, relpath: str) -> OSError:
    """Gone, or reached through a symlink or a file: the source vanished; else as it was."""
    if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
        return FileNotFoundError(errno.ENOENT, "vanished", relpath)
    return exc


def _copy_in(
    sfd: int,
    sname: str,
    before: os.stat_result,
    dfd: int,
    names: Callable[[], Iterator[str]],
    also_taken: Callable[[int, str], bool],
) -> str:
    """Copy the source into a fsynced temp file in ``dfd``; give it a free name."""
    tmp = outputs.temp_name(next(names()))
    try:
        src_fd = os.open(sname, os.O_RDONLY | os.O_NONBLOCK | fsops.FILE_FLAGS, dir_fd=sfd)
        with open(src_fd, "rb") as fin:
            st = os.fstat(fin.fileno())
            if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
                raise FileNotFoundError(errno.ENOENT, "replaced while moved", sname)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | fsops.FILE_FLAGS
            with open(os.open(tmp, flags, 0o600, dir_fd=dfd), "wb") as fout:
                shutil.copyfileobj(fin, fout, _COPY_CHUNK)
                fout.flush()
                os.fchmod(fout.fileno(), stat.S_IMODE(before.st_mode) & 0o777)
                os.utime(fout.fileno(), ns=(before.st_atime_ns, before.st_mtime_ns))
                os.fsync(fout.fileno())
        final = _link_free_name(dfd, tmp, dfd, names(), also_taken)
        if final is None:
            final = _rename_free_name(dfd, tmp, names(), also_taken)
        return final
    finally:
        # After a link the temp name is a second name of the final file.
        with suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)


def _link_free_name(
    sfd: int,
    sname: str,
    dfd: int,
    names: Iterator[str],
    also_taken: Callable[[int, str], bool],
) -> str | None:
    """Hard-link the source to the first free name in ``dfd``; None if links fail here.

    ``link`` fails with EEXIST instead of overwriting, so two movers can never
    claim the same name.
    """
    for candidate in names:
        if also_taken(dfd, candidate):
            continue
        try:
            os.link(sname, candidate, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError:
            # No hard links on this filesystem (or across bind mounts, or
            # protected_hardlinks): the caller copies or renames instead.
            return None
        return candidate
    raise AssertionError("unreachable: the names are endless")


def _rename_free_name(
    dfd: int, tmp: str, names: Iterator[str], also_taken: Callable[[int, str], bool]
) -> str:
    """Fallback for filesystems without hard links: check, then rename (small race)."""
    for candidate in names:
        if fsops.exists_at(dfd, candidate) or also_taken(dfd, candidate):
            continue
        os.replace(tmp, candidate, src_dir_fd=dfd, dst_dir_fd=dfd)
        return candidate
    raise AssertionError("unreachable: the names are endless")
