"""Thumbnails for the status page (SPEC §11): at most 256 pixels a side, never the full image.

A JPEG is decoded at a reduced scale (``Image.draft``: libjpeg's 1/2, 1/4 or
1/8), so a large photo costs a fraction of a full decode; other formats are
decoded in the full-decode slot like every full-size decode. The thumbnail is
a PNG (transparency kept: a cut-out shows as one), upright as stored, like
every output (the page shows stored pixels).
"""

from __future__ import annotations

from PIL import Image

from bgsyncd.imaging import codec

THUMB_SIDE = 256


def make_thumbnail(data: bytes, side: int = THUMB_SIDE) -> bytes:
    """A PNG of ``data`` whose longer side is at most ``side``; CorruptImage when unreadable."""
    img = codec.open_header(data, "thumbnail source")
    try:
        if codec.format_name(img) == "jpeg":
            img.draft("RGB", (side, side))
        with codec.decode_slot(img, data):
            codec.load(img, "thumbnail source")
            small = codec.to_eight_bit(img)
            small.thumbnail((side, side), Image.Resampling.BILINEAR)
        if small.mode not in ("RGB", "RGBA", "L", "LA"):
            small = small.convert("RGBA")
        return codec.save(small, "PNG", optimize=False)
    finally:
        img.close()
