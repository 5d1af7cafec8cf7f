"""Finishing settings (SPEC §9): presets, margins, canvases and name templates, read once.

Pure functions over the configuration's strings; the schema calls them to
check a value, imaging and the outputs call them to use it. Nothing here
touches a file or a pixel.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bgsyncd.files.names import fill_template

# SPEC §9 "Presets": the keys each one fills in when they are not set beside it.
PRESETS: Mapping[str, Mapping[str, Any]] = {
    "amazon": {
        "crop": True,
        "canvas": "2000x2000",
        "margin": "7.5%",  # the subject fills 85 % of the frame
        "align": "center",
        "background": "#ffffff",
        "format": "jpeg",
    },
    "shopify": {
        "crop": True,
        "canvas": "2048x2048",
        "margin": "5%",
        "align": "center",
        "background": "#ffffff",
        "format": "jpeg",
    },
}

# The keys a rendition may set; any it leaves unset are its folder's.
RENDITION_KEYS = (
    "preset",
    "output",
    "format",
    "background",
    "name_template",
    "crop",
    "margin",
    "canvas",
    "align",
    "max_side",
    "shadow",
)

TEMPLATE_FIELDS = ("stem", "ext", "folder")

_MARGIN = re.compile(r"(?P<n>[0-9]+(?:\.[0-9]+)?)(?P<unit>%|px)?")
_SIZE = re.compile(r"(?P<w>[1-9][0-9]{0,4})x(?P<h>[1-9][0-9]{0,4})")
_RATIO = re.compile(r"(?P<a>[1-9][0-9]{0,3}):(?P<b>[1-9][0-9]{0,3})")
# A canvas side beyond this would be a decompression bomb of our own making.
MAX_CANVAS_SIDE = 20000


@dataclass(frozen=True)
class Margin:
    """Space around the subject: ``amount`` pixels, or percent when ``percent``."""

    amount: float
    percent: bool


@dataclass(frozen=True)
class Canvas:
    """A fixed ``width`` x ``height``, or (``fixed`` False) an aspect ratio width:height."""

    width: int
    height: int
    fixed: bool


def with_preset(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` (one table's keys) with its preset's keys filled in where not set beside it.

    An unknown preset is left as it is, for the schema to refuse with the known ones.
    """
    table = dict(raw)
    preset = table.get("preset")
    if isinstance(preset, str) and preset in PRESETS:
        for key, value in PRESETS[preset].items():
            table.setdefault(key, value)
    return table


def parse_margin(text: str) -> Margin:
    """``"5%"``, ``"7.5%"``, ``"40px"`` or ``"0"``; ValueError otherwise."""
    found = _MARGIN.fullmatch(text.strip())
    if found is None or (found["unit"] is None and float(found["n"]) != 0):
        raise ValueError('expected a percentage ("5%"), pixels ("40px") or "0"')
    amount = float(found["n"])
    percent = found["unit"] == "%"
    if percent and amount >= 50:
        raise ValueError("a margin of 50 % or more of each side leaves no room for the subject")
    if not percent and amount > MAX_CANVAS_SIDE:
        raise ValueError(f"at most {MAX_CANVAS_SIDE} pixels")
    return Margin(amount, percent)


def parse_canvas(text: str) -> Canvas | None:
    """``""`` -> None; ``"2000x2000"`` (fixed) or ``"4:5"`` (a ratio); ValueError otherwise."""
    text = text.strip()
    if not text:
        return None
    size = _SIZE.fullmatch(text)
    if size is not None:
        width, height = int(size["w"]), int(size["h"])
        if max(width, height) > MAX_CANVAS_SIDE:
            raise ValueError(f"a canvas side is at most {MAX_CANVAS_SIDE} pixels")
        return Canvas(width, height, fixed=True)
    ratio = _RATIO.fullmatch(text)
    if ratio is not None:
        return Canvas(int(ratio["a"]), int(ratio["b"]), fixed=False)
    raise ValueError('expected "", a size ("2000x2000") or an aspect ratio ("1:1", "4:5")')


def check_template(template: str) -> None:
    """Refuse a ``name_template`` that could make a bad stem (ValueError saying why).

    Bad: an unknown field, a format spec or conversion, a ``/`` or NUL, or a
    result that could be empty, ``.`` or ``..`` (``{ext}`` may be empty; the
    stem and the folder's name never are).
    """
    if "/" in template or "\0" in template:
        raise ValueError("must not contain / or NUL: it names a file, not a folder")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{exc} (write a literal brace as {{{{ or }}}})") from None
    for _literal, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in TEMPLATE_FIELDS:
            known = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
            raise ValueError(f"unknown field {{{field}}}; the fields are {known}")
        if spec or conversion:
            raise ValueError(f"{{{field}}} takes no format spec or conversion")
    # The shortest it can be: every {ext} empty, the other fields one character.
    shortest = fill_template(template, stem="x", ext="", folder="x")
    if shortest in ("", ".", ".."):
        raise ValueError("could make an empty name, '.' or '..'")


Align = Literal["center", "bottom"]


@dataclass(frozen=True)
class Finishing:
    """What one tree's outputs look like (a folder's own, or one rendition's)."""

    output: str = "cutout"
    format: str = "png"
    background: str = ""
    name_template: str = "{stem}"
    edges: str = "refine"
    crop: bool = False
    margin: Margin = Margin(0.0, percent=False)
    canvas: Canvas | None = None
    align: Align = "center"
    max_side: int = 0
    shadow: bool = False

    @property
    def reshapes(self) -> bool:
        """True when the geometry changes the image's size (crop, canvas, margin or max_side)."""
        return self.crop or self.canvas is not None or self.margin.amount > 0 or self.max_side > 0
