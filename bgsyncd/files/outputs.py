"""Output names, atomic writes and temp-file clean-up (moves of inputs: ``moves.py``).

Pure filesystem: no image library here, and every file is reached through
:mod:`bgsyncd.files.fsops` (directory descriptors walked from a folder's root, never
a path string that a swapped symlink could redirect). Every write is a temp
file in the target folder (``.<name>.bgsyncd-<16 hex>.tmp``, hidden so
watchers and people ignore it), fsynced, renamed over the final name, and made
durable by an fsync of the folder.

Errors: a symlink or file on the way under the destination raises ``OSError``
with ``ELOOP`` or ``ENOTDIR`` (a refused write, ``errors.is_refused``), never
anything else.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import time
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

from bgsyncd.files import fsops, rootfd
from bgsyncd.files.names import mask_candidates, output_candidates, sidecar_name

__all__ = [
    "SIDECAR_SUFFIX",
    "cleanup_temp_files",
    "fsync_dir",
    "is_temp_name",
    "mask_candidates",
    "mask_relpath",
    "output_candidates",
    "outputs_newer_than",
    "sidecar_name",
    "temp_name",
    "write_at",
    "write_atomic",
    "write_file",
]

_TEMP_MARK = ".bgsyncd-"
_TEMP_NAME = re.compile(r"\..*\.bgsyncd-[0-9a-f]{16}\.tmp", re.DOTALL)
# Room for the temp decoration (31 bytes) within the 255-byte name limit.
_MAX_TEMP_STEM_BYTES = 200
SIDECAR_SUFFIX = ".error.json"


def mask_relpath(cutout_relpath: str, output: str, relpath: str) -> str | None:
    """The mask written beside the cut-out, if ``output`` asks for a separate one.

    ``output = "both"``: ``dir/a.png`` -> ``dir/a.mask.png`` (from the
    cut-out's stem, whatever the cut-out's format). ``"cutout"``: no mask.
    ``"mask"``: None as well, because the mask is then the primary output
    itself: name it with ``output_candidates(relpath, "png")``. ``relpath`` is
    the input's, for the hash of a shortened name.
    """
    if output == "both":
        return next(mask_candidates(cutout_relpath, relpath))
    if output in ("cutout", "mask"):
        return None
    raise ValueError(f"unknown output kind {output!r}")


def is_temp_name(name: str) -> bool:
    """True for the temp-file names this module creates (and cleans up)."""
    return _TEMP_NAME.fullmatch(name) is not None


def fsync_dir(path: Path) -> None:
    """Make renames and unlinks in folder ``path`` durable (a root: opened by path)."""
    fd = fsops.open_root(path)
    try:
        fsops.fsync_fd(fd)
    finally:
        os.close(fd)


def write_file(root: Path, relpath: str, data: bytes) -> None:
    """Write ``data`` to ``root/relpath`` so that readers see the old file or the new one.

    Missing folders under ``root`` are created. The file gets mode
    ``0o666 & ~umask``: the kernel applies the umask when the temp file is
    created, which is exact and needs no process-wide set-and-restore.
    """
    with fsops.parent_of(root, relpath, create=True) as (fd, name):
        write_at(fd, name, data)


def write_atomic(path: Path, data: bytes) -> None:
    """:func:`write_file` for a file of our own (the result cache), outside the folders.

    Its folder is reached, and made when missing, without following a symlink
    at any level (:mod:`bgsyncd.files.rootfd`): a folder above it swapped for a
    symlink refuses the write (``ELOOP``, ``ENOTDIR``) instead of leading outside.
    """
    try:
        fd = rootfd.open_path(path.parent)
    except FileNotFoundError:
        rootfd.make_dirs(path.parent)
        fd = rootfd.open_path(path.parent)
    try:
        write_at(fd, path.name, data)
    finally:
        os.close(fd)


def write_at(dir_fd: int, name: str, data: bytes) -> None:
    tmp = temp_name(name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | fsops.FILE_FLAGS
    fd = os.open(tmp, flags, 0o666, dir_fd=dir_fd)
    try:
        with open(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    fsops.fsync_fd(dir_fd)


def cleanup_temp_files(root: Path, *, older_than: float | None = None) -> int:
    """Remove temp files left under ``root`` by a crash; returns how many.

    Only names of our own pattern, only regular files; symlinks are neither
    followed nor removed. Call at start, before anything writes under ``root``.
    With ``older_than`` (seconds), only files unchanged that long go: in a
    folder other hosts write into, a fresh temp file is another host's output
    being written.
    """
    removed = 0
    before = None if older_than is None else time.time() - older_than
    for fd, name in fsops.walk_files(root):
        if not is_temp_name(name):
            continue
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and (before is None or st.st_mtime < before):
                os.unlink(name, dir_fd=fd)
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def outputs_newer_than(
    outbox: Path, relpaths: Iterable[str], mtime_ns: int, before_ns: int | None = None
) -> bool:
    """Every one of ``relpaths`` is a regular file in ``outbox`` modified at or after
    ``mtime_ns`` (and before ``before_ns``, if given). An output folder swapped
    for a symlink counts as missing (walked by directory descriptors)."""
    for rel in relpaths:
        st = fsops.regular_stat(outbox, rel)
        if st is None or st.st_mtime_ns < mtime_ns:
            return False
        if before_ns is not None and st.st_mtime_ns >= before_ns:
            return False
    return True


def temp_name(name: str) -> str:
    """A hidden, recognisable, unique temp name for a file to be called ``name``."""
    raw = os.fsencode(name)[:_MAX_TEMP_STEM_BYTES]
    # Cut at a character boundary: a temp name is a valid UTF-8 name too.
    stem = raw.decode("utf-8", "ignore") if _is_utf8(os.fsencode(name)) else os.fsdecode(raw)
    return f".{stem}{_TEMP_MARK}{secrets.token_hex(8)}.tmp"


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
