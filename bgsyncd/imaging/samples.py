"""The demo's sample pictures, drawn (no files shipped): Pillow stays in imaging."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def product(colour: tuple[int, int, int] = (170, 40, 50), fmt: str = "JPEG") -> bytes:
    """A product shot: a mug on a plain light background."""
    img = Image.new("RGB", (640, 480), (238, 238, 234))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((220, 120, 420, 400), radius=30, fill=colour)
    draw.ellipse((400, 180, 500, 300), outline=colour, width=22)
    return _encode(img, fmt)


def portrait() -> bytes:
    """A portrait-like shape: a head and shoulders on a pale blue background (PNG)."""
    img = Image.new("RGB", (480, 640), (210, 225, 240))
    draw = ImageDraw.Draw(img)
    draw.ellipse((170, 110, 310, 270), fill=(205, 160, 130))
    draw.rounded_rectangle((110, 280, 370, 640), radius=80, fill=(60, 70, 90))
    return _encode(img, "PNG")


def transparent() -> bytes:
    """A ring on a transparent background (PNG with alpha)."""
    img = Image.new("RGBA", (400, 400), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.ellipse((50, 50, 350, 350), fill=(250, 200, 30, 255))
    draw.ellipse((140, 140, 260, 260), fill=(0, 0, 0, 0))
    return _encode(img, "PNG")
