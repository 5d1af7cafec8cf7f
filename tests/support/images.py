"""Synthetic images for the decoders: greyscale PNGs, TIFFs of many blocks, random formats."""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image, ImageDraw


def tiff_of_blocks(count: int, *, tiles: bool = False, big: bool = False) -> bytes:
    """A TIFF of ``count`` one-row strips (1 x count) or 16 x 16 tiles (16 x 16*count).

    The offsets are SHORTs (2 bytes each), all 0: Pillow builds one descriptor
    per block whatever they hold.
    """
    offsets = bytes(2 * count)
    if tiles:
        extra = [
            (322, 3, 1, struct.pack("<H", 16)),
            (323, 3, 1, struct.pack("<H", 16)),
            (324, 3, count, offsets),
        ]
        return tiff(16, 16 * count, extra, big=big)
    extra = [(273, 3, count, offsets), (278, 3, 1, struct.pack("<H", 1))]
    return tiff(1, count, extra, big=big)


def grey_png(width: int, height: int) -> bytes:
    """A real all-black 8-bit grey PNG, compressed row by row (never whole in memory)."""
    packer = zlib.compressobj(9)
    row = bytes(1 + width)  # filter byte 0, then the row
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def image_bytes(rng: random.Random, fmt: str) -> bytes:
    w, h = rng.randint(8, 48), rng.randint(8, 48)
    img = Image.new("RGB", (w, h), (rng.randrange(256), rng.randrange(256), 200))
    ImageDraw.Draw(img).rectangle((w // 4, h // 4, w // 2, h // 2), fill=(rng.randrange(256), 9, 9))
    if fmt == "GIF":
        img = img.convert("P")
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def tiff(
    width: int,
    height: int,
    extra: list[tuple[int, int, int, bytes]],
    *,
    big: bool = False,
) -> bytes:
    """A little-endian 8-bit grey TIFF: its first IFD, then the out-of-line values.

    ``extra`` are more (tag, type, count, payload) entries; a payload longer
    than the entry's value field goes after the IFD.
    """
    entries = [
        (256, 4, 1, struct.pack("<I", width)),
        (257, 4, 1, struct.pack("<I", height)),
        (258, 3, 1, struct.pack("<H", 8)),
        (259, 3, 1, struct.pack("<H", 1)),
        (262, 3, 1, struct.pack("<H", 1)),
        (277, 3, 1, struct.pack("<H", 1)),
        *extra,
    ]
    entries.sort()
    field, count_fmt, entry_size = (8, "Q", 20) if big else (4, "I", 12)
    head = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) if big else b"II*\x00" + struct.pack("<I", 8)
    ifd_size = (8 if big else 2) + len(entries) * entry_size + field
    after = len(head) + ifd_size
    ifd = struct.pack("<Q" if big else "<H", len(entries))
    tail = b""
    for tag, kind, count, payload in entries:
        if len(payload) > field:
            value = struct.pack("<Q" if big else "<I", after + len(tail))
            tail += payload
        else:
            value = payload.ljust(field, b"\x00")
        ifd += struct.pack("<HH" + count_fmt, tag, kind, count) + value
    return head + ifd + bytes(field) + tail


def chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk, with its CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
