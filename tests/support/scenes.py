"""Synthetic product photos with their true masks, for judging a matte.

Each scene is drawn at twice its size and shrunk (so edges are antialiased as
a camera's are), given a little grain and a JPEG round trip. The true mask is
drawn with the same shapes and shrunk the same way: 255 is subject, 0
backdrop, values between are edge pixels.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageDraw, ImageFilter

Colour = tuple[int, int, int]
Box = tuple[int, int, int, int]

BEIGE: Colour = (226, 204, 178)
SKIN: Colour = (206, 166, 134)
LIGHT_GREY: Colour = (218, 218, 215)
WHITE: Colour = (249, 249, 247)


@dataclass(frozen=True)
class Scene:
    """A photo and its true mask ("L", the photo's size)."""

    name: str
    photo: Image.Image
    truth: Image.Image


# --- backdrops (drawn at the doubled size) --------------------------------------------


def _plain(size: tuple[int, int], colour: Colour) -> Image.Image:
    return Image.new("RGB", size, colour)


def _blend(size: tuple[int, int], a: Colour, b: Colour, mask: Image.Image) -> Image.Image:
    """``a`` where ``mask`` is 0, ``b`` where it is 255."""
    return Image.composite(Image.new("RGB", size, b), Image.new("RGB", size, a), mask)


def _vertical(size: tuple[int, int], top: Colour, bottom: Colour) -> Image.Image:
    return _blend(size, top, bottom, Image.linear_gradient("L").resize(size))


def _horizontal(size: tuple[int, int], left: Colour, right: Colour) -> Image.Image:
    ramp = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize(size)
    return _blend(size, right, left, ramp)


def _vignette(size: tuple[int, int], centre: Colour, corner: Colour) -> Image.Image:
    return _blend(size, centre, corner, Image.radial_gradient("L").resize(size))


def _cast_shadow(size: tuple[int, int], colour: Colour) -> Image.Image:
    """A plain backdrop with a soft shadow falling in from the left edge (two tones)."""
    width, height = size
    shade = Image.new("L", size, 0)
    ImageDraw.Draw(shade).rectangle((0, 0, width * 35 // 100, height), fill=255)
    shade = shade.filter(ImageFilter.GaussianBlur(width // 12))
    dark: Colour = (colour[0] * 3 // 4, colour[1] * 3 // 4, colour[2] * 3 // 4)
    return _blend(size, colour, dark, shade)


# --- subjects: shapes drawn onto the subject layer and the mask -------------------------


Painter = Callable[[ImageDraw.ImageDraw, ImageDraw.ImageDraw, int, int], None]


def _shape(kind: str, box: Box, colour: Colour) -> Painter:
    def paint(layer: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw, w: int, h: int) -> None:
        for draw, fill in ((layer, colour), (mask, 255)):
            if kind == "ellipse":
                draw.ellipse(box, fill=fill)
            elif kind == "rect":
                draw.rounded_rectangle(box, radius=max(2, (box[2] - box[0]) // 8), fill=fill)
            else:
                raise ValueError(kind)

    return paint


def _polygon(points: list[tuple[int, int]], colour: Colour) -> Painter:
    def paint(layer: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw, w: int, h: int) -> None:
        layer.polygon(points, fill=colour)
        mask.polygon(points, fill=255)

    return paint


def _scaled(w: int, h: int, fx0: float, fy0: float, fx1: float, fy1: float) -> Box:
    return round(w * fx0), round(h * fy0), round(w * fx1), round(h * fy1)


def _ball(w: int, h: int, colour: Colour) -> list[Painter]:
    return [_shape("ellipse", _scaled(w, h, 0.3, 0.25, 0.7, 0.8), colour)]


def _box(w: int, h: int, colour: Colour) -> list[Painter]:
    return [_shape("rect", _scaled(w, h, 0.25, 0.2, 0.75, 0.85), colour)]


def _bottle(w: int, h: int, colour: Colour, label: Colour) -> list[Painter]:
    """A bottle with a label whose colour may be the backdrop's: it is inside the bottle."""
    return [
        _shape("rect", _scaled(w, h, 0.35, 0.35, 0.65, 0.92), colour),
        _shape("rect", _scaled(w, h, 0.45, 0.12, 0.55, 0.4), colour),
        _shape("rect", _scaled(w, h, 0.38, 0.5, 0.62, 0.75), label),
    ]


def _portrait(w: int, h: int, skin: Colour, clothes: Colour) -> list[Painter]:
    """A head and shoulders, the shoulders cut by the bottom edge."""
    return [
        _shape("rect", _scaled(w, h, 0.18, 0.68, 0.82, 1.2), clothes),
        _shape("rect", _scaled(w, h, 0.44, 0.5, 0.56, 0.72), skin),
        _shape("ellipse", _scaled(w, h, 0.35, 0.12, 0.65, 0.6), skin),
    ]


def _lamp(w: int, h: int, colour: Colour) -> list[Painter]:
    """A lamp: a base, a pole a few pixels thin, a shade."""
    pole = max(8, w // 50)  # at the doubled size: 4 or more pixels in the photo
    return [
        _shape("ellipse", _scaled(w, h, 0.35, 0.82, 0.65, 0.92), colour),
        _shape(
            "rect",
            (w // 2 - pole // 2, round(h * 0.35), w // 2 + pole // 2, round(h * 0.87)),
            colour,
        ),
        _polygon(
            [
                (round(w * 0.4), round(h * 0.12)),
                (round(w * 0.6), round(h * 0.12)),
                (round(w * 0.7), round(h * 0.38)),
                (round(w * 0.3), round(h * 0.38)),
            ],
            colour,
        ),
    ]


def _shoe(w: int, h: int, colour: Colour) -> list[Painter]:
    """A shoe-like outline standing on the bottom edge."""
    points = [(0.15, 1.0), (0.15, 0.55), (0.35, 0.5), (0.5, 0.7), (0.85, 0.78), (0.9, 1.0)]
    return [_polygon([(round(w * x), round(h * y)) for x, y in points], colour)]


def _mug(w: int, h: int, colour: Colour) -> list[Painter]:
    """A mug whose handle encloses a hole: the backdrop shows through it."""
    body = _scaled(w, h, 0.3, 0.25, 0.62, 0.85)

    def handle(layer: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw, _w: int, _h: int) -> None:
        box = _scaled(w, h, 0.5, 0.35, 0.8, 0.7)
        thick = max(12, w // 25)
        for draw, fill in ((layer, colour), (mask, 255)):
            draw.ellipse(box, outline=fill, width=thick)

    return [_shape("rect", body, colour), handle]


def near(colour: Colour, by: int = 14) -> Colour:
    """A colour ``by`` levels lighter (darker where there is no room) in every channel."""
    r, g, b = (c + by if c + by <= 255 else c - by for c in colour)
    return r, g, b


# --- the scenes ------------------------------------------------------------------------


def _distinct(rng: random.Random, backdrop: Colour) -> Colour:
    """A random colour at least 70 levels (in some channel) from the backdrop's."""
    while True:
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if max(abs(a - b) for a, b in zip(colour, backdrop, strict=True)) >= 70:
            return colour


def _render(
    name: str, size: tuple[int, int], backdrop: Image.Image, painters: list[Painter], seed: int
) -> Scene:
    big = backdrop.size
    layer = Image.new("RGB", big)
    mask = Image.new("L", big, 0)
    layer_draw, mask_draw = ImageDraw.Draw(layer), ImageDraw.Draw(mask)
    for paint in painters:
        paint(layer_draw, mask_draw, *big)
    photo = Image.composite(layer, backdrop, mask).resize(size, Image.Resampling.BOX)
    truth = mask.resize(size, Image.Resampling.BOX)
    rng = random.Random(seed)
    grain = Image.frombytes("L", size, rng.randbytes(size[0] * size[1])).point(lambda v: v // 43)
    photo = ImageChops.add(photo, Image.merge("RGB", (grain,) * 3), 1.0, -3)  # +-3 of grain
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    return Scene(name, Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), truth)


def _backdrop(kind: int, big: tuple[int, int], base: Colour) -> Image.Image:
    far = (base[0] * 85 // 100, base[1] * 85 // 100, base[2] * 85 // 100)
    if kind == 0:
        return _plain(big, base)
    if kind == 1:
        return _vertical(big, base, far)
    if kind == 2:
        return _horizontal(big, far, base)
    if kind == 3:
        return _vignette(big, base, far)
    return _cast_shadow(big, base)


def product_scenes(count: int = 30) -> list[Scene]:
    """``count`` varied product photos on plain, gradient, vignetted and shaded backdrops."""
    sizes = [(480, 360), (360, 480), (512, 384), (400, 400), (600, 400)]
    scenes: list[Scene] = []
    for i in range(count):
        rng = random.Random(1000 + i)
        size = sizes[i % len(sizes)]
        big = (size[0] * 2, size[1] * 2)
        w, h = big
        kind = i % 10
        backdrop_kind = (i // 10 + i) % 5
        base: Colour = rng.choice([(238, 238, 234), (200, 215, 235), (40, 40, 44), (235, 225, 205)])
        if kind == 0:  # a skin-coloured head on a beige backdrop
            base = BEIGE
            painters = _portrait(w, h, SKIN, _distinct(rng, base))
        elif kind == 1:  # a white object on a light-grey backdrop
            base = LIGHT_GREY
            painters = _box(w, h, WHITE)
        elif kind == 2:  # a label of nearly the backdrop's colour on a bottle
            painters = _bottle(w, h, _distinct(rng, base), near(base))
        elif kind == 3:
            painters = _lamp(w, h, _distinct(rng, base))
        elif kind == 4:
            painters = _shoe(w, h, _distinct(rng, base))
        elif kind == 5:
            painters = _mug(w, h, _distinct(rng, base))
        elif kind == 6:
            painters = _ball(w, h, _distinct(rng, base))
        elif kind == 7:  # a head on a backdrop near its own colour, shoulders off the edge
            base = (214, 180, 150)
            painters = _portrait(w, h, (188, 140, 108), _distinct(rng, base))
        elif kind == 8:
            painters = _box(w, h, _distinct(rng, base))
        else:
            painters = _bottle(w, h, _distinct(rng, base), _distinct(rng, base))
        backdrop = _backdrop(backdrop_kind, big, base)
        names = ["plain", "vertical", "horizontal", "vignette", "shadow"]
        scenes.append(
            _render(f"{i:02d}-{kind}-{names[backdrop_kind]}", size, backdrop, painters, i)
        )
    return scenes
