"""Sniffing, guarded decoding, 8-bit conversion, encoding, and the full-size decode slot.

Each image fact has its one definition here, for the daemon and the emulator
alike:

- **What is an image**: :func:`sniff`. Every decode goes through one guarded
  path (:func:`open_header` then :func:`load`) that hands the bytes only to
  the Pillow plugin of the sniffed format (Pillow never tries EPS, PDF or
  other exotic plugins, nor a BMP reader on a text that starts "BM"). The
  first frame is loaded whole, so a truncated file is caught here rather than
  halfway through an output. Anything Pillow cannot read is
  :class:`CorruptImage`. A multi-picture JPEG (Pillow's "MPO", which cameras
  write with an embedded preview) is a JPEG: its first picture.
- **The decompression-bomb limit**: :data:`MAX_PIXELS`, checked on the header
  before any pixel is decoded. It is Pillow's own default limit (its
  ``MAX_IMAGE_PIXELS``: "around a quarter gigabyte for a 24-bit image"),
  taken as a constant so neither the daemon nor the emulator depends on a
  process-global that other code may change. The emulator's former, lower
  limit (60 million) made it refuse images the daemon accepted and sent; the
  daemon's outputs need a full decode anyway, so its limit is the one that
  counts.
- **The budget beside pixels**: :func:`open_header` also refuses, before Pillow
  sees them, files whose structure would cost more memory than the pixels
  (a TIFF of millions of strips, megabytes of metadata chunks:
  :mod:`bgsyncd.imaging.budget`). :func:`decode_slot` says which decodes
  must wait for the full-decode slot.
- **Broken metadata is ignored**: :func:`orientation` is 1 for an EXIF block
  that does not parse (Pillow raises ``SyntaxError`` on a malformed eXIf
  chunk); the pixels decide.
- **16 bits to 8**: :func:`to_eight_bit` keeps the high byte (``v / 256``,
  truncated), which is what Pillow itself does when it reads a 16-bit RGB PNG
  as "RGB": a 16-bit grey and a 16-bit colour image of the same scene come out
  alike. 32-bit integer and float images are scaled by ``255 / max`` only when
  their values exceed 255, never stretched between their own minimum and
  maximum (which would make an image's grey depend on its darkest pixel).
- **Own alpha**: :func:`rgb_and_alpha` splits any mode into 8-bit RGB and its
  alpha, counting a palette's or a colour key's transparency (``tRNS``);
  :func:`with_alpha` puts them back together.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeAlias

from PIL import Image

from bgsyncd.files.formats import SNIFF_BYTES, sniff
from bgsyncd.imaging import budget
from bgsyncd.imaging.plan import Size

MAX_PIXELS = 89_478_485
"""The most pixels an image may claim to be decoded at all (Pillow's default limit)."""

Picture: TypeAlias = Image.Image
"""A decoded image. Outside :mod:`bgsyncd.imaging` it is only passed around, never worked on."""

_PILLOW_FORMATS = {
    "JPEG": "jpeg",
    "MPO": "jpeg",  # a multi-picture JPEG: Pillow's JPEG plugin opens it as "MPO"
    "PNG": "png",
    "WEBP": "webp",
    "TIFF": "tiff",
    "BMP": "bmp",
    "GIF": "gif",
}
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


def decode_slot(img: Image.Image, data: bytes) -> contextlib.AbstractContextManager[None]:
    """The slot a decode of ``img`` (from :func:`open_header` of ``data``) must hold.

    The full-decode slot, except for a JPEG decoded at reduced scale (``draft``)
    whose coefficients libjpeg need not buffer whole: none for that. A
    progressive JPEG's draft still buffers them all
    (:func:`bgsyncd.imaging.budget.needs_coefficient_buffer`).
    """
    if format_name(img) == "jpeg" and not budget.needs_coefficient_buffer(data):
        return contextlib.nullcontext()
    return full_decode_slot()


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


def open_header(data: bytes, what: str = "image") -> Image.Image:
    """Read only the header of ``data`` as the format :func:`sniff` names; refuse bombs.

    ``what`` names the image in the :class:`CorruptImage` message.
    """
    name = sniff(data[:SNIFF_BYTES])
    if name is None:
        raise CorruptImage(f"{what} is not a JPEG, PNG, WebP, TIFF, BMP or GIF image")
    over = budget.over_budget(name, data)
    if over is not None:
        raise CorruptImage(f"{what} {over}: too costly to decode safely")
    with _DECODE_LOCK, warnings.catch_warnings():
        # Pillow's own bomb warning included: MAX_PIXELS, checked below, is the limit.
        warnings.simplefilter("ignore")
        try:
            # Only the sniffed format's plugin (Pillow's names are ours in capitals).
            img = Image.open(io.BytesIO(data), formats=[name.upper()])
        except Image.DecompressionBombError as exc:  # over twice Pillow's limit
            raise CorruptImage(f"{what} has too many pixels to decode safely") from exc
        except Exception as exc:
            raise CorruptImage(f"{what} could not be decoded: {_describe(exc)}") from exc
    if img.width * img.height > MAX_PIXELS:
        img.close()
        raise CorruptImage(f"{what} has too many pixels to decode safely")
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
    truncated file is caught); other formats at full size. In the full-decode
    slot, unless :func:`decode_slot` says none is needed (a sequential JPEG).
    """
    img = open_header(data)
    fmt, (width, height) = format_name(img), img.size
    with decode_slot(img, data):
        if fmt == "jpeg":
            img.draft(None, (1, 1))
        load(img)
    # After load: a PNG's eXIf chunk may follow its pixels (getexif would load).
    return ImageInfo(fmt, width, height, orientation(img))


def format_name(img: Image.Image) -> str:
    """Our name (as :func:`sniff` gives it) for the format of an image from :func:`open_header`."""
    return _PILLOW_FORMATS[str(img.format)]


def orientation(img: Image.Image) -> int:
    """The image's EXIF orientation tag, 1 when absent, not one of 1..8, or unreadable."""
    try:
        with _DECODE_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = img.getexif().get(_ORIENTATION)
    except Exception:
        # A malformed EXIF block (SyntaxError "not a TIFF file", struct.error...)
        # is broken metadata: ignored, the pixels decide (SPEC §6).
        return 1
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


def with_alpha(rgb: Image.Image, alpha: Image.Image) -> Image.Image:
    """A new RGBA image of ``rgb``'s colours and ``alpha`` (undoes :func:`rgb_and_alpha`)."""
    return Image.merge("RGBA", (*rgb.split(), alpha))


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
