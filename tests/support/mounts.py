"""Real tmpfs mounts for the disk-fault tests: full disks and read-only remounts.

Mounting needs root (CI runs the suite as root). Elsewhere the tests that use
:func:`tmpfs` are skipped with the reason the kernel gave, never faked.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_FILLER = ".filler"


class Tmpfs:
    """One mounted tmpfs of a fixed size at ``path``."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        self.size = size

    def fill(self) -> None:
        """Write until the filesystem says ENOSPC: nothing more fits afterwards."""
        chunk = bytes(64 * 1024)
        fd = os.open(self.path / _FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if len(chunk) > 1:
                        chunk = chunk[: len(chunk) // 2]  # fill the last pages too
                        continue
                    return
        finally:
            os.close(fd)

    def free(self) -> None:
        """Remove what :meth:`fill` wrote."""
        (self.path / _FILLER).unlink(missing_ok=True)

    def readonly(self) -> None:
        """Remount read-only: every write fails with EROFS (files stay readable)."""
        _mount("-o", "remount,ro", str(self.path))

    def readwrite(self) -> None:
        """Remount read-write."""
        _mount("-o", "remount,rw", str(self.path))


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise OSError(f"mount {' '.join(args)}: {result.stderr.strip()}")


@contextmanager
def tmpfs(path: Path, size: str = "1m") -> Iterator[Tmpfs]:
    """Mount a tmpfs of ``size`` at ``path`` (created), unmount it afterwards.

    Skips the test with the reason when mounting is not permitted here.
    """
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield Tmpfs(path, size)
    finally:
        # Lazy: a daemon subprocess killed a moment ago may still hold a file open.
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


class Ext4:
    """A small ext4 filesystem in a file, loop-mounted at ``path`` with ``errors=remount-ro``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self) -> None:
        """Make the kernel see a filesystem error: it goes read-only at once, files open or not.

        This is what a disk going bad does under a running daemon (``mount -o
        remount,ro`` would refuse: files are open for writing).
        """
        source = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(self.path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        Path("/sys/fs/ext4", Path(source).name, "trigger_fs_error").write_text("test\n")


@contextmanager
def ext4(path: Path, size: str = "32M") -> Iterator[Ext4]:
    """Mount a fresh ext4 image of ``size`` at ``path``; skip where that is not permitted."""
    image = path.with_name(path.name + ".img")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    made = subprocess.run(
        ["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True, check=False
    )
    if made.returncode != 0:
        pytest.skip(f"cannot make an ext4 image here: {made.stderr.strip()}")
    mounted = subprocess.run(
        ["mount", "-o", "loop,errors=remount-ro", str(image), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 image here (needs root): {mounted.stderr.strip()}")
    try:
        yield Ext4(path)
    finally:
        # The loop device is released with the last user (autoclear).
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


ENOSPC_TEXT = "[Errno 28] No space left on device"


EROFS_TEXT = "[Errno 30] Read-only file system"
