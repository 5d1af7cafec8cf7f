"""A finishing's geometry and shadow (SPEC §9): crop, margin, canvas, align, max_side; the shadow.

:func:`plan` reads the subject box from the alpha and decides, in numbers
only, what is kept of the stored image and where it goes (a :class:`Layout`);
:func:`arrange` applies a layout to one picture, the RGBA cut-out or the "L"
mask, so both come out the same size with the subject in the same place;
:func:`with_shadow` puts the soft shadow under a finished cut-out.

Order (SPEC §9): crop to the subject, add the margin, fit onto the canvas
(a fixed size scales; a ratio only pads), then ``max_side`` shrinks. The
canvas's scale and ``max_side``'s are one resize (Lanczos) of the cropped
region, so a 24-megapixel photo is cut to its subject before anything else
and never resampled twice. The "subject" a margin is measured on is what the
crop keeps: the subject box with ``crop = true``, the whole image otherwise.

Where a geometry or a shadow applies, the result is turned upright by the
original's EXIF orientation first: a canvas's width, ``align = "bottom"`` and
the shadow's "down" are what a viewer sees. Such outputs carry no orientation
tag; outputs without either keep the stored pixels and the tag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageFilter

from bgsyncd.config.finishing import Finishing
from bgsyncd.imaging.plan import Size, displayed_size

Box = tuple[int, int, int, int]
"""(left, top, right, bottom), right and bottom exclusive, as Pillow's boxes."""

SUBJECT_ALPHA = 8
"""A pixel belongs to the subject when its alpha is at least this (of 255)."""

SHADOW_BLUR = 0.02
"""The shadow's blur (Gaussian standard deviation), as a part of the subject's longer side."""
SHADOW_DROP = 0.01
"""How far the shadow is moved down, as a part of the subject's longer side."""
SHADOW_OPACITY = 0.35
"""The shadow is black at this opacity where the matte is opaque."""

# EXIF orientation -> the transpose that applies it (what a viewer does).
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_SUBJECT_LUT = [0] * SUBJECT_ALPHA + [255] * (256 - SUBJECT_ALPHA)
_SHADOW_LUT = [round(v * SHADOW_OPACITY) for v in range(256)]


@dataclass(frozen=True)
class Layout:
    """Where one finishing puts the stored image's pixels."""

    region: Box
    """The part of the stored image kept: the subject box, or the whole image."""
    whole: bool
    """``region`` is the whole image (nothing cut)."""
    turn: int
    """The EXIF orientation applied to make it upright; 1 keeps the pixels as stored."""
    placed: Size
    """The region's size once scaled and upright."""
    canvas: Size
    """The output's size."""
    offset: tuple[int, int]
    """Where the placed region's top-left corner lands on the canvas."""
    no_subject: bool
    """``crop`` was asked for and no pixel reaches :data:`SUBJECT_ALPHA`: kept whole."""


def subject_box(alpha: Image.Image) -> Box | None:
    """The smallest box holding every pixel of ``alpha`` ("L") at :data:`SUBJECT_ALPHA` or more.

    None when there is no such pixel.
    """
    box = alpha.point(_SUBJECT_LUT).getbbox()
    return None if box is None else (box[0], box[1], box[2], box[3])


def plan(alpha: Image.Image, finishing: Finishing, orientation: int) -> Layout:
    """The layout of ``finishing`` for a full-size ``alpha`` in stored orientation.

    ``orientation``: the EXIF orientation of the stored pixels (1 when they are upright).
    """
    width, height = alpha.size
    region: Box = (0, 0, width, height)
    no_subject = False
    if finishing.crop:
        box = subject_box(alpha)
        no_subject = box is None
        region = region if box is None else box
    turn = orientation if finishing.reshapes or finishing.shadow else 1
    upright = displayed_size((region[2] - region[0], region[3] - region[1]), turn)
    placed, canvas, offset = fit(upright, finishing)
    whole = region == (0, 0, width, height)
    return Layout(region, whole, turn, placed, canvas, offset, no_subject)


def fit(size: Size, finishing: Finishing) -> tuple[Size, Size, tuple[int, int]]:
    """Margin, canvas, align and max_side for a subject of ``size``: (placed, canvas, offset)."""
    width, height = size
    margin, canvas = finishing.margin, finishing.canvas
    bottom = finishing.align == "bottom"
    if canvas is not None and canvas.fixed:
        cw, ch = canvas.width, canvas.height
        if margin.percent:
            mx, my = margin.amount * cw / 100, margin.amount * ch / 100
        else:
            mx = my = margin.amount
        # A margin in pixels may leave no room on a small canvas: keep a pixel.
        room_w, room_h = max(1.0, cw - 2 * mx), max(1.0, ch - 2 * my)
        scale = min(room_w / width, room_h / height)
        pw = min(max(1, round(width * scale)), cw)
        ph = min(max(1, round(height * scale)), ch)
        x = (cw - pw) // 2
        y = max(0, round(ch - my) - ph) if bottom else (ch - ph) // 2
    else:
        side = max(width, height)
        m = round(margin.amount * side / 100) if margin.percent else round(margin.amount)
        cw, ch = width + 2 * m, height + 2 * m
        if canvas is not None:  # the smallest canvas of ratio a:b holding it
            a, b = canvas.width, canvas.height
            if cw * b >= ch * a:
                ch = -(-cw * b // a)
            else:
                cw = -(-ch * a // b)
        pw, ph = width, height
        x = (cw - pw) // 2
        y = ch - m - ph if bottom else (ch - ph) // 2
    return _shrink((pw, ph), (cw, ch), (x, y), finishing.max_side)


def _shrink(
    placed: Size, canvas: Size, offset: tuple[int, int], max_side: int
) -> tuple[Size, Size, tuple[int, int]]:
    """Scale everything down so the canvas's longer side is at most ``max_side`` (0: any)."""
    longer = max(canvas)
    if max_side <= 0 or longer <= max_side:
        return placed, canvas, offset
    f = max_side / longer
    cw, ch = max(1, round(canvas[0] * f)), max(1, round(canvas[1] * f))
    pw, ph = min(max(1, round(placed[0] * f)), cw), min(max(1, round(placed[1] * f)), ch)
    x = min(max(0, round(offset[0] * f)), cw - pw)
    y = min(max(0, round(offset[1] * f)), ch - ph)
    return (pw, ph), (cw, ch), (x, y)


def crop(img: Image.Image, layout: Layout) -> Image.Image:
    """``img`` (full size, stored orientation) cut to the layout's region; itself when whole."""
    return img if layout.whole else img.crop(layout.region)


def arrange(piece: Image.Image, layout: Layout) -> Image.Image:
    """A region from :func:`crop` scaled, turned upright and placed on the layout's canvas.

    Works on any mode; the canvas around it is 0 (transparent in RGBA, black
    in a mask). Returns ``piece`` itself when the layout changes nothing.
    """
    stored = displayed_size(layout.placed, layout.turn)  # a turn there and back is a turn
    if piece.size != stored:
        # Pillow premultiplies RGBA for this: no colour bleeds from transparent pixels.
        piece = piece.resize(stored, Image.Resampling.LANCZOS)
    if layout.turn != 1:
        piece = piece.transpose(TRANSPOSE[layout.turn])
    if layout.canvas == layout.placed and layout.offset == (0, 0):
        return piece
    out = Image.new(piece.mode, layout.canvas, 0)
    out.paste(piece, layout.offset)
    return out


def shadow(alpha: Image.Image) -> tuple[Image.Image, Box] | None:
    """The shadow's alpha ("L") for a finished ``alpha``, and the box of ``alpha`` it covers.

    The matte blurred by :data:`SHADOW_BLUR` of the subject's longer side, moved
    down by :data:`SHADOW_DROP` of it, at :data:`SHADOW_OPACITY`; only the part
    that can be above 0 (the subject and three standard deviations around it).
    None when ``alpha`` has no subject.
    """
    box = subject_box(alpha)
    if box is None:
        return None
    side = max(box[2] - box[0], box[3] - box[1])
    radius = SHADOW_BLUR * side
    drop = round(SHADOW_DROP * side)
    pad = math.ceil(3 * radius) + 1
    width, height = alpha.size
    left, top = max(0, box[0] - pad), max(0, box[1] - pad)
    right, bottom = min(width, box[2] + pad), min(height, box[3] + pad)
    blurred = alpha.crop((left, top, right, bottom)).filter(ImageFilter.GaussianBlur(radius))
    # Moved down: what falls below the picture is cut off.
    covered = (left, top + drop, right, min(height, bottom + drop))
    if covered[3] <= covered[1]:
        return None
    blurred = blurred.crop((0, 0, right - left, covered[3] - covered[1]))
    return blurred.point(_SHADOW_LUT), covered


def with_shadow(cutout: Image.Image) -> Image.Image:
    """An RGBA ``cutout`` over its black soft shadow (:func:`shadow`), changed in place.

    Composited onto a background afterwards, the shadow lies under the
    subject and on top of the background. Only the shadow's box is
    composited: outside it the cut-out is as it was.
    """
    cast = shadow(cutout.getchannel("A"))
    if cast is None:
        return cutout
    alpha, box = cast
    layer = Image.new("RGBA", alpha.size, 0)
    layer.putalpha(alpha)
    cutout.paste(Image.alpha_composite(layer, cutout.crop(box)), box[:2])
    return cutout
