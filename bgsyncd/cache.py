"""API results by content hash, least recently used evicted first.

Identical input content (same sha256, under any name) costs no second credit:
the worker stores the result under the input's hash and finds it again. Files
live at ``<root>/<sha[:2]>/<sha>.png``; a read touches the file's mtime, so
recency survives a restart. The total size is scanned once at start and then
kept in memory. A missing or damaged entry is a miss, never an error.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

from bgsyncd.errors import describe_os_error
from bgsyncd.logs import get_logger
from bgsyncd.outputs import cleanup_temp_files, write_atomic

log = get_logger("bgsyncd.cache")

_SHA256 = re.compile(r"[0-9a-f]{64}")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The IEND chunk, CRC included, ends every complete PNG.
_PNG_END = b"IEND\xaeB`\x82"


class ResultCache:
    """A size-bounded, thread-safe store of PNG results keyed by sha256.

    ``max_bytes`` 0 disables it: ``get`` always misses, ``put`` stores nothing.
    """

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # sha -> size in bytes, least recently used first.
        self._entries: OrderedDict[str, int] = OrderedDict()
        self._total = 0
        if self.enabled:
            root.mkdir(parents=True, exist_ok=True)
            cleanup_temp_files(root)
            self._scan()
            self._evict()

    @property
    def enabled(self) -> bool:
        """False when the cache was configured with size 0."""
        return self.max_bytes > 0

    @property
    def total_bytes(self) -> int:
        """The size of all entries, as tracked in memory."""
        with self._lock:
            return self._total

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, sha256: str) -> bytes | None:
        """The stored result for ``sha256``, or None; a hit counts as a use."""
        if not self.enabled:
            return None
        path = self._path(sha256)
        with self._lock:
            try:
                data = path.read_bytes()
            except OSError:
                self._forget(sha256)
                return None
            if not _looks_complete(data):
                self._drop(sha256, path)
                return None
            # Recency is a hint: a cache whose mtime cannot be set still serves hits.
            with contextlib.suppress(OSError):
                os.utime(path)
            self._account(sha256, len(data))
            self._evict()
            return data

    def put(self, sha256: str, data: bytes) -> None:
        """Store the PNG ``data`` for ``sha256``, then evict old entries to fit ``max_bytes``.

        A failed write (disk full...) is logged and skipped: the cache only saves
        credits, it must never fail the job that produced the result.
        """
        if not self.enabled or len(data) > self.max_bytes:
            return
        path = self._path(sha256)
        with self._lock:
            try:
                write_atomic(path, data)
            except OSError as exc:
                log.warning("cache.write_failed", error=describe_os_error(exc))
                return
            self._account(sha256, len(data))
            self._evict()

    def _path(self, sha256: str) -> Path:
        # The key becomes a file name: refuse anything but a lowercase hex digest.
        if _SHA256.fullmatch(sha256) is None:
            raise ValueError("cache key must be a lowercase hex sha256")
        return self.root / sha256[:2] / f"{sha256}.png"

    def _scan(self) -> None:
        """Index what is on disk, oldest use first."""
        found: list[tuple[int, str, int]] = []
        for sub in self.root.iterdir():
            if not sub.is_dir() or sub.is_symlink():
                continue
            for entry in os.scandir(sub):
                sha = entry.name[:-4]
                if not (entry.name.endswith(".png") and _SHA256.fullmatch(sha)):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if entry.is_file(follow_symlinks=False) and sha[:2] == sub.name:
                    found.append((info.st_mtime_ns, sha, info.st_size))
        for _mtime, sha, size in sorted(found):
            self._entries[sha] = size
            self._total += size

    def _account(self, sha256: str, size: int) -> None:
        """Record ``sha256`` as just used, with its current size."""
        self._total += size - self._entries.pop(sha256, 0)
        self._entries[sha256] = size

    def _forget(self, sha256: str) -> None:
        self._total -= self._entries.pop(sha256, 0)

    def _drop(self, sha256: str, path: Path) -> None:
        self._forget(sha256)
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)

    def _evict(self) -> None:
        """Remove least recently used entries until the total fits."""
        while self._total > self.max_bytes and self._entries:
            sha = next(iter(self._entries))
            self._drop(sha, self._path(sha))


def _looks_complete(data: bytes) -> bool:
    """A cheap check that ``data`` is a whole PNG (a damaged entry is a miss)."""
    return data.startswith(_PNG_SIGNATURE) and data.endswith(_PNG_END)
