"""Sniffing, decoding, shrinking, compositing and encoding images (Pillow lives here).

Every decode goes through one guarded path: only the six input formats are
tried (Pillow never hands our bytes to EPS, PDF or other exotic plugins), the
whole image is loaded so a truncated file is caught here rather than halfway
through an output, and decompression bombs (the default ``MAX_IMAGE_PIXELS``)
are refused. Anything Pillow cannot read becomes :class:`CorruptImage`.

Geometry: pixels are kept as stored. EXIF orientation is not applied, so the
API's mask lines up with the stored pixels whatever the camera wrote; instead
the original's Orientation tag (only that tag) is carried into the cut-out and
the mask, so viewers that honour it show them the same way as the original.
Animated GIFs and multi-page TIFFs contribute their first frame only.
"""

from __future__ import annotations

import io
import math
import re
import threading
import warnings
from dataclasses import dataclass

from PIL import Image, ImageChops

SNIFF_BYTES = 32
"""How many leading bytes :func:`sniff` needs to decide."""

EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}
"""Output format -> file extension."""

_PILLOW_FORMATS = {
    "JPEG": "jpeg",
    "PNG": "png",
    "WEBP": "webp",
    "TIFF": "tiff",
    "BMP": "bmp",
    "GIF": "gif",
}
_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
_BACKGROUND = re.compile(r"#([0-9a-fA-F]{2})([0-9a-fA-F]{2})([0-9a-fA-F]{2})")
_ORIENTATION = 0x0112
_JPEG_QUALITY = 90
_MAX_SHRINK_STEPS = 25

# warnings.catch_warnings() swaps process-global state; worker threads decoding
# at the same time would restore each other's filters. Decoding is rare (a few
# images a minute), so one lock around it costs nothing.
_DECODE_LOCK = threading.Lock()


class CorruptImage(Exception):
    """The bytes are not an image we can decode; the message is safe to show."""


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`inspect` learnt: our format name and the stored size."""

    format: str
    width: int
    height: int


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


def inspect(data: bytes) -> ImageInfo:
    """Decode ``data`` completely; raise :class:`CorruptImage` if it cannot be read."""
    img = _decode(data, "image")
    return ImageInfo(_PILLOW_FORMATS[str(img.format)], img.width, img.height)


def shrink_to_fit(data: bytes, max_bytes: int) -> bytes:
    """Return a re-encoded, scaled-down copy of ``data`` no larger than ``max_bytes``.

    Opaque images become JPEG (quality 90), images with transparency PNG. The
    aspect ratio is kept (to the nearest pixel). Raises :class:`CorruptImage`
    for an unreadable image and ValueError if even one pixel does not fit.
    """
    img = _decode(data, "image")
    alpha = img.has_transparency_data
    img = _eight_bit(img).convert("RGBA" if alpha else "RGB")
    width, height = img.size
    scale = 1.0
    for _ in range(_MAX_SHRINK_STEPS):
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        frame = (
            img
            if size == img.size
            else img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        )
        encoded = _save(frame, "PNG") if alpha else _save(frame, "JPEG", quality=_JPEG_QUALITY)
        if len(encoded) <= max_bytes:
            return encoded
        if size == (1, 1):
            break
        # Encoded size grows roughly with the pixel count, so each side scales
        # with the square root of the byte ratio; the 0.95 margin and the 0.9
        # cap make every step a real reduction.
        scale *= min(0.9, 0.95 * math.sqrt(max_bytes / len(encoded)))
    raise ValueError(f"image cannot be reduced to {max_bytes} bytes")


def compose(original: bytes, result: bytes, *, result_is_alpha: bool) -> bytes:
    """Return the full-size RGBA cut-out of ``original`` as PNG bytes.

    With ``result_is_alpha`` the API's grayscale mask (possibly smaller, when a
    shrunk copy was uploaded) is scaled to the original's size and becomes its
    alpha; otherwise ``result`` is the API's RGBA cut-out, scaled to the
    original's size if needed. Transparency the original already had is kept
    (multiplied in). Raises :class:`CorruptImage` naming which input failed.
    """
    orig = _decode(original, "original image")
    res = _decode(result, "API result")
    own_alpha = None
    if orig.has_transparency_data:
        own_alpha = _eight_bit(orig).convert("RGBA").getchannel("A")
    rgb = _eight_bit(orig).convert("RGB")
    if result_is_alpha:
        cutout = rgb
        alpha = _eight_bit(res).convert("L")
    else:
        cutout = _eight_bit(res).convert("RGBA")
        alpha = cutout.getchannel("A")
    if cutout.size != rgb.size:
        cutout = cutout.resize(rgb.size, Image.Resampling.LANCZOS)
    if alpha.size != rgb.size:
        alpha = alpha.resize(rgb.size, Image.Resampling.LANCZOS)
    if own_alpha is not None:
        alpha = ImageChops.multiply(own_alpha, alpha)
    cutout = cutout.convert("RGBA")
    cutout.putalpha(alpha)
    return _save(cutout, "PNG", exif=_orientation_exif(orig))


def encode_cutout(cutout_png: bytes, fmt: str, background: str) -> bytes:
    """Encode the RGBA cut-out as ``fmt`` ("png", "webp", "jpeg").

    ``background`` "" keeps transparency (PNG, or lossless WebP); "#rrggbb"
    composites onto that colour and gives an RGB image. JPEG has no alpha, so
    it needs a background: ValueError otherwise, or for an unknown format.
    """
    if fmt not in EXTENSIONS:
        raise ValueError(f"unknown output format {fmt!r}")
    colour = _parse_background(background)
    if fmt == "jpeg" and colour is None:
        raise ValueError('format "jpeg" needs a background colour')
    src = _decode(cutout_png, "cut-out")
    exif = _orientation_exif(src)
    img = _eight_bit(src).convert("RGBA")
    if colour is not None:
        flat = Image.new("RGB", img.size, colour)
        flat.paste(img, mask=img.getchannel("A"))
        img = flat
    if fmt == "png":
        return _save(img, "PNG", exif=exif)
    if fmt == "webp":
        if img.mode == "RGBA":
            return _save(img, "WEBP", lossless=True, exif=exif)
        return _save(img, "WEBP", quality=_JPEG_QUALITY, exif=exif)
    return _save(img, "JPEG", quality=_JPEG_QUALITY, exif=exif)


def encode_mask(cutout_png: bytes) -> bytes:
    """Return the cut-out's alpha channel as a grayscale ("L") PNG."""
    src = _decode(cutout_png, "cut-out")
    # An image without alpha converts to fully opaque, i.e. an all-white mask.
    mask = _eight_bit(src).convert("RGBA").getchannel("A")
    return _save(mask, "PNG", exif=_orientation_exif(src))


def _decode(data: bytes, what: str) -> Image.Image:
    """Open and fully load ``data`` as one of the six formats, or raise CorruptImage."""
    with _DECODE_LOCK, warnings.catch_warnings():
        # Pillow warns about odd EXIF and the like; those images still decode,
        # and a stray warning must not reach stderr between JSON log lines.
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
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise CorruptImage(f"{what} has too many pixels to decode safely") from exc
        except Exception as exc:
            # Pillow's plugins raise many types (OSError, SyntaxError, ValueError,
            # struct.error, EOFError...) on hostile input; all mean "unreadable".
            raise CorruptImage(f"{what} could not be decoded: {_describe(exc)}") from exc
    return img


def _describe(exc: Exception) -> str:
    """A short, single-line description of a decoding failure."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _eight_bit(img: Image.Image) -> Image.Image:
    """Bring 16-bit and 32-bit single-channel images into 0..255 ("L").

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


def _orientation_exif(img: Image.Image) -> bytes:
    """EXIF holding only ``img``'s Orientation tag, or b"" when it has none."""
    orientation = img.getexif().get(_ORIENTATION)
    if not isinstance(orientation, int) or orientation == 1 or not 1 <= orientation <= 8:
        return b""
    exif = Image.Exif()
    exif[_ORIENTATION] = orientation
    return exif.tobytes()


def _parse_background(background: str) -> tuple[int, int, int] | None:
    """ "" -> None; "#rrggbb" -> (r, g, b); anything else is a ValueError."""
    if background == "":
        return None
    match = _BACKGROUND.fullmatch(background)
    if match is None:
        raise ValueError(f'background must be "" or "#rrggbb", not {background!r}')
    red, green, blue = (int(part, 16) for part in match.groups())
    return red, green, blue


def _save(img: Image.Image, fmt: str, **params: object) -> bytes:
    """Encode ``img`` as ``fmt``; an empty ``exif`` is left out."""
    if params.get("exif") == b"":
        del params["exif"]
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()
