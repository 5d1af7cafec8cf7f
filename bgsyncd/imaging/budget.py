"""The decoding budget beyond pixels: what a file's structure may cost, read from its bytes.

SPEC §6: decoding is bounded by memory as well as by pixels. :data:`MAX_PIXELS
<bgsyncd.imaging.MAX_PIXELS>` bounds the pixels; this module bounds what Pillow
and its libraries hold beside them, decided from the header before Pillow sees
the file (no Pillow here, only bytes):

- **TIFF**: Pillow builds one Python tile descriptor per strip or tile (about
  300 bytes each, measured: a 1 x 1,000,000 TIFF of 2 MB took 318 MB just to
  open), and decodes a tag's numbers into Python integers (about 36 bytes
  each, for 2 or 4 in the file). The first IFD (the one decoded) may hold at
  most :data:`MAX_BLOCKS` strips or tiles and, in any one numeric tag, at
  most :data:`MAX_VALUES` numbers. A PNG's or WebP's EXIF block is a TIFF
  structure that Pillow decodes alike: the same limits hold there.
- **Animated WebP**: libwebp indexes every frame when the file is opened
  (about 180 bytes each: a 9 MB file of 200,000 frames took 36 MB); at most
  :data:`MAX_BLOCKS` frames.
- **PNG, WebP, JPEG**: metadata (PNG ancillary chunks other than APNG's frame
  chunks; WebP's ICCP, EXIF and XMP chunks; JPEG's APPn and COM segments
  before the first scan) is copied and kept by Pillow: at most
  :data:`METADATA_BYTES` in all, in at most :data:`MAX_METADATA_CHUNKS`
  pieces. A compressed PNG chunk (zTXt, compressed iTXt, iCCP) counts as the
  1 MiB Pillow may inflate it to.
- **JPEG** :func:`needs_coefficient_buffer`: a progressive or multi-scan
  JPEG is not refused, but libjpeg keeps the whole image's DCT coefficients
  (2 bytes a sample) even for a 1/8 scale draft: measured for a 6000 x 4000
  photo, 70 MB in 4:2:0, 140 MB in 4:4:4. Such a decode takes the full-decode
  slot like any other.

A header that cannot be read here is left to Pillow, which refuses it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

MAX_BLOCKS = 65_536
"""The most strips or tiles a TIFF, or frames an animated WebP, may have.

Pillow keeps about 300 bytes for each strip or tile (20 MB at the limit), libwebp
about 180 for each frame. No encoder writes more strips for a file within the
input size limit (256 MB): libtiff's default strips of 8 KB give 32,768 of them,
Pillow's of 64 KB 4,096; 65,536 frames are 36 minutes at 30 frames a second.
"""

MAX_VALUES = 262_144
"""The most numbers one TIFF tag may hold (about 10 MB as Python integers).

The longest legitimate tables are a 16-bit colour map or transfer function
(3 x 65,536 numbers).
"""

METADATA_BYTES = 16 * 1024 * 1024
"""The most metadata bytes (ICC profile, EXIF, XMP, text...) an image may carry in all."""

MAX_METADATA_CHUNKS = 4096
"""The most metadata chunks or segments an image may have (Pillow keeps each one)."""

# TIFF field types Pillow keeps as bytes or text (BYTE, ASCII, UNDEFINED); every
# other type becomes a tuple of Python numbers.
_TIFF_BYTE_TYPES = (1, 2, 7)
_TIFF_BLOCK_TAGS = (273, 279, 324, 325)  # Strip/Tile Offsets and ByteCounts
# APNG's frame control and frame data: pixels and their placement, not metadata
# (only the first frame is decoded).
_PNG_FRAME_CHUNKS = (b"acTL", b"fcTL", b"fdAT")
# Compressed text and ICC chunks: Pillow inflates each up to 1 MiB (its
# PngImagePlugin.MAX_TEXT_CHUNK), whatever their size in the file, so a 65 KB PNG
# of 63 zTXt chunks held 64 MB. Each counts as that much.
_PNG_COMPRESSED = (b"zTXt", b"iCCP")
_PNG_INFLATED = 1024 * 1024
_WEBP_METADATA_CHUNKS = (b"ICCP", b"EXIF", b"XMP ")
# JPEG start-of-frame markers (not DHT C4, JPG C8, DAC CC) and the progressive ones.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_JPEG_SOS = 0xDA


def over_budget(fmt: str, data: bytes) -> str | None:
    """Why ``data`` (of our format name ``fmt``) would cost too much to open, or None."""
    if fmt == "tiff":
        return _tiff(data)
    if fmt == "png":
        return _png(data)
    if fmt == "webp":
        return _webp(data)
    if fmt == "jpeg":
        return _jpeg_metadata(data)
    return None


def needs_coefficient_buffer(data: bytes) -> bool:
    """True when libjpeg must buffer the whole image to decode this JPEG, even at 1/8 scale.

    That is libjpeg's own rule (``has_multiple_scans``): a progressive frame,
    or a first scan holding fewer components than the frame.
    """
    frame = None
    for marker, start, end in _jpeg_segments(data):
        if marker in _JPEG_FRAMES and end - start >= 6:
            frame = marker, data[start + 5]
        elif marker == _JPEG_SOS and frame is not None and end > start:
            sof, components = frame
            return sof in _JPEG_PROGRESSIVE or data[start] < components
    return frame is not None and frame[0] in _JPEG_PROGRESSIVE


# -- TIFF ----------------------------------------------------------------------------


def _tiff(data: bytes | memoryview) -> str | None:
    """The first IFD of a classic or Big TIFF (or EXIF block), checked entry by entry."""
    order = {b"II": "<", b"MM": ">"}.get(bytes(data[:2]))
    if order is None or len(data) < 16:
        return None
    big = struct.unpack_from(order + "H", data, 2)[0] == 43
    head, entry, count_fmt = ("Q", 20, "Q") if big else ("I", 12, "I")
    ifd = struct.unpack_from(order + head, data, 8 if big else 4)[0]
    size = 8 if big else 2
    if ifd + size > len(data):
        return None
    entries = struct.unpack_from(order + ("Q" if big else "H"), data, ifd)[0]
    if entries > MAX_BLOCKS:  # never for a classic TIFF (16 bits)
        return f"has {entries} tags in its first directory (the limit is {MAX_BLOCKS})"
    for index in range(entries):
        at = ifd + size + index * entry
        if at + entry > len(data):
            break
        tag, kind = struct.unpack_from(order + "HH", data, at)
        count = struct.unpack_from(order + count_fmt, data, at + 4)[0]
        if tag in _TIFF_BLOCK_TAGS and count > MAX_BLOCKS:
            return f"has {count} strips or tiles (the limit is {MAX_BLOCKS})"
        if kind not in _TIFF_BYTE_TYPES and count > MAX_VALUES:
            return f"has a tag of {count} values (the limit is {MAX_VALUES})"
    return None


# -- PNG, WebP, JPEG metadata --------------------------------------------------------


def _png(data: bytes) -> str | None:
    tally = _Tally("chunks")
    at = 8
    while at + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        if kind == b"IEND":
            break
        # A lower-case first letter: an ancillary chunk.
        if kind[0] & 0x20 and kind not in _PNG_FRAME_CHUNKS and tally.add(_png_cost(data, at)):
            break
        if kind == b"eXIf" and (verdict := _exif(data, at + 8, length)):
            return verdict
        at += 12 + length
    return tally.verdict


def _png_cost(data: bytes, at: int) -> int:
    """What Pillow may hold for the ancillary chunk at ``at``: its length, or its inflated size."""
    length: int = struct.unpack_from(">I", data, at)[0]
    kind = data[at + 4 : at + 8]
    compressed = kind in _PNG_COMPRESSED
    if kind == b"iTXt":  # keyword, NUL, then the compression flag
        nul = data.find(b"\x00", at + 8, at + 8 + min(length, 80))
        compressed = 0 <= nul < len(data) - 1 and data[nul + 1] == 1
    return max(length, _PNG_INFLATED) if compressed else length


def _webp(data: bytes) -> str | None:
    tally, frames = _Tally("chunks"), 0
    at = 12
    while at + 8 <= len(data):
        kind, length = struct.unpack_from("<4sI", data, at)
        if kind in _WEBP_METADATA_CHUNKS and tally.add(length):
            break
        if kind == b"EXIF" and (verdict := _exif(data, at + 8, length)):
            return verdict
        if kind == b"ANMF":  # libwebp indexes every frame when it opens the file
            frames += 1
            if frames > MAX_BLOCKS:
                return f"has over {MAX_BLOCKS} frames"
        at += 8 + length + (length & 1)
    return tally.verdict


def _jpeg_metadata(data: bytes) -> str | None:
    tally = _Tally("segments")
    for marker, start, end in _jpeg_segments(data):
        if (0xE0 <= marker <= 0xEF or marker == 0xFE) and tally.add(end - start):
            break  # APP0..APP15, COM
    return tally.verdict


def _exif(data: bytes, start: int, length: int) -> str | None:
    """An EXIF block (a TIFF structure) held to the TIFF limits: Pillow decodes its tags alike."""
    block = memoryview(data)[start : start + length]
    if bytes(block[:6]) == b"Exif\x00\x00":  # the prefix some writers keep
        block = block[6:]
    verdict = _tiff(block)
    return None if verdict is None else f"has EXIF metadata that {verdict}"


class _Tally:
    """Metadata pieces counted as a walk finds them; ``verdict`` once over the budget."""

    def __init__(self, what: str) -> None:
        self.what, self.count, self.total = what, 0, 0
        self.verdict: str | None = None

    def add(self, length: int) -> bool:
        """Count one piece; True (and a verdict) when the image is now over the budget."""
        self.count += 1
        self.total += length
        if self.count > MAX_METADATA_CHUNKS:
            self.verdict = f"has over {MAX_METADATA_CHUNKS} metadata {self.what}"
        elif self.total > METADATA_BYTES:
            self.verdict = f"has over {METADATA_BYTES} bytes of metadata"
        return self.verdict is not None


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of each segment's payload up to and including the first SOS."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            break
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0xD9:  # EOI
            return
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length
            at += 2
            continue
        length = struct.unpack_from(">H", data, at + 2)[0]
        yield marker, at + 4, min(len(data), at + 2 + length)
        if marker == _JPEG_SOS:
            return
        at += 2 + length
