"""Sniffing, guarded decoding, 8-bit conversion, encoding, and the full-size decode slot.

Every decode goes through one guarded path (:func:`open_header` then
:func:`load`): only the six input formats are tried (Pillow never hands our
bytes to EPS, PDF or other exotic plugins), the first frame is loaded whole so
a truncated file is caught here rather than halfway through an output, and
decompression bombs (over ``Image.MAX_IMAGE_PIXELS``) are refused before any
pixel is decoded. Anything Pillow cannot read becomes :class:`CorruptImage`.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

from bgsyncd.imaging.plan import Size

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

_PILLOW_FORMATS = {
    "JPEG": "jpeg",
    "PNG": "png",
    "WEBP": "webp",
    "TIFF": "tiff",
    "BMP": "bmp",
    "GIF": "gif",
}
_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_ORIENTATION = 0x0112

# warnings.catch_warnings() swaps process-global state; worker threads decoding
# at the same time would restore each other's filters. Decoding is rare (a few
# images a minute), so one lock around it costs nothing.
_DECODE_LOCK = threading.Lock()
# Re-entrant: the worker may hold the slot around a job's whole image work
# while the functions it calls take it again.
_FULL_DECODE = threading.RLock()


class CorruptImage(Exception):
    """The bytes are not an image we can decode; the message is safe to show."""


class UnusableResult(CorruptImage):
    """An API answer we cannot use: undecodable, or not the shape of what was sent.

    The worker maps it to :class:`bgsyncd.errors.UnusableAnswer`.
    """


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`inspect` learnt: our format name, the stored size, the EXIF tag."""

    format: str
    width: int
    height: int
    orientation: int = 1
    """EXIF orientation 1..8; 1 when absent or invalid."""

    @property
    def size(self) -> Size:
        """(width, height) as stored."""
        return self.width, self.height


@contextlib.contextmanager
def full_decode_slot() -> Iterator[None]:
    """Hold the one slot for full-size image work; other threads wait their turn.

    A decoded 6000 x 4000 photo is 72 MB (96 MB as RGBA) and every conversion
    may hold another copy, so only one thread at a time may have one. The
    functions of :mod:`bgsyncd.imaging` take the slot themselves whenever they
    decode at full size; the worker may also hold it around a job's whole
    image work. Re-entrant within a thread.
    """
    with _FULL_DECODE:
        yield


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


def open_header(data: bytes, what: str = "image") -> Image.Image:
    """Read only the header of ``data`` as one of the six formats; refuse bombs.

    ``what`` names the image in the :class:`CorruptImage` message.
    """
    with _DECODE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Above MAX_IMAGE_PIXELS Pillow only warns (it raises above twice that):
        # make the warning an exception so such an image is never decoded.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=list(_PILLOW_FORMATS))
            # Re-checked here in case another thread's catch_warnings() (outside
            # this module) has replaced our filter meanwhile.
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and img.width * img.height > limit:
                raise Image.DecompressionBombWarning("too many pixels")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise CorruptImage(f"{what} has too many pixels to decode safely") from exc
        except Exception as exc:
            raise CorruptImage(f"{what} could not be decoded: {_describe(exc)}") from exc
    return img


def load(img: Image.Image, what: str = "image") -> None:
    """Decode the pixels of an image from :func:`open_header` (animated: frame 0)."""
    with _DECODE_LOCK, warnings.catch_warnings():
        # Pillow warns about odd EXIF and the like; those images still decode,
        # and a stray warning must not reach stderr between JSON log lines.
        warnings.simplefilter("ignore")
        try:
            img.load()
        except Exception as exc:
            # Pillow's plugins raise many types (OSError, SyntaxError, ValueError,
            # struct.error, EOFError...) on hostile input; all mean "unreadable".
            raise CorruptImage(f"{what} could not be decoded: {_describe(exc)}") from exc


def decode(data: bytes, what: str = "image") -> Image.Image:
    """Open and load the first frame of ``data`` at full size, or raise CorruptImage.

    The caller holds :func:`full_decode_slot` when the image may be large.
    """
    img = open_header(data, what)
    load(img, what)
    return img


def inspect(data: bytes) -> ImageInfo:
    """Check that ``data`` decodes completely; raise :class:`CorruptImage` otherwise.

    A JPEG is decoded at 1/8 scale (libjpeg still reads every byte, so a
    truncated file is caught); other formats at full size, in the slot.
    """
    img = open_header(data)
    fmt, (width, height) = _PILLOW_FORMATS[str(img.format)], img.size
    if img.format == "JPEG":
        img.draft(None, (1, 1))
        load(img)
    else:
        with full_decode_slot():
            load(img)
    # After load: a PNG's eXIf chunk may follow its pixels (getexif would load).
    return ImageInfo(fmt, width, height, orientation(img))


def orientation(img: Image.Image) -> int:
    """The image's EXIF orientation tag, 1 when absent or not one of 1..8."""
    value = img.getexif().get(_ORIENTATION)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def orientation_exif(value: int) -> bytes:
    """EXIF holding only the Orientation tag ``value``; b"" for 1 (nothing to say)."""
    if value == 1:
        return b""
    exif = Image.Exif()
    exif[_ORIENTATION] = value
    return exif.tobytes()


def to_eight_bit(img: Image.Image) -> Image.Image:
    """Bring 16-bit and 32-bit single-channel images into 0..255 ("L"); others as they are.

    Pillow's own conversion clips them, which turns a 16-bit photo white.
    """
    if img.mode.startswith("I;16"):
        return img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if img.mode in ("I", "F"):
        high = img.getextrema()[1]
        if isinstance(high, (int, float)) and high > 255:
            return img.point(lambda v: v * (255 / high)).convert("L")
        return img.convert("L")
    return img


def rgb_and_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """Split any Pillow mode into 8-bit RGB and its own alpha ("L"), or None without one.

    CMYK, palette, 16-bit, LA, I;16 and the rest all pass here, so the proxy and
    the outputs see the same colours. Raises :class:`CorruptImage` for a mode
    Pillow cannot convert. An RGB image is returned as it is, not copied.
    """
    try:
        img = to_eight_bit(img)
        if img.mode in _ALPHA_MODES or img.has_transparency_data:
            rgba = img.convert("RGBA")
            return rgba.convert("RGB"), rgba.getchannel("A")
        # No copy when it is RGB already: a full-size copy is 96 MB.
        return (img if img.mode == "RGB" else img.convert("RGB")), None
    except (ValueError, OSError) as exc:
        raise CorruptImage(f"image mode {img.mode} cannot be converted: {exc}") from exc


def save(img: Image.Image, fmt: str, **params: object) -> bytes:
    """Encode ``img`` as ``fmt`` with only the metadata in ``params`` (b"" or None: left out).

    Pillow would otherwise copy some of ``img.info`` (a PNG's ICC profile, its
    text chunks) into the file: the info is cleared first.
    """
    kept = {key: value for key, value in params.items() if value is not None and value != b""}
    img.info = {}
    buf = io.BytesIO()
    img.save(buf, fmt, **kept)
    return buf.getvalue()


def _describe(exc: Exception) -> str:
    """A short, single-line description of a decoding failure."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
