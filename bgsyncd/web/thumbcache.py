"""Thumbnails kept in the state folder, within a size bound (SPEC §11).

Each is made once (``bgsyncd.imaging.thumbs``) and kept as
``<state>/thumbs/<key>.png``; when the folder holds more than ``max_bytes`` the
least recently used are removed. The names are ours (a key of hex digits and
a kind), never a file's name; files are opened with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import os
import re
import threading
from contextlib import suppress
from pathlib import Path

DEFAULT_MAX_BYTES = 32 * 1024 * 1024
_KEY = re.compile(r"[0-9a-f]{1,64}-(before|after)")


class ThumbCache:
    """PNG thumbnails by key, at most ``max_bytes`` in all (least recently used go first)."""

    def __init__(self, folder: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError(f"not a thumbnail key: {key!r}")
        return self.folder / f"{key}.png"

    def get(self, key: str) -> bytes | None:
        """The thumbnail kept under ``key``, or None."""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(self.max_bytes + 1)
        with suppress(OSError):
            os.utime(path)  # recently used: kept longest
        return data

    def put(self, key: str, data: bytes) -> None:
        """Keep ``data`` under ``key``, then trim the folder to the bound."""
        path = self._path(key)
        with self._lock:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            temp = path.with_name(f".{path.name}.tmp")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(temp, path)
            self._trim()

    def total_bytes(self) -> int:
        """What the kept thumbnails take."""
        return sum(size for _, size, _ in self._entries())

    def _entries(self) -> list[tuple[float, int, Path]]:
        found = []
        with suppress(FileNotFoundError), os.scandir(self.folder) as it:
            for entry in it:
                if entry.name.endswith(".png") and entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    found.append((st.st_mtime, st.st_size, Path(entry.path)))
        return found

    def _trim(self) -> None:
        entries = sorted(self._entries(), key=lambda e: e[0])
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= self.max_bytes:
                break
            with suppress(FileNotFoundError):
                path.unlink()
            total -= size
