"""cache: results by content hash with LRU eviction, on real files."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from bgsyncd.storage.cache import (
    ORIGINAL_CUTOUT,
    ORIGINAL_MATTE,
    PROXY_MATTE,
    ResultCache,
    entry_kind,
)


def _sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def _png(size: int) -> bytes:
    """A real PNG of exactly ``size`` bytes (padded with a private ancillary chunk)."""
    buf = io.BytesIO()
    Image.new("L", (4, 4), 128).save(buf, "PNG")
    png = buf.getvalue()
    pad = size - len(png) - 12
    assert pad >= 0
    body = b"p" * pad
    chunk = struct.pack(">I", pad) + b"prVt" + body + struct.pack(">I", zlib.crc32(b"prVt" + body))
    return png[:33] + chunk + png[33:]  # after the signature and IHDR


def _entry(root: Path, sha: str) -> Path:
    return root / sha[:2] / f"{sha}.png"


def test_put_then_get_returns_the_bytes(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache", 10_000)
    data = _png(500)
    cache.put(_sha(1), data)
    assert cache.get(_sha(1)) == data
    assert _entry(tmp_path / "cache", _sha(1)).read_bytes() == data
    assert cache.get(_sha(2)) is None
    assert cache.total_bytes == 500


def test_least_recently_used_is_evicted_first(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = ResultCache(root, 1000)
    for n in (1, 2, 3):
        cache.put(_sha(n), _png(300))
    assert cache.get(_sha(1)) is not None  # 1 is now the most recent; 2 the least
    cache.put(_sha(4), _png(300))
    assert cache.get(_sha(2)) is None
    assert not _entry(root, _sha(2)).exists()
    assert all(cache.get(_sha(n)) is not None for n in (1, 3, 4))
    assert cache.total_bytes == 900 <= cache.max_bytes


def test_recency_and_total_survive_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = ResultCache(root, 1000)
    for n in (1, 2, 3):
        cache.put(_sha(n), _png(300))
    # Give each entry a distinct, known age, then use the oldest one.
    for age, n in enumerate((1, 2, 3)):
        os.utime(_entry(root, _sha(n)), ns=(0, (1_000_000 + age) * 10**9))
    reopened = ResultCache(root, 1000)
    assert reopened.total_bytes == 900 and len(reopened) == 3
    assert reopened.get(_sha(1)) is not None
    reopened.put(_sha(4), _png(300))
    assert reopened.get(_sha(2)) is None  # the least recently used after the restart


def test_a_smaller_limit_at_start_evicts_at_once(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = ResultCache(root, 10_000)
    for n in range(5):
        cache.put(_sha(n), _png(300))
    assert ResultCache(root, 700).total_bytes <= 700
    assert sum(1 for _ in root.rglob("*.png")) == 2


def test_replacing_an_entry_keeps_the_total_right(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache", 10_000)
    cache.put(_sha(1), _png(300))
    cache.put(_sha(1), _png(400))
    assert cache.total_bytes == 400 and len(cache) == 1


def test_an_entry_larger_than_the_cache_is_not_stored(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache", 1000)
    cache.put(_sha(1), _png(300))
    cache.put(_sha(2), _png(1500))
    assert cache.get(_sha(2)) is None
    assert cache.get(_sha(1)) is not None


def test_size_zero_disables_the_cache(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache", 0)
    assert not cache.enabled
    cache.put(_sha(1), _png(300))
    assert cache.get(_sha(1)) is None
    assert not (tmp_path / "cache").exists()


def test_a_corrupt_entry_is_a_miss_and_is_removed(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = ResultCache(root, 10_000)
    data = _png(500)
    cache.put(_sha(1), data)
    _entry(root, _sha(1)).write_bytes(data[:200])  # truncated on disk
    assert cache.get(_sha(1)) is None
    assert not _entry(root, _sha(1)).exists()
    assert cache.total_bytes == 0


def test_a_missing_entry_is_a_miss(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = ResultCache(root, 10_000)
    cache.put(_sha(1), _png(500))
    _entry(root, _sha(1)).unlink()
    assert cache.get(_sha(1)) is None
    assert cache.total_bytes == 0


def test_start_ignores_strangers_and_removes_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    (root / "ab").mkdir(parents=True)
    (root / "ab" / "notes.txt").write_bytes(b"x" * 5000)
    (root / "ab" / ".x.png.bgsyncd-0123456789abcdef.tmp").write_bytes(b"x" * 5000)
    cache = ResultCache(root, 10_000)
    assert cache.total_bytes == 0
    assert not (root / "ab" / ".x.png.bgsyncd-0123456789abcdef.tmp").exists()
    assert (root / "ab" / "notes.txt").exists()


def test_keys_must_be_sha256_hex(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache", 10_000)
    for bad in ("../../etc/passwd", "ABC", _sha(1).upper()):
        with pytest.raises(ValueError, match="sha256"):
            cache.put(bad, _png(300))


def test_a_failed_write_is_skipped_not_raised(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = ResultCache(root, 10_000)
    (root / _sha(1)[:2]).write_bytes(b"a file where the folder should be")
    cache.put(_sha(1), _png(300))
    assert cache.get(_sha(1)) is None and cache.total_bytes == 0


def test_concurrent_puts_and_gets_keep_the_bound(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache", 3000)

    def work(n: int) -> None:
        cache.put(_sha(n), _png(300))
        cache.get(_sha(n - 1))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(100)))
    on_disk = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*.png"))
    assert on_disk == cache.total_bytes <= 3000


# -- entry kinds: what the API returned, by content and upload setting (SPEC §5) ----------


def test_a_matte_and_a_cutout_of_the_same_content_are_separate_entries(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = ResultCache(root, 10_000)
    matte, cutout, shrunk = _png(300), _png(400), _png(500)
    cache.put(_sha(1), matte, PROXY_MATTE)
    assert cache.get(_sha(1)) is None  # a matte is never taken for a cut-out
    assert cache.get(_sha(1), ORIGINAL_MATTE) is None  # nor for the other setting's matte
    cache.put(_sha(1), cutout, ORIGINAL_CUTOUT)
    cache.put(_sha(1), shrunk, ORIGINAL_MATTE)
    assert cache.get(_sha(1), PROXY_MATTE) == matte
    assert cache.get(_sha(1), ORIGINAL_CUTOUT) == cutout
    assert cache.get(_sha(1), ORIGINAL_MATTE) == shrunk
    assert sorted(p.name for p in (root / _sha(1)[:2]).iterdir()) == [
        f"{_sha(1)}.original.matte.png",
        f"{_sha(1)}.png",
        f"{_sha(1)}.proxy.matte.png",
    ]
    assert ResultCache(root, 10_000).total_bytes == 1200  # every kind is found again at start


def test_an_entry_laid_out_by_0_1_serves_original_mode_and_never_as_a_matte(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cache"
    old = _png(600)  # 0.1: <root>/<sha[:2]>/<sha>.png, a full cut-out keyed by content alone
    _entry(root, _sha(7)).parent.mkdir(parents=True)
    _entry(root, _sha(7)).write_bytes(old)
    cache = ResultCache(root, 10_000)
    assert cache.total_bytes == 600
    assert cache.get(_sha(7), PROXY_MATTE) is None
    assert cache.get(_sha(7), ORIGINAL_MATTE) is None
    assert cache.get(_sha(7), ORIGINAL_CUTOUT) == old
    assert _entry(root, _sha(7)).read_bytes() == old  # the misses touched nothing


def test_the_entry_kind_follows_the_upload_setting_and_the_answer(tmp_path: Path) -> None:
    assert entry_kind("proxy", matte=True) == PROXY_MATTE
    assert entry_kind("original", matte=True) == ORIGINAL_MATTE
    assert entry_kind("original", matte=False) == ORIGINAL_CUTOUT
    with pytest.raises(ValueError):
        entry_kind("proxy", matte=False)  # proxy mode only ever asks for mattes
    with pytest.raises(ValueError):
        ResultCache(tmp_path / "cache", 1000).get(_sha(1), "../etc")
