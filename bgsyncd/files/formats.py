"""Which of the six image formats a file is, from its first bytes: the one sniffer.

Pure bytes, no image library: the watcher's rules, the client (an upload's media
type, an answer that is an image), the imaging package and the emulator all ask
here, so they can never disagree on what counts as an image.
"""

from __future__ import annotations

SNIFF_BYTES = 32
"""How many leading bytes :func:`sniff` needs to decide."""

MIME_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "tiff": "image/tiff",
    "bmp": "image/bmp",
    "gif": "image/gif",
}
"""Our format name (what :func:`sniff` returns) -> media type, for uploads."""

_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}


def sniff(head: bytes) -> str | None:
    """Name the image format from its first :data:`SNIFF_BYTES` bytes, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    # Classic TIFF (42) and BigTIFF (43), both byte orders.
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    # "BM" alone matches plain text ("BMW..."): also require a known DIB header size.
    if (
        head[:2] == b"BM"
        and len(head) >= 18
        and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES
    ):
        return "bmp"
    return None


def media_type(data: bytes) -> str | None:
    """The media type of ``data`` if it is one of the six formats, else None."""
    name = sniff(data[:SNIFF_BYTES])
    return None if name is None else MIME_TYPES[name]
