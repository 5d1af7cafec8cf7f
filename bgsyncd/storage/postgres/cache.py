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

Content in flight (SPEC §8): ``fetching(sha256)`` claims the content hash for
the fleet (a ``content_claims`` row) while its request runs, and a host that
finds it claimed by another waits for that answer, then takes it from here.
A claim is void once its host stops beating for ``lease_seconds`` (killed,
frozen, cut off: the ``hosts`` row, same life), or is older than
``max_wait_seconds``; the wait never lasts much longer, and a database that
fails ends it (the request goes out unclaimed).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bgsyncd.errors import BgsyncdError, QueueUnavailable
from bgsyncd.logs import get_logger
from bgsyncd.storage.contract import ResultStore
from bgsyncd.storage.postgres.db import NOW, PgBase

log = get_logger("bgsyncd.pg_cache")

DEFAULT_KIND = "original.cutout"  # cache.ORIGINAL_CUTOUT: what 0.1 stored
# pg_advisory_xact_lock key of eviction, beside db.MIGRATION_LOCK.
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
# How often a host waiting for another host's answer looks again.
CONTENT_POLL_SECONDS = 0.2
# Claim a content hash: new, or taken from this host's earlier run, from a host
# whose heartbeat stopped (or that started again since), or from a claim too old.
_SQL_CLAIM_CONTENT = f"""
INSERT INTO content_claims AS c (sha256, host, instance, claimed_at)
VALUES (%(sha)s, %(host)s, %(instance)s, {NOW})
ON CONFLICT (sha256) DO UPDATE SET
    host = excluded.host, instance = excluded.instance, claimed_at = excluded.claimed_at
WHERE c.host = excluded.host
    OR c.claimed_at < excluded.claimed_at - %(hold)s
    OR NOT EXISTS (
        SELECT 1 FROM hosts h WHERE h.id = c.host AND h.instance = c.instance
            AND h.last_seen > excluded.claimed_at - %(lease)s)
RETURNING 1
"""


class PostgresResultCache:
    """A size-bounded store of PNG results in the fleet's database, LRU by last use.

    ``max_bytes`` 0 disables it: ``get`` always misses, ``put`` stores nothing,
    and ``fetching`` claims nothing (there would be no answer to wait for).
    ``instance`` is this daemon's life in the ``hosts`` table (``fleet.membership.Membership``).
    """

    def __init__(
        self,
        queue: PgBase,
        max_bytes: int,
        *,
        instance: str = "",
        lease_seconds: float = 60.0,
        max_wait_seconds: float = 180.0,
    ) -> None:
        self._queue = queue
        self.max_bytes = max_bytes
        self._instance = instance
        self._lease = lease_seconds
        self._max_wait = max_wait_seconds
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

    @contextmanager
    def fetching(self, sha256: str) -> Iterator[None]:
        """Hold the fleet's claim on this content while its request runs (see the module)."""
        claimed = self.enabled and self._claim_content(sha256)
        try:
            yield
        except QueueUnavailable:
            # The database is away: giving the claim back would only add a wait
            # before the pause. It is void once this host's heartbeat lapses,
            # and this host's own next claim of the content takes it back.
            claimed = False
            raise
        finally:
            if claimed:
                self._release_content(sha256)

    def _claim_content(self, sha256: str) -> bool:
        """Claim ``sha256``, waiting while another live host holds it; False when the
        database fails or the wait runs out (the request then goes out unclaimed)."""
        params = {
            "sha": sha256, "host": self._queue.host_id, "instance": self._instance,
            "hold": self._max_wait, "lease": self._lease,
        }  # fmt: skip
        give_up = time.monotonic() + self._max_wait + self._lease
        waited = False
        while True:
            try:
                with self._queue.transaction() as conn:
                    row = conn.execute(_SQL_CLAIM_CONTENT, params).fetchone()
            except BgsyncdError as exc:
                log.warning("cache.content_claim_failed", error=str(exc))
                return False
            if row is not None:
                return True
            if not waited:
                waited = True
                log.info(
                    "cache.content_wait", sha256=sha256[:16],
                    note="another host is fetching this content: waiting for its answer",
                )  # fmt: skip
            if time.monotonic() >= give_up:
                log.warning("cache.content_wait_expired", sha256=sha256[:16])
                return False
            time.sleep(CONTENT_POLL_SECONDS)

    def _release_content(self, sha256: str) -> None:
        try:
            with self._queue.transaction() as conn:
                conn.execute(
                    "DELETE FROM content_claims WHERE sha256 = %s AND host = %s AND instance = %s",
                    (sha256, self._queue.host_id, self._instance),
                )
        except BgsyncdError as exc:  # void once this host stops, or once too old
            log.warning("cache.content_release_failed", error=str(exc))

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


def _is_a_result_store(cache: PostgresResultCache) -> ResultStore:
    """Checked by mypy: the shared cache keeps the result store's contract."""
    return cache
