"""The outputs: an API answer checked, applied to the original's own pixels, encoded.

A matte (``"proxy"`` mode, or the shrink path) is brought to the original's
size and becomes the alpha of the original's own pixels: ``edges =
"refine"`` along the photo's edges, with edge colours cleaned
(:mod:`~bgsyncd.imaging.edges`), ``"resize"`` scaled alone. An 8-bit RGB
input's colour values reach a PNG cut-out exactly wherever it is opaque (with
``"resize"``, wherever alpha is above 0). A cut-out
(``"original"`` mode) gives its own colours and alpha, as in 0.1. Each
finishing then gets its geometry and shadow (:mod:`~bgsyncd.imaging.geometry`)
and its background. Outputs keep the original's EXIF orientation (none where a
geometry or shadow turned them upright), its RGB ICC profile and DPI; no other
metadata. The mask is the alpha as a grayscale PNG, with the cut-out's geometry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageChops

from bgsyncd.config.finishing import Finishing
from bgsyncd.imaging import codec, geometry, plan
from bgsyncd.imaging import edges as edge_refiner
from bgsyncd.imaging.codec import ImageInfo, UnusableResult
from bgsyncd.imaging.plan import Size

EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}
"""Output format -> file extension."""


def output_extension(output: str, fmt: str) -> str:
    """The primary output's file extension: a mask alone is always a PNG."""
    return "png" if output == "mask" else EXTENSIONS[fmt]


_QUALITY = 90
# zlib level 1, not Pillow's 6: a 6000 x 4000 RGBA cut-out encodes in about 1.8 s
# instead of 11 s for about 3 % more bytes. Output encoding dominates the time from
# drop to output once only a 1024-pixel copy is uploaded (bench/upload.py).
_PNG_LEVEL = 1
_HEX = frozenset("0123456789abcdefABCDEF")
# EXIF orientation -> the transpose that applies it (what a viewer does).
_TRANSPOSE = geometry.TRANSPOSE


@dataclass(frozen=True)
class Rendered:
    """The encoded outputs for one folder's settings."""

    cutout: bytes | None
    """In the folder's format; None with ``output = "mask"``."""
    mask: bytes | None
    """The alpha as a grayscale PNG; None with ``output = "cutout"``."""
    rotated_by_server: bool = False
    """A cut-out answer came turned by the EXIF rotation: outputs carry no orientation tag."""
    no_subject: bool = False
    """``crop`` found no pixel of the subject: the outputs are the whole image (SPEC §9)."""


@dataclass(frozen=True)
class _Meta:
    """What an output keeps of the original: Orientation (only), an RGB ICC profile, DPI."""

    exif: bytes
    icc: bytes | None
    dpi: tuple[float, float] | None
    orientation: int = 1
    """The stored pixels' EXIF orientation (``exif`` says it to viewers)."""

    @classmethod
    def of(cls, img: Image.Image) -> _Meta:
        icc = img.info.get("icc_profile")
        # A CMYK or gray profile would be wrong on our RGB(A) outputs.
        if not isinstance(icc, bytes) or icc[16:20] != b"RGB ":
            icc = None
        dpi = img.info.get("dpi")
        kept = None
        if isinstance(dpi, tuple) and len(dpi) == 2 and all(float(d) > 0 for d in dpi):
            kept = (float(dpi[0]), float(dpi[1]))
        turn = codec.orientation(img)
        return cls(codec.orientation_exif(turn), icc, kept, turn)


def check_matte(answer: bytes, sent: Size) -> Size:
    """Return the size of a usable matte; raise :class:`UnusableResult` otherwise.

    Usable: its size, read from the header before any pixel is decoded, has
    the aspect ratio of what was sent, to a pixel
    (:func:`~bgsyncd.imaging.same_aspect`), and is within 4 times its pixels
    and a quarter of its longer side (:func:`~bgsyncd.imaging.plan.matte_scale_fits`);
    then it decodes, inside :func:`~bgsyncd.imaging.full_decode_slot`.
    """
    with _answer_header(answer, "matte") as img:
        size: Size = img.size
        if not plan.same_aspect(size, sent):
            raise UnusableResult(f"API matte is {_wh(size)}, not the shape of the {_wh(sent)} sent")
        if not plan.matte_scale_fits(size, sent):
            raise UnusableResult(f"API matte is {_wh(size)}, out of scale for the {_wh(sent)} sent")
        with codec.full_decode_slot():
            _load_answer(img, "matte")
    return size


def check_cutout(answer: bytes, info: ImageInfo) -> Size:
    """Return the size of a usable cut-out (``"original"`` mode); raise UnusableResult otherwise.

    Usable: it decodes, and has the shape of the input as stored or after its
    EXIF rotation (a server that applied it), at any scale.
    """
    size = _answer(answer, "cut-out").size
    turned = plan.displayed_size(info.size, info.orientation)
    if not (plan.same_aspect(size, info.size) or plan.same_aspect(size, turned)):
        raise UnusableResult(
            f"API cut-out is {_wh(size)}, not the shape of the {_wh(info.size)} sent"
        )
    return size


def render(
    original: bytes,
    answer: bytes,
    *,
    answer_is_matte: bool,
    output: str,
    fmt: str,
    background: str,
    edges: str = "resize",
) -> Rendered:
    """One tree's outputs with no geometry: :func:`render_all` for a single :class:`Finishing`."""
    finishing = Finishing(output=output, format=fmt, background=background, edges=edges)
    (rendered,) = render_all(
        original, answer, answer_is_matte=answer_is_matte, edges=edges, finishings=[finishing]
    )
    return rendered


def render_all(
    original: bytes,
    answer: bytes,
    *,
    answer_is_matte: bool,
    edges: str,
    finishings: Sequence[Finishing],
) -> list[Rendered]:
    """Make the outputs of each of ``finishings`` from the original and a checked API answer.

    The original is decoded and the matte brought to its size once; each
    finishing (a folder's own outputs, then each rendition's) is made from
    them in turn (SPEC §9).

    ``answer_is_matte``: the matte is brought to the original's size
    (``edges``: "resize" scales it, Lanczos; "refine" follows the original's
    own edges) and becomes the alpha of the original's own pixels. Otherwise
    the answer is a cut-out whose colours and alpha are used, scaled to the
    original's size (turned, and without orientation tag, when the server
    applied the EXIF rotation). Alpha the original already had is multiplied
    in. A finishing's ``output`` is "cutout" | "mask" | "both"; its ``format``
    "png", "webp" or "jpeg"; its ``background`` "" keeps transparency (PNG, or
    lossless WebP) and "#rrggbb" composites onto that colour (JPEG, which has
    no alpha, needs one). Runs inside :func:`~bgsyncd.imaging.full_decode_slot`.
    Raises :class:`UnusableResult` for an undecodable answer, ValueError for a
    bad format or background.
    """
    with codec.full_decode_slot():
        orig = codec.decode(original, "original image")
        meta = _Meta.of(orig)
        stored, turn = orig.size, codec.orientation(orig)
        rgb, own_alpha = codec.rgb_and_alpha(orig)
        del orig
        res = _answer(answer, "matte" if answer_is_matte else "cut-out")
        rotated = False
        if answer_is_matte:
            alpha = _matte_channel(res)
        else:
            size = stored
            if plan.rotated_by_server(res.size, stored, turn):
                rotated, size = True, plan.displayed_size(stored, turn)
                meta = dataclasses.replace(meta, exif=b"")
                if own_alpha is not None:
                    own_alpha = own_alpha.transpose(_TRANSPOSE[turn])
            colours, theirs = codec.rgb_and_alpha(res)
            alpha = theirs if theirs is not None else Image.new("L", res.size, 255)
            rgb = (
                colours if colours.size == size else colours.resize(size, Image.Resampling.LANCZOS)
            )
            del colours, theirs
        del res
        if answer_is_matte and edges == "refine":
            alpha = edge_refiner.refine(rgb, alpha)  # cleans rgb's edge colours in place
        elif alpha.size != rgb.size:
            alpha = alpha.resize(rgb.size, Image.Resampling.LANCZOS)
        if own_alpha is not None:
            alpha = ImageChops.multiply(own_alpha, alpha)
            del own_alpha
        made = []
        for i, finishing in enumerate(finishings):
            last = i == len(finishings) - 1
            made.append(_finish(rgb, alpha, meta, finishing, rotated, reuse=last))
        return made


def _finish(
    rgb: Image.Image,
    alpha: Image.Image,
    meta: _Meta,
    finishing: Finishing,
    rotated: bool,
    *,
    reuse: bool,
) -> Rendered:
    """One finishing's outputs from the full-size colours and alpha (stored orientation).

    Geometry first (:mod:`~bgsyncd.imaging.geometry`: the mask gets the same),
    then the shadow, then the background as the cut-out is encoded.
    ``reuse``: ``rgb`` is not needed afterwards and becomes the cut-out in place.
    """
    # A cut-out turned by the server is upright already.
    layout = geometry.plan(alpha, finishing, 1 if rotated else meta.orientation)
    if layout.turn != 1:
        meta = dataclasses.replace(meta, exif=b"", orientation=1)
    mask = None
    if finishing.output in ("mask", "both"):
        mask = _encode_mask(geometry.arrange(geometry.crop(alpha, layout), layout), meta)
    if finishing.output == "mask":
        return Rendered(None, mask, rotated, layout.no_subject)
    cutout = geometry.crop(rgb, layout)
    if cutout is rgb and not reuse:
        cutout = rgb.copy()
    cutout.putalpha(geometry.crop(alpha, layout))  # in place: the RGB piece becomes RGBA
    cutout = geometry.arrange(cutout, layout)
    if finishing.shadow:
        cutout = geometry.with_shadow(cutout)
    encoded = _encode(cutout, meta, finishing.format, finishing.background)
    return Rendered(encoded, mask, rotated, layout.no_subject)


def _encode_mask(alpha: Image.Image, meta: _Meta) -> bytes:
    """The mask output: ``alpha`` as a grayscale PNG with the original's orientation and DPI."""
    return codec.save(alpha, "PNG", compress_level=_PNG_LEVEL, exif=meta.exif, dpi=meta.dpi)


def _encode(img: Image.Image, meta: _Meta, fmt: str, background: str) -> bytes:
    """Encode an RGBA cut-out as ``fmt``, flattened onto ``background`` if one is given."""
    if fmt not in EXTENSIONS:
        raise ValueError(f"unknown output format {fmt!r}")
    colour = _parse_background(background)
    if fmt == "jpeg" and colour is None:
        raise ValueError('format "jpeg" needs a background colour')
    if colour is not None:
        flat = Image.new("RGB", img.size, colour)
        flat.paste(img, mask=img.getchannel("A"))
        img = flat
    elif img.mode == "RGBA":
        _clear_hidden(img)
    if fmt == "png":
        return codec.save(
            img,
            "PNG",
            compress_level=_PNG_LEVEL,
            exif=meta.exif,
            icc_profile=meta.icc,
            dpi=meta.dpi,
        )
    if fmt == "webp":  # WebP has no resolution field: DPI cannot be kept there
        if img.mode == "RGBA":
            # Lossless keeps every colour where alpha > 0; under alpha 0 libwebp may
            # flatten them (not exact=True), which makes a cut-out of a busy
            # background several times smaller.
            return codec.save(img, "WEBP", lossless=True, exif=meta.exif, icc_profile=meta.icc)
        return codec.save(img, "WEBP", quality=_QUALITY, exif=meta.exif, icc_profile=meta.icc)
    return codec.save(
        img, "JPEG", quality=_QUALITY, exif=meta.exif, icc_profile=meta.icc, dpi=meta.dpi
    )


_HIDDEN = [255] + [0] * 255  # alpha -> where the colour cannot be seen


def _clear_hidden(img: Image.Image) -> None:
    """Make every fully transparent pixel of an RGBA cut-out transparent black, in place.

    No viewer shows a colour under alpha 0, but zlib still has to encode it:
    the old backdrop's detail made a photo's PNG cut-out about five times
    larger and its encoding three times slower (bench/upload.py) than the same
    cut-out with nothing behind it. Every pixel with alpha above 0 keeps its
    colour (SPEC §5's exactness holds there). In place: one "L" mask, no
    second copy of the image.
    """
    hidden = img.getchannel("A").point(_HIDDEN)
    if hidden.getbbox() is not None:
        img.paste((0, 0, 0, 0), mask=hidden)


def _parse_background(background: str) -> tuple[int, int, int] | None:
    """ "" -> None; "#rrggbb" -> (r, g, b); anything else is a ValueError."""
    if background == "":
        return None
    digits = background[1:]
    if len(background) != 7 or background[0] != "#" or not set(digits) <= _HEX:
        raise ValueError(f'background must be "" or "#rrggbb", not {background!r}')
    return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)


def _answer(data: bytes, what: str) -> Image.Image:
    """Decode an API answer; anything unreadable is an :class:`UnusableResult`."""
    img = _answer_header(data, what)
    _load_answer(img, what)
    return img


def _answer_header(data: bytes, what: str) -> Image.Image:
    """Open an API answer's header (:func:`codec.open_header`), as an :class:`UnusableResult`."""
    try:
        return codec.open_header(data, f"API {what}")
    except codec.CorruptImage as exc:
        raise UnusableResult(str(exc)) from exc


def _load_answer(img: Image.Image, what: str) -> None:
    """Decode the pixels of an answer from :func:`_answer_header`, as an :class:`UnusableResult`."""
    try:
        codec.load(img, f"API {what}")
    except codec.CorruptImage as exc:
        raise UnusableResult(str(exc)) from exc


def _matte_channel(img: Image.Image) -> Image.Image:
    """The matte of an alpha-channel answer as "L": its grey values, or its alpha if it has one.

    The reference answers a grayscale PNG; an answer that came as a cut-out
    (colour with a real alpha channel) is read liberally, by its alpha.
    """
    rgb, alpha = codec.rgb_and_alpha(img)
    if alpha is not None and alpha.getextrema() != (255, 255):
        return alpha
    return codec.to_eight_bit(img).convert("L") if alpha is None else rgb.convert("L")


def _wh(size: Size) -> str:
    return f"{size[0]}x{size[1]}"
