"""SPEC §6: decoding is bounded by memory as well as by pixels, on real files built here.

Each hostile file is small; what it would cost is in what its header claims (a
million strips, 89 million pixels of matte, thousands of metadata chunks). The
memory ones run the decode in a subprocess and read its peak RSS
(``ru_maxrss``) before and after: the header check must refuse them before
Pillow allocates anything.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from bgsyncd import imaging
from bgsyncd.imaging import CorruptImage, ImageInfo, UnusableResult, budget
from tests.support.helpers import product_image
from tests.support.images import chunk, grey_png, tiff, tiff_of_blocks
from tests.support.paths import ROOT

MB = 1024 * 1024

# -- files built by hand ---------------------------------------------------------------


def png_with(
    before_idat: bytes = b"", after_idat: bytes = b"", size: tuple[int, int] = (64, 48)
) -> bytes:
    """A real RGB PNG from Pillow with extra chunks put before its IDAT or after it."""
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "PNG")
    data = buf.getvalue()
    idat, iend = data.index(b"IDAT") - 4, data.index(b"IEND") - 4
    return data[:idat] + before_idat + data[idat:iend] + after_idat + data[iend:]


def webp_with_chunk(kind: bytes, body: bytes) -> bytes:
    """A real lossy WebP from Pillow, made extended (VP8X) with one more chunk after its image."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "WEBP", quality=80)
    data = buf.getvalue()
    assert data[12:16] == b"VP8 "  # the simple format: one image chunk
    flags = {b"EXIF": 0x08, b"XMP ": 0x04, b"ICCP": 0x20}.get(kind, 0)
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([flags, 0, 0, 0])
    vp8x += (64 - 1).to_bytes(3, "little") + (48 - 1).to_bytes(3, "little")
    extra = kind + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) % 2 else b"")
    chunks = vp8x + data[12:] + extra
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def jpeg_with_segments(count: int, size: int) -> bytes:
    """A real JPEG from Pillow with ``count`` APP15 segments of ``size`` bytes after SOI."""
    data = product_image(64, 48, fmt="JPEG")
    segment = b"\xff\xef" + struct.pack(">H", size + 2) + bytes(size)
    return data[:2] + segment * count + data[2:]


# -- measuring in a subprocess ---------------------------------------------------------

_MEASURE = """
import json, resource, sys
from bgsyncd import imaging
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    if sys.argv[2] == "inspect":
        imaging.inspect(data)
    else:
        imaging.check_matte(data, (int(sys.argv[3]), int(sys.argv[4])))
    outcome = "accepted"
except imaging.CorruptImage as exc:  # UnusableResult is one
    outcome = type(exc).__name__ + ": " + str(exc)
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"outcome": outcome, "grew_mb": grew}))
"""


def measured(tmp_path: Path, data: bytes, *args: str) -> tuple[str, float]:
    """What a fresh process makes of ``data`` (``inspect``, or ``matte W H``), and how
    many MB its peak RSS grew by while it did."""
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout)
    return result["outcome"], result["grew_mb"]


# -- TIFF: strips, tiles, long tags ----------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "build"),
    [
        ("strips", tiff_of_blocks),
        ("tiles", lambda n: tiff_of_blocks(n, tiles=True)),
        ("BigTIFF strips", lambda n: tiff_of_blocks(n, big=True)),
    ],
)
def test_a_tiff_of_a_million_blocks_is_refused_from_its_header_in_bounded_memory(
    tmp_path: Path, layout: str, build: Callable[[int], bytes]
) -> None:
    # 1.5 million blocks in 3 MB: Pillow alone took ~450 MB just to open it.
    data = build(1_500_000)
    assert len(data) < 4 * MB
    outcome, grew = measured(tmp_path, data, "inspect")
    assert outcome.startswith("CorruptImage") and "strips or tiles" in outcome, outcome
    assert grew < 24, f"{layout}: peak RSS grew by {grew:.0f} MB"


def test_a_tiff_within_the_block_budget_still_decodes() -> None:
    data = tiff_of_blocks(budget.MAX_BLOCKS)
    assert imaging.inspect(data) == ImageInfo("tiff", 1, budget.MAX_BLOCKS)
    with pytest.raises(CorruptImage, match="strips or tiles"):
        imaging.inspect(tiff_of_blocks(budget.MAX_BLOCKS + 1))


def test_a_tiff_tag_of_too_many_numbers_is_refused() -> None:
    # Pillow turns each number into a Python int (about 36 bytes for 4 in the file).
    strip = [(273, 4, 1, struct.pack("<I", 8)), (278, 3, 1, struct.pack("<H", 4))]
    numbers = budget.MAX_VALUES + 1
    private = (65000, 4, numbers, bytes(4 * numbers))
    with pytest.raises(CorruptImage, match="values"):
        imaging.inspect(tiff(4, 4, [*strip, private]))  # pixels: the header's own bytes
    fine = tiff(4, 4, [*strip, (65000, 4, 1, bytes(4))])
    assert imaging.inspect(fine).size == (4, 4)


# -- metadata: PNG chunks, WebP chunks, JPEG segments ---------------------------------


def test_a_png_with_a_huge_ancillary_chunk_is_refused() -> None:
    huge = chunk(b"prVt", bytes(budget.METADATA_BYTES + 1))
    with pytest.raises(CorruptImage, match="metadata"):
        imaging.inspect(png_with(after_idat=huge))
    with pytest.raises(CorruptImage, match="metadata"):
        imaging.inspect(png_with(before_idat=huge))


def test_a_png_with_a_million_metadata_chunks_is_refused_in_bounded_memory(
    tmp_path: Path,
) -> None:
    # Pillow keeps every private chunk after the pixels: 41 MB for these 20 MB.
    tiny = b"".join(chunk(b"prVt", b"%07d" % n) for n in range(1_000_000))
    outcome, grew = measured(tmp_path, png_with(after_idat=tiny), "inspect")
    assert outcome.startswith("CorruptImage") and "metadata chunks" in outcome, outcome
    assert grew < 16, f"peak RSS grew by {grew:.0f} MB"


def test_a_png_of_compressed_text_chunks_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    # Pillow inflates each zTXt up to 1 MiB: these 65 KB held 64 MB of text.
    body = zlib.compress(b"a" * (MB - 1), 9)
    text = b"".join(chunk(b"zTXt", b"k%03d\x00\x00" % n + body) for n in range(63))
    outcome, grew = measured(tmp_path, png_with(before_idat=text), "inspect")
    assert outcome.startswith("CorruptImage") and "metadata" in outcome, outcome
    assert grew < 16, f"peak RSS grew by {grew:.0f} MB"
    # An ICC profile and a few compressed chunks, as ImageMagick writes them, are fine.
    few = b"".join(
        chunk(b"zTXt", b"k%03d\x00\x00" % n + zlib.compress(b"b" * 4000)) for n in range(4)
    )
    assert imaging.inspect(png_with(before_idat=few)).size == (64, 48)


def test_a_png_with_ordinary_metadata_still_decodes() -> None:
    text = chunk(b"tEXt", b"Comment\x00" + b"x" * MB) + chunk(
        b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0"
    )
    assert imaging.inspect(png_with(before_idat=text)) == ImageInfo("png", 64, 48)


def test_a_webp_with_a_huge_metadata_chunk_is_refused() -> None:
    small = webp_with_chunk(b"XMP ", b"<x/>")
    assert imaging.inspect(small) == ImageInfo("webp", 64, 48)
    with pytest.raises(CorruptImage, match="metadata"):
        imaging.inspect(webp_with_chunk(b"XMP ", bytes(budget.METADATA_BYTES + 1)))


def animated_webp(frames: int) -> bytes:
    """A real animated WebP from Pillow, its second frame's ANMF chunk repeated."""
    buf = io.BytesIO()
    first, second = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 9, 0))
    first.save(buf, "WEBP", save_all=True, append_images=[second], lossless=True)
    data = buf.getvalue()
    last = data.rindex(b"ANMF")
    body = data[12:last] + data[last:] * (frames - 1)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def test_a_webp_of_too_many_frames_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    assert imaging.inspect(animated_webp(1000)) == ImageInfo("webp", 16, 16)
    # 300,000 frames in 14 MB: libwebp indexed them all when it opened the file (54 MB).
    outcome, grew = measured(tmp_path, animated_webp(300_000), "inspect")
    assert outcome.startswith("CorruptImage") and "frames" in outcome, outcome
    assert grew < 16, f"peak RSS grew by {grew:.0f} MB"


def test_a_jpeg_with_too_many_metadata_segments_is_refused() -> None:
    assert imaging.inspect(jpeg_with_segments(10, 60_000)).size == (64, 48)
    # 300 segments of 60 KB: 18 MB that Pillow would keep (its "applist").
    with pytest.raises(CorruptImage, match="metadata"):
        imaging.inspect(jpeg_with_segments(300, 60_000))


def exif_orientation(count: int, value: int = 6) -> bytes:
    """An EXIF block (a little-endian TIFF IFD) whose Orientation holds ``count`` SHORTs."""
    payload = struct.pack("<H", value) * count
    inline = count <= 2
    where = payload.ljust(4, b"\x00") if inline else struct.pack("<I", 26)
    ifd = struct.pack("<H", 1) + struct.pack("<HHI", 0x0112, 3, count) + where + bytes(4)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + (b"" if inline else payload)


@pytest.mark.parametrize(
    "carry",
    [
        lambda exif: png_with(before_idat=chunk(b"eXIf", exif)),
        lambda exif: webp_with_chunk(b"EXIF", exif),
        lambda exif: webp_with_chunk(b"EXIF", b"Exif\x00\x00" + exif),
    ],
    ids=["png", "webp", "webp with Exif prefix"],
)
def test_an_exif_tag_of_too_many_numbers_is_refused(carry: Callable[[bytes], bytes]) -> None:
    # Pillow decodes the Orientation it is asked for into a tuple of that many ints.
    assert imaging.inspect(carry(exif_orientation(1))).orientation == 6
    with pytest.raises(CorruptImage, match="EXIF"):
        imaging.inspect(carry(exif_orientation(budget.MAX_VALUES + 1)))


# -- a progressive JPEG's draft buffers the whole image -------------------------------


def _jpeg(progressive: bool) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(product_image(2000, 1000, fmt="PNG"))).convert("RGB").save(
        buf, "JPEG", quality=90, progressive=progressive
    )
    return buf.getvalue()


def test_only_a_progressive_or_multi_scan_jpeg_needs_the_whole_coefficient_buffer() -> None:
    baseline = _jpeg(progressive=False)
    assert budget.needs_coefficient_buffer(_jpeg(progressive=True))
    assert not budget.needs_coefficient_buffer(baseline)
    # A sequential JPEG whose first scan holds one of its three components has more
    # scans to come: libjpeg buffers it whole too (its "has_multiple_scans").
    sos = baseline.index(b"\xff\xda")
    assert baseline[sos + 4] == 3
    one_component = baseline[: sos + 4] + b"\x01" + baseline[sos + 5 :]
    assert budget.needs_coefficient_buffer(one_component)


@pytest.mark.parametrize(
    "work",
    [
        lambda data: imaging.inspect(data).size,
        lambda data: imaging.make_proxy(data, side=1024, max_bytes=10 * MB).size,
    ],
    ids=["inspect", "make_proxy"],
)
def test_a_progressive_jpeg_waits_for_the_full_decode_slot_and_a_baseline_one_does_not(
    work: Callable[[bytes], tuple[int, int]],
) -> None:
    # libjpeg keeps a progressive JPEG's coefficients whole even for a 1/8 draft
    # (measured: +70 MB for a 6000 x 4000 photo made by Pillow, +4 MB baseline).
    progressive, baseline = _jpeg(progressive=True), _jpeg(progressive=False)
    results: dict[str, tuple[int, int]] = {}

    def run(name: str, data: bytes) -> None:
        results[name] = work(data)

    threads = {
        name: threading.Thread(target=run, args=(name, data))
        for name, data in (("progressive", progressive), ("baseline", baseline))
    }
    with imaging.full_decode_slot():
        for thread in threads.values():
            thread.start()
        threads["baseline"].join(10)
        assert "baseline" in results, "a baseline JPEG's draft waited for the slot"
        threads["progressive"].join(0.5)
        assert "progressive" not in results, "a progressive JPEG decoded outside the slot"
    threads["progressive"].join(10)
    assert results["progressive"] == results["baseline"]


# -- matte answers: within 4 times the pixels sent, decided from the header -----------


def test_a_matte_of_89_million_pixels_is_refused_from_its_header(tmp_path: Path) -> None:
    # The right shape for the 1024 x 683 sent, 11540 x 7697, in about 90 KB.
    data = grey_png(11540, 7697)
    assert len(data) < MB and imaging.same_aspect((11540, 7697), (1024, 683))
    outcome, grew = measured(tmp_path, data, "matte", "1024", "683")
    assert outcome.startswith("UnusableResult") and "out of scale" in outcome, outcome
    assert grew < 24, f"peak RSS grew by {grew:.0f} MB"


@pytest.mark.parametrize(
    ("size", "usable"),
    [
        ((1, 1), False),  # the shape of anything, to within a pixel
        ((255, 170), False),  # under a quarter of the longer side sent
        ((256, 171), True),  # a quarter
        ((2048, 1366), True),  # 4 times the pixels
        ((2050, 1367), False),  # over 4 times
    ],
)
def test_a_matte_is_usable_only_within_4_times_the_pixels_and_a_quarter_of_the_side(
    size: tuple[int, int], usable: bool
) -> None:
    buf = io.BytesIO()
    Image.new("L", size, 255).save(buf, "PNG")
    if usable:
        assert imaging.check_matte(buf.getvalue(), (1024, 683)) == size
    else:
        with pytest.raises(UnusableResult, match="out of scale"):
            imaging.check_matte(buf.getvalue(), (1024, 683))


def test_check_matte_decodes_inside_the_full_decode_slot() -> None:
    buf = io.BytesIO()
    Image.new("L", (1024, 683), 255).save(buf, "PNG")
    done = threading.Event()

    def check() -> None:
        imaging.check_matte(buf.getvalue(), (1024, 683))
        done.set()

    with imaging.full_decode_slot():
        thread = threading.Thread(target=check)
        thread.start()
        assert not done.wait(0.5), "check_matte decoded while another thread held the slot"
    assert done.wait(10)
    thread.join()


# -- broken metadata is ignored: the pixels decide ------------------------------------


def png_with_bad_exif() -> bytes:
    """A real PNG with an eXIf chunk that is not a TIFF structure."""
    return png_with(before_idat=chunk(b"eXIf", b"this is not a TIFF header at all"))


def webp_with_bad_exif() -> bytes:
    """A real WebP with an EXIF chunk that is not a TIFF structure."""
    return webp_with_chunk(b"EXIF", b"this is not a TIFF header at all")


@pytest.mark.parametrize("build", [png_with_bad_exif, webp_with_bad_exif], ids=["png", "webp"])
def test_a_malformed_exif_block_is_ignored(build: Callable[[], bytes]) -> None:
    data = build()
    with pytest.raises(SyntaxError):  # what Pillow itself does with it
        Image.open(io.BytesIO(data)).getexif()
    info = imaging.inspect(data)
    assert (info.size, info.orientation) == ((64, 48), 1)
    out = imaging.render(
        data,
        product_image(64, 48, fmt="PNG"),
        answer_is_matte=True,
        output="both",
        fmt="png",
        background="",
    )
    assert out.cutout is not None and out.mask is not None
