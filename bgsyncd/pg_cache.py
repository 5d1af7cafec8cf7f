"""API results shared by the fleet on PostgreSQL (``storage.ResultStore``).

The interface of ``cache.ResultCache`` (a file per entry on one host), kept in
the database so identical content on two hosts costs one credit (SPEC §8):
an entry is the PNG bytes (``bytea``) under its input's sha256 and entry kind
(``"original.cutout"``, ``"original.matte"``, ``"proxy.matte"``: the upload
setting and what came back). A hit counts as a use (``used_at``, the server's
clock); after each store the least recently used entries go until the total
fits ``cache_max_megabytes``, under an advisory lock so two hosts evicting at
once agree. The cache only saves credits: a database that cannot be reached
is a miss on ``get`` and a skipped ``put``, never a failed job.
"""

from __future__ import annotations

import re

from bgsyncd.errors import BgsyncdError
from bgsyncd.logs import get_logger
from bgsyncd.pg_db import NOW, PgBase
from bgsyncd.storage import ResultStore

log = get_logger("bgsyncd.pg_cache")

DEFAULT_KIND = "original.cutout"  # cache.ORIGINAL_CUTOUT: what 0.1 stored
# pg_advisory_xact_lock key of eviction, beside pg_db.MIGRATION_LOCK.
EVICTION_LOCK = 0x62677379_6E630002
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KIND = re.compile(r"[a-z]+\.[a-z]+")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
# Keeps the newest entries whose running total fits; deletes the rest.
_SQL_EVICT = """
DELETE FROM results WHERE key IN (
    SELECT key FROM (
        SELECT key, SUM(size) OVER (ORDER BY used_at DESC, key DESC) AS running FROM results
    ) AS ranked WHERE running > %s)
"""
_SQL_TOTALS = "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM results"


class PgResultCache:
    """A size-bounded store of PNG results in the fleet's database, LRU by last use.

    ``max_bytes`` 0 disables it: ``get`` always misses, ``put`` stores nothing.
    """

    def __init__(self, queue: PgBase, max_bytes: int) -> None:
        self._queue = queue
        self.max_bytes = max_bytes
        self._last_total = 0
        self._last_len = 0
        if self.enabled:
            self._evict_now()

    @property
    def enabled(self) -> bool:
        """False when the cache was configured with size 0."""
        return self.max_bytes > 0

    @property
    def total_bytes(self) -> int:
        """The size of all entries (the last known figure while the database is away)."""
        try:
            with self._queue.transaction() as conn:
                row = conn.execute("SELECT COALESCE(SUM(size), 0) FROM results").fetchone()
            self._last_total = 0 if row is None else int(row[0])
        except BgsyncdError:
            pass
        return self._last_total

    def __len__(self) -> int:
        try:
            with self._queue.transaction() as conn:
                row = conn.execute("SELECT COUNT(*) FROM results").fetchone()
            self._last_len = 0 if row is None else int(row[0])
        except BgsyncdError:
            pass
        return self._last_len

    def get(self, sha256: str, kind: str = DEFAULT_KIND) -> bytes | None:
        """The stored result of ``kind`` for ``sha256``, or None; a hit counts as a use."""
        if not self.enabled:
            return None
        key = _key(sha256, kind)
        try:
            with self._queue.transaction() as conn:
                row = conn.execute(
                    f"UPDATE results SET used_at = {NOW} WHERE key = %s RETURNING data", (key,)
                ).fetchone()
        except BgsyncdError as exc:
            log.warning("cache.read_failed", error=str(exc))
            return None
        if row is None:
            return None
        data = bytes(row[0])
        if not (data.startswith(_PNG_SIGNATURE) and data.endswith(_PNG_END)):
            self._drop(key)
            return None
        return data

    def put(self, sha256: str, data: bytes, kind: str = DEFAULT_KIND) -> None:
        """Store the PNG ``data`` of ``kind`` for ``sha256``, then evict old entries to fit."""
        if not self.enabled or len(data) > self.max_bytes:
            return
        key = _key(sha256, kind)
        try:
            with self._queue.transaction() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (EVICTION_LOCK,))
                conn.execute(
                    "INSERT INTO results (key, data, size, used_at)"
                    f" VALUES (%s, %s, %s, {NOW}) ON CONFLICT (key) DO UPDATE SET"
                    " data = excluded.data, size = excluded.size, used_at = excluded.used_at",
                    (key, data, len(data)),
                )
                conn.execute(_SQL_EVICT, (self.max_bytes,))
                row = conn.execute(_SQL_TOTALS).fetchone()
            if row is not None:
                self._last_total, self._last_len = int(row[0]), int(row[1])
        except BgsyncdError as exc:
            log.warning("cache.write_failed", error=str(exc))

    def _evict_now(self) -> None:
        """Fit the total to ``max_bytes`` (a smaller setting than the last run's)."""
        try:
            with self._queue.transaction() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (EVICTION_LOCK,))
                conn.execute(_SQL_EVICT, (self.max_bytes,))
        except BgsyncdError as exc:
            log.warning("cache.evict_failed", error=str(exc))

    def _drop(self, key: str) -> None:
        try:
            with self._queue.transaction() as conn:
                conn.execute("DELETE FROM results WHERE key = %s", (key,))
        except BgsyncdError as exc:
            log.warning("cache.write_failed", error=str(exc))


def _key(sha256: str, kind: str) -> str:
    """``<sha256>.<kind>``; refuses anything but a lowercase hex digest and a known shape."""
    if _SHA256.fullmatch(sha256) is None:
        raise ValueError("cache key must be a lowercase hex sha256")
    if _KIND.fullmatch(kind) is None:
        raise ValueError(f"unknown cache entry kind {kind!r}")
    return f"{sha256}.{kind}"


def _is_a_result_store(cache: PgResultCache) -> ResultStore:
    """Checked by mypy: the shared cache keeps the result store's contract."""
    return cache
