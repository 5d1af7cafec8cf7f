"""The emulator's image side: decoding and a local cut-out with Pillow only.

Sniffing is ``bgsyncd.imaging.sniff``, the daemon's own, so both agree on
what is an image (a "BM" text file is not a BMP, BigTIFF is a TIFF).

The cut-out is a classic studio matte, good enough for product photos on a plain
background: estimate the background colour from the border, measure each
pixel's colour distance to it, and map that distance through a soft ramp to
alpha. Every step is a Pillow primitive (LUTs, channel ops, blurs), so a
2000 x 1500 image takes a fraction of a second without numpy.
"""

from __future__ import annotations

import io

from PIL import Image, ImageChops, ImageFilter, ImageStat

from bgsyncd.imaging import SNIFF_BYTES, sniff

# Far below Pillow's decompression-bomb limit: an upload of at most 10 MB that
# claims more pixels than this is a bomb, not a photo.
MAX_PIXELS = 60_000_000

_16_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class UndecodableImage(ValueError):
    """The bytes are not an image of a supported format that Pillow can decode."""


def decode(data: bytes) -> Image.Image:
    """Decode the first frame of ``data`` fully; raise UndecodableImage otherwise."""
    name = sniff(data[:SNIFF_BYTES])
    if name is None:
        raise UndecodableImage("Unsupported media type: not JPEG, PNG, WebP, TIFF, BMP or GIF")
    fmt = name.upper()  # Pillow's name for each of the six formats
    try:
        # formats= stops Pillow from guessing a different decoder than we sniffed.
        img = Image.open(io.BytesIO(data), formats=[fmt])
        if img.width * img.height > MAX_PIXELS:
            raise UndecodableImage("Unsupported media type: image dimensions too large")
        img.seek(0)  # animated GIF/WebP/TIFF: the first frame
        img.load()
    except UndecodableImage:
        raise
    except Exception as exc:  # Pillow raises many types (and bomb warnings) on bad data
        raise UndecodableImage(f"Unsupported media type: cannot decode {fmt} image") from exc
    return img


def cut_out(img: Image.Image) -> Image.Image:
    """Return an RGBA cut-out of ``img`` (same size): the background made transparent."""
    rgb, own_alpha = _split(img)
    alpha = matte(rgb, own_alpha)
    out = rgb.copy()
    out.putalpha(alpha)
    return out


def matte(rgb: Image.Image, own_alpha: Image.Image | None = None) -> Image.Image:
    """Return the soft alpha matte ("L") of an RGB image, times ``own_alpha`` if given."""
    opaque = None if own_alpha is None else own_alpha.point(lambda a: 255 if a >= 128 else 0)
    colour = _border_median(rgb, opaque)
    diff = ImageChops.difference(rgb, Image.new("RGB", rgb.size, colour))
    red, green, blue = diff.split()
    # Chebyshev distance: a change of hue counts as much as a change of brightness.
    distance = ImageChops.lighter(ImageChops.lighter(red, green), blue)
    # Smoothing the distance first keeps JPEG noise and single pixels out of the matte.
    distance = distance.filter(ImageFilter.BoxBlur(1))
    low = _border_noise(distance, opaque)
    alpha = distance.point(_ramp(low, low + 48))
    alpha = alpha.filter(ImageFilter.GaussianBlur(0.8))
    if own_alpha is not None:
        alpha = ImageChops.multiply(alpha, own_alpha)
    return alpha


def encode_png(img: Image.Image) -> bytes:
    """Encode ``img`` as PNG, favouring speed over size (the answer is local)."""
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _split(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """Return (RGB image, own alpha or None) for an image of any Pillow mode."""
    if img.mode in _16_BIT_MODES or img.mode in ("I", "F"):
        img = _to_8_bit(img)
    has_alpha = img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        return rgba.convert("RGB"), rgba.getchannel("A")
    return img.convert("RGB"), None


def _to_8_bit(img: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit integer or float grey image into "L"."""
    if img.mode in _16_BIT_MODES:
        low, high = 0.0, 65535.0
        img = img.convert("I")
    else:
        extrema = img.getextrema()
        low, high = float(extrema[0]), float(extrema[1])  # type: ignore[arg-type]
    scale = 255.0 / (high - low) if high > low else 0.0
    return img.point(lambda v: v * scale - low * scale).convert("L")


def _border_median(rgb: Image.Image, mask: Image.Image | None) -> tuple[int, int, int]:
    """The per-channel median colour of the border pixels (opaque ones where known)."""
    hist = _border_histogram(rgb, mask)
    if mask is not None and sum(hist[:256]) == 0:  # a fully transparent border
        hist = _border_histogram(rgb, None)
    median = ImageStat.Stat(hist).median
    return int(median[0]), int(median[1]), int(median[2])


def _border_noise(distance: Image.Image, mask: Image.Image | None) -> int:
    """Where the ramp starts: above the 80th percentile of the border's distance."""
    hist = _border_histogram(distance, mask)
    if sum(hist) == 0:
        hist = _border_histogram(distance, None)
    target, seen = sum(hist) * 0.8, 0
    for value, count in enumerate(hist):
        seen += count
        if seen >= target:
            return max(16, min(value + 10, 96))
    return 16


def _border_histogram(img: Image.Image, mask: Image.Image | None) -> list[int]:
    """The summed histogram of a strip along each edge of ``img``."""
    width, height = img.size
    band = max(1, min(width, height) // 100)
    boxes = (
        (0, 0, width, band),
        (0, height - band, width, height),
        (0, band, band, height - band),
        (width - band, band, width, height - band),
    )
    total: list[int] = []
    for box in boxes:
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        hist = img.crop(box).histogram(None if mask is None else mask.crop(box))
        total = hist if not total else [a + b for a, b in zip(total, hist, strict=True)]
    return total


def _ramp(low: int, high: int) -> list[int]:
    """A smoothstep look-up table: 0 up to ``low``, 255 from ``high``, smooth between."""
    table = []
    for value in range(256):
        t = min(1.0, max(0.0, (value - low) / (high - low)))
        table.append(round(255 * t * t * (3 - 2 * t)))
    return table
