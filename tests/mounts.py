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
