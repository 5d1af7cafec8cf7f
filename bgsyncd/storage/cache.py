"""API results by content hash, least recently used evicted first.

Identical input content (same sha256, under any name) costs no second credit:
the worker stores what the API returned under the input's hash and the upload
setting, and finds it again (SPEC §5 "What is sent"). One matte serves every
folder and output setting: the outputs are made from it and the original each
time. An entry's kind is part of its file name, under ``<root>/<sha[:2]>/``:

- ``<sha>.png``: a cut-out, ``upload = "original"``. This is 0.1's layout
  (0.1 stored full cut-outs keyed by content alone), so 0.1's entries keep
  serving ``"original"`` mode; they are never taken for mattes.
- ``<sha>.original.matte.png``: a matte, ``"original"`` mode's shrink path.
- ``<sha>.proxy.matte.png``: a matte at the size it came, ``upload = "proxy"``.

A read touches the file's mtime, so recency survives a restart. The total size
is scanned once at start and then kept in memory. A missing or damaged entry
is a miss, never an error.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

from bgsyncd.errors import describe_os_error
from bgsyncd.files.outputs import cleanup_temp_files, write_atomic
from bgsyncd.logs import get_logger

log = get_logger("bgsyncd.cache")

_SHA256 = re.compile(r"[0-9a-f]{64}")
# Every file name an entry may have: "<sha>.png", "<sha>.<upload>.matte.png".
_KEY = re.compile(r"([0-9a-f]{64})(?:\.original\.matte|\.proxy\.matte)?\.png")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The IEND chunk, CRC included, ends every complete PNG.
_PNG_END = b"IEND\xaeB`\x82"

ORIGINAL_CUTOUT = "original.cutout"
"""A cut-out from ``/v1.0/image-without-background`` (``upload = "original"``)."""
ORIGINAL_MATTE = "original.matte"
"""A matte of ``"original"`` mode's reduced copy (a file over ``max_upload_bytes``)."""
PROXY_MATTE = "proxy.matte"
"""A matte of what ``upload = "proxy"`` sent."""

# Entry kind -> file name suffix after the sha256. The cut-out keeps 0.1's name.
_SUFFIXES = {
    ORIGINAL_CUTOUT: ".png",
    ORIGINAL_MATTE: ".original.matte.png",
    PROXY_MATTE: ".proxy.matte.png",
}


def entry_kind(upload: str, matte: bool) -> str:
    """The kind of entry an answer makes: the upload setting and what came back."""
    kind = f"{upload}.{'matte' if matte else 'cutout'}"
    if kind not in _SUFFIXES:
        raise ValueError(f"no cache entry for a {'matte' if matte else 'cut-out'} in {upload!r}")
    return kind


class ResultCache:
    """A size-bounded, thread-safe store of PNG results keyed by sha256 and entry kind.

    ``max_bytes`` 0 disables it: ``get`` always misses, ``put`` stores nothing.
    """

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # file name without ".png" ("<sha>", "<sha>.proxy.matte") -> size in bytes,
        # least recently used first.
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

    def get(self, sha256: str, kind: str = ORIGINAL_CUTOUT) -> bytes | None:
        """The stored result of ``kind`` for ``sha256``, or None; a hit counts as a use."""
        if not self.enabled:
            return None
        key = _key(sha256, kind)
        path = self._path(key)
        with self._lock:
            try:
                data = path.read_bytes()
            except OSError:
                self._forget(key)
                return None
            if not _looks_complete(data):
                self._drop(key, path)
                return None
            # Recency is a hint: a cache whose mtime cannot be set still serves hits.
            with contextlib.suppress(OSError):
                os.utime(path)
            self._account(key, len(data))
            self._evict()
            return data

    def put(self, sha256: str, data: bytes, kind: str = ORIGINAL_CUTOUT) -> None:
        """Store the PNG ``data`` of ``kind`` for ``sha256``, then evict old entries to fit.

        A failed write (disk full...) is logged and skipped: the cache only saves
        credits, it must never fail the job that produced the result.
        """
        if not self.enabled or len(data) > self.max_bytes:
            return
        key = _key(sha256, kind)
        path = self._path(key)
        with self._lock:
            try:
                write_atomic(path, data)
            except OSError as exc:
                log.warning("cache.write_failed", error=describe_os_error(exc))
                return
            self._account(key, len(data))
            self._evict()

    def fetching(self, sha256: str) -> contextlib.AbstractContextManager[None]:
        """Nothing to claim: one host's threads wait on the worker's own lock."""
        return contextlib.nullcontext()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.png"

    def _scan(self) -> None:
        """Index what is on disk, oldest use first."""
        found: list[tuple[int, str, int]] = []
        for sub in self.root.iterdir():
            if not sub.is_dir() or sub.is_symlink():
                continue
            for entry in os.scandir(sub):
                named = _KEY.fullmatch(entry.name)
                if named is None:
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if entry.is_file(follow_symlinks=False) and named.group(1)[:2] == sub.name:
                    found.append((info.st_mtime_ns, entry.name[:-4], info.st_size))
        for _mtime, key, size in sorted(found):
            self._entries[key] = size
            self._total += size

    def _account(self, key: str, size: int) -> None:
        """Record ``key`` as just used, with its current size."""
        self._total += size - self._entries.pop(key, 0)
        self._entries[key] = size

    def _forget(self, key: str) -> None:
        self._total -= self._entries.pop(key, 0)

    def _drop(self, key: str, path: Path) -> None:
        self._forget(key)
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)

    def _evict(self) -> None:
        """Remove least recently used entries until the total fits."""
        while self._total > self.max_bytes and self._entries:
            key = next(iter(self._entries))
            self._drop(key, self._path(key))


def _key(sha256: str, kind: str) -> str:
    """The entry's file name without ".png"; refuses anything but a lowercase hex digest."""
    # The key becomes a file name.
    if _SHA256.fullmatch(sha256) is None:
        raise ValueError("cache key must be a lowercase hex sha256")
    suffix = _SUFFIXES.get(kind)
    if suffix is None:
        raise ValueError(f"unknown cache entry kind {kind!r}")
    return sha256 + suffix[: -len(".png")]


def _looks_complete(data: bytes) -> bool:
    """A cheap check that ``data`` is a whole PNG (a damaged entry is a miss)."""
    return data.startswith(_PNG_SIGNATURE) and data.endswith(_PNG_END)
