"""The copy sent in place of an input: stored pixels, no metadata, at most ``proxy_side``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

from bgsyncd.imaging import codec, plan
from bgsyncd.imaging.plan import Size

_JPEG_QUALITY = 90
_MAX_SHRINK_STEPS = 25


@dataclass(frozen=True)
class Proxy:
    """The copy sent in place of an input."""

    data: bytes
    format: str
    """ "jpeg", or "png" where the image has transparency."""
    size: Size
    """What was sent: check the answer against this (:func:`~bgsyncd.imaging.check_matte`)."""
    decoded_size: Size
    """The size the decoder produced: below the stored size for a JPEG (``draft``)."""


def make_proxy(data: bytes, *, side: int | None, max_bytes: int) -> Proxy:
    """Make the copy sent in place of ``data``: its stored pixels, no metadata at all.

    Lanczos-scaled so its longer side is ``side`` (never enlarged; None keeps
    the stored size), EXIF rotation not applied, the first frame of an animated
    image, 8-bit RGB(A); JPEG quality 90, or PNG where the image has
    transparency; reduced further until it fits ``max_bytes``. A JPEG is
    decoded by libjpeg at the smallest of 1/8, 1/4, 1/2 scale that is still at
    least the target size (in :func:`~bgsyncd.imaging.full_decode_slot` when
    progressive: libjpeg buffers it whole); anything else at full size in the
    slot. Raises
    :class:`~bgsyncd.imaging.CorruptImage`, or ValueError when not even one
    pixel fits ``max_bytes``.
    """
    img = codec.open_header(data)
    stored = img.size
    target = stored if side is None else plan.scaled_size(stored, side)
    if codec.format_name(img) != "jpeg" or target == stored:
        with codec.full_decode_slot():
            codec.load(img)
            return _encode(img, target, None, max_bytes)
    drafted = img.draft(None, target)
    # The box is the stored image's extent in decoded pixels: libjpeg rounds
    # the decoded size up, and resizing from the box keeps the aspect exact.
    box = None if drafted is None else drafted[1]
    with codec.decode_slot(img, data):  # a progressive JPEG buffers it all
        codec.load(img)
        return _encode(img, target, box, max_bytes)


def _encode(
    img: Image.Image,
    target: Size,
    box: tuple[float, float, float, float] | None,
    max_bytes: int,
) -> Proxy:
    """Scale a loaded image to ``target`` (and below, until it fits) and encode it."""
    decoded = img.size
    rgb, alpha = codec.rgb_and_alpha(img)
    if alpha is not None and alpha.getextrema()[0] == 255:
        alpha = None  # an alpha channel opaque everywhere is no transparency
    frame = rgb if alpha is None else codec.with_alpha(rgb, alpha)
    del rgb, alpha
    scale = 1.0
    for _ in range(_MAX_SHRINK_STEPS):
        size = (max(1, round(target[0] * scale)), max(1, round(target[1] * scale)))
        sized = frame
        if size != frame.size or box is not None:
            sized = frame.resize(size, Image.Resampling.LANCZOS, box=box)
        if sized.mode == "RGBA":
            encoded, fmt = codec.save(sized, "PNG"), "png"
        else:
            encoded, fmt = codec.save(sized, "JPEG", quality=_JPEG_QUALITY), "jpeg"
        if len(encoded) <= max_bytes:
            return Proxy(encoded, fmt, size, decoded)
        if size == (1, 1):
            break
        # Encoded size grows roughly with the pixel count, so each side scales
        # with the square root of the byte ratio; the 0.95 margin and the 0.9
        # cap make every step a real reduction.
        scale *= min(0.9, 0.95 * math.sqrt(max_bytes / len(encoded)))
    raise ValueError(f"image cannot be reduced to {max_bytes} bytes")
