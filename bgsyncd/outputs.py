"""Output names, atomic writes, and safe moves into quarantine and ``done``.

Pure filesystem: no image library here. Every write is a temp file in the
target folder (``.<name>.bgsyncd-<16 hex>.tmp``, hidden so watchers and
people ignore it), fsynced, renamed over the final name, and made durable by
an fsync of the folder. Moves never rely on ``rename`` across filesystems:
the file is hard-linked (same filesystem) or copied and fsynced under a temp
name and then linked to its final name, so a name is claimed atomically and
an existing file is never overwritten. The source is unlinked last.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath

_TEMP_MARK = ".bgsyncd-"
_TEMP_NAME = re.compile(r"\..*\.bgsyncd-[0-9a-f]{16}\.tmp", re.DOTALL)
# Room for the temp decoration within the usual 255-byte name limit.
_MAX_TEMP_STEM_BYTES = 200
_COPY_CHUNK = 1024 * 1024
SIDECAR_SUFFIX = ".error.json"


def output_candidates(relpath: str, ext: str) -> Iterator[str]:
    """Output names for input ``relpath`` in order of preference (endless).

    ``dir/a.jpg`` -> ``dir/a.png``, ``dir/a.jpg.png``, ``dir/a.jpg~2.png``,
    ``dir/a.jpg~3.png``... The queue claims the first one no other input owns.
    """
    folder, name = posixpath.split(relpath)
    stem = PurePosixPath(name).stem
    yield posixpath.join(folder, f"{stem}.{ext}")
    if stem != name:  # a name without extension would repeat the first candidate
        yield posixpath.join(folder, f"{name}.{ext}")
    n = 2
    while True:
        yield posixpath.join(folder, f"{name}~{n}.{ext}")
        n += 1


def mask_relpath(cutout_relpath: str, output: str) -> str | None:
    """The mask written beside the cut-out, if ``output`` asks for a separate one.

    ``output = "both"``: ``dir/a.png`` -> ``dir/a.mask.png`` (from the
    cut-out's stem, whatever the cut-out's format). ``"cutout"``: no mask.
    ``"mask"``: None as well, because the mask is then the primary output
    itself: name it with ``output_candidates(relpath, "png")``.
    """
    if output == "both":
        return next(mask_candidates(cutout_relpath))
    if output in ("cutout", "mask"):
        return None
    raise ValueError(f"unknown output kind {output!r}")


def mask_candidates(cutout_relpath: str) -> Iterator[str]:
    """Names for the mask beside a cut-out (endless), for claiming in the queue.

    ``dir/a.png`` -> ``dir/a.mask.png``, ``dir/a.mask~2.png``... The first is
    :func:`mask_relpath`; the others only matter when another input's cut-out
    already owns it (an input named ``a.mask.jpg`` next to ``a.jpg``).
    """
    folder, name = posixpath.split(cutout_relpath)
    stem = PurePosixPath(name).stem
    yield posixpath.join(folder, f"{stem}.mask.png")
    n = 2
    while True:
        yield posixpath.join(folder, f"{stem}.mask~{n}.png")
        n += 1


def sidecar_path(quarantined: Path) -> Path:
    """The error sidecar of a quarantined file: ``photo.jpg`` -> ``photo.jpg.error.json``."""
    return quarantined.with_name(quarantined.name + SIDECAR_SUFFIX)


def is_temp_name(name: str) -> bool:
    """True for the temp-file names this module creates (and cleans up)."""
    return _TEMP_NAME.fullmatch(name) is not None


def fsync_dir(path: Path) -> None:
    """Make renames and unlinks in folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems (certain FUSE and network mounts) cannot fsync a folder.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one.

    Parent folders are created. The file gets mode ``0o666 & ~umask``: the
    kernel applies the umask when the temp file is created, which is exact and,
    unlike reading ``os.umask()``, needs no process-wide set-and-restore.
    """
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / _temp_name(path.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        with open(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(folder)


def cleanup_temp_files(root: Path) -> int:
    """Remove temp files left under ``root`` by a crash; returns how many.

    Only names of our own pattern, only regular files; symlinks are neither
    followed nor removed. Call at start, before anything writes under ``root``.
    """
    removed = 0
    for folder, _dirs, files in os.walk(root, followlinks=False):
        for name in files:
            if not is_temp_name(name):
                continue
            path = Path(folder, name)
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
    return removed


def quarantine_file(
    src: Path, quarantine_root: Path, relpath: str, sidecar: Mapping[str, object]
) -> Path:
    """Move ``src`` to ``<quarantine_root>/<relpath>`` and write its error sidecar.

    A file already quarantined under that name is kept: the newcomer becomes
    ``photo~2.jpg``, ``photo~3.jpg``... (the extension stays last, so it still
    opens), and a name whose sidecar is left over counts as taken too. The
    sidecar ``<final name>.error.json`` holds ``sidecar`` as indented JSON.
    Returns the final path; FileNotFoundError if ``src`` is gone.
    """
    final = _move(src, quarantine_root, relpath, lambda p: sidecar_path(p).exists())
    text = json.dumps(sidecar, indent=2, ensure_ascii=False, default=str) + "\n"
    write_atomic(sidecar_path(final), text.encode("utf-8"))
    return final


def move_to(src: Path, dest_root: Path, relpath: str) -> Path:
    """Move ``src`` to ``<dest_root>/<relpath>`` (``~2``... on a collision).

    Works across filesystems and never overwrites. Returns the final path;
    FileNotFoundError if ``src`` is gone.
    """
    return _move(src, dest_root, relpath, lambda p: False)


def _move(src: Path, dest_root: Path, relpath: str, also_taken: Callable[[Path], bool]) -> Path:
    """The shared move: claim a free name beside the target, then unlink the source."""
    before = os.lstat(src)
    if not stat.S_ISREG(before.st_mode):
        raise ValueError(f"not a regular file: {src}")
    target = _inside(dest_root, relpath)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    final = None
    if os.stat(folder).st_dev == before.st_dev:
        final = _link_free_name(src, target, also_taken)
    if final is None:
        final = _copy_in(src, before, target, also_taken)
    fsync_dir(folder)
    try:
        now = os.lstat(src)
    except FileNotFoundError:
        return final
    # Only remove the file we moved: a new file written under the same name
    # meanwhile is new input, not ours to delete.
    if (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino):
        src.unlink(missing_ok=True)
        fsync_dir(src.parent)
    return final


def _copy_in(
    src: Path, before: os.stat_result, target: Path, also_taken: Callable[[Path], bool]
) -> Path:
    """Copy ``src`` into a fsynced temp file beside ``target``; give it a free name."""
    tmp = target.parent / _temp_name(target.name)
    try:
        src_fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(src_fd, "rb") as fin:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with open(os.open(tmp, flags, 0o600), "wb") as fout:
                shutil.copyfileobj(fin, fout, _COPY_CHUNK)
                fout.flush()
                os.fchmod(fout.fileno(), stat.S_IMODE(before.st_mode) & 0o777)
                os.utime(fout.fileno(), ns=(before.st_atime_ns, before.st_mtime_ns))
                os.fsync(fout.fileno())
        final = _link_free_name(tmp, target, also_taken)
        if final is None:
            final = _rename_free_name(tmp, target, also_taken)
        return final
    finally:
        # After a link the temp name is a second name of the final file.
        tmp.unlink(missing_ok=True)


def _link_free_name(path: Path, target: Path, also_taken: Callable[[Path], bool]) -> Path | None:
    """Hard-link ``path`` to the first free collision name; None if links fail here.

    ``link`` fails with EEXIST instead of overwriting, so two movers can never
    claim the same name.
    """
    for candidate in _numbered(target):
        if also_taken(candidate):
            continue
        try:
            os.link(path, candidate, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError:
            # No hard links on this filesystem (or across bind mounts, or
            # protected_hardlinks): the caller copies or renames instead.
            return None
        return candidate
    raise AssertionError("unreachable: _numbered is endless")


def _rename_free_name(tmp: Path, target: Path, also_taken: Callable[[Path], bool]) -> Path:
    """Fallback for filesystems without hard links: check, then rename (small race)."""
    for candidate in _numbered(target):
        if os.path.lexists(candidate) or also_taken(candidate):
            continue
        os.replace(tmp, candidate)
        return candidate
    raise AssertionError("unreachable: _numbered is endless")


def _numbered(target: Path) -> Iterator[Path]:
    """``photo.jpg``, ``photo~2.jpg``, ``photo~3.jpg``... (endless)."""
    yield target
    stem, suffix = target.stem, target.suffix
    n = 2
    while True:
        yield target.with_name(f"{stem}~{n}{suffix}")
        n += 1


def _inside(root: Path, relpath: str) -> Path:
    """``root/relpath``, refusing a relpath that could leave ``root``."""
    rel = PurePosixPath(relpath)
    if not rel.parts or rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"not a relative path inside the folder: {relpath!r}")
    return root.joinpath(*rel.parts)


def _temp_name(name: str) -> str:
    """A hidden, recognisable, unique temp name for a file to be called ``name``."""
    raw = os.fsencode(name)[:_MAX_TEMP_STEM_BYTES]
    return f".{os.fsdecode(raw)}{_TEMP_MARK}{secrets.token_hex(8)}.tmp"
