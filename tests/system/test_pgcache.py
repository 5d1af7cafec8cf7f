"""The result cache on two engines: files on one host (``cache.ResultCache``), a fleet's database.

The shared behaviour runs against both (a real folder, a real PostgreSQL
server); what only the shared cache does (two hosts, entry kinds apart, an
outage) against PostgreSQL alone.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bgsyncd.storage.cache import ResultCache
from bgsyncd.storage.contract import ResultStore
from bgsyncd.storage.postgres.cache import PostgresResultCache
from bgsyncd.storage.postgres.store import PostgresStore
from tests.support.helpers import wait_until


def _png(payload: bytes) -> bytes:
    """A complete PNG-shaped blob (signature ... IEND) carrying ``payload``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"tEXt", payload) + chunk(b"IEND", b"")


def _sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


@pytest.fixture(params=["files", "postgresql"])
def make_cache(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[int], ResultStore]]:
    """Caches of one store (a second one: another daemon, or another host)."""
    queues: list[PostgresStore] = []
    if request.param == "postgresql":
        dsn = request.getfixturevalue("pg_dsn")

        def make(max_bytes: int) -> ResultStore:
            queue = PostgresStore(dsn, f"h{len(queues)}")
            queues.append(queue)
            return PostgresResultCache(queue, max_bytes)
    else:

        def make(max_bytes: int) -> ResultStore:
            return ResultCache(tmp_path / "cache", max_bytes)

    yield make
    for queue in queues:
        queue.close()


def test_a_stored_result_is_found_again_by_a_second_handle(
    make_cache: Callable[[int], ResultStore],
) -> None:
    first = make_cache(10_000)
    data = _png(b"a")
    assert first.get(_sha("a")) is None
    first.put(_sha("a"), data)
    assert first.get(_sha("a")) == data
    second = make_cache(10_000)
    assert second.get(_sha("a")) == data
    assert len(second) == 1 and second.total_bytes == len(data)


def test_the_least_recently_used_entry_goes_first_to_fit_the_size(
    make_cache: Callable[[int], ResultStore],
) -> None:
    a, b, c = _png(b"a" * 100), _png(b"b" * 100), _png(b"c" * 100)
    size = len(a) * 2 + 10
    cache = make_cache(size)
    cache.put(_sha("a"), a)
    cache.put(_sha("b"), b)
    assert cache.get(_sha("a")) == a  # a used after b: b is now the oldest use
    cache.put(_sha("c"), c)
    assert cache.get(_sha("b")) is None
    assert cache.get(_sha("a")) == a and cache.get(_sha("c")) == c
    assert cache.total_bytes <= size and len(cache) == 2


def test_an_entry_larger_than_the_cache_and_a_disabled_cache_store_nothing(
    make_cache: Callable[[int], ResultStore],
) -> None:
    small = make_cache(50)
    small.put(_sha("a"), _png(b"x" * 100))
    assert small.get(_sha("a")) is None and len(small) == 0
    off = make_cache(0)
    assert not off.enabled
    off.put(_sha("b"), _png(b"b"))
    assert off.get(_sha("b")) is None


def test_a_key_that_is_not_a_sha256_is_refused(make_cache: Callable[[int], ResultStore]) -> None:
    cache = make_cache(10_000)
    with pytest.raises(ValueError, match="sha256"):
        cache.put("../../etc/passwd", _png(b"a"))


def test_kinds_of_one_content_are_kept_apart_in_the_shared_cache(pg_dsn: str) -> None:
    with PostgresStore(pg_dsn, "h") as queue:
        cache = PostgresResultCache(queue, 10_000)
        cutout, matte = _png(b"cut"), _png(b"matte")
        cache.put(_sha("a"), cutout)
        cache.put(_sha("a"), matte, "proxy.matte")
        assert cache.get(_sha("a")) == cutout
        assert cache.get(_sha("a"), "proxy.matte") == matte
        assert cache.get(_sha("a"), "original.matte") is None
        with pytest.raises(ValueError, match="kind"):
            cache.get(_sha("a"), "../x")


def test_a_smaller_setting_at_start_evicts_down_to_it(pg_dsn: str) -> None:
    with PostgresStore(pg_dsn, "h") as queue:
        big = PostgresResultCache(queue, 100_000)
        for name in "abcde":
            big.put(_sha(name), _png(name.encode() * 100))
        one = len(_png(b"a" * 100))
        small = PostgresResultCache(queue, one * 2)
        assert len(small) == 2
        assert small.get(_sha("d")) is not None and small.get(_sha("e")) is not None


def test_an_unreachable_database_is_a_miss_and_a_skipped_store_never_an_error(
    pg_server: Any, pg_dsn: str
) -> None:
    with PostgresStore(pg_dsn, "h", timeout=1.0) as queue:
        cache = PostgresResultCache(queue, 10_000)
        cache.put(_sha("a"), _png(b"a"))
        pg_server.stop()
        try:
            assert cache.get(_sha("a")) is None
            cache.put(_sha("b"), _png(b"b"))
            assert cache.total_bytes == len(_png(b"a"))  # the last figure known
        finally:
            pg_server.start()
        wait_until(lambda: cache.get(_sha("a")) is not None, 30, what="the database back")
        assert cache.get(_sha("b")) is None
