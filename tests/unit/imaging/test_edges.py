"""imaging.edges: ``edges = "refine"`` on real images against ``"resize"`` (SPEC §9 "Edges").

The photos are drawn with a known truth: a subject's alpha and colours over a
coloured backdrop, composited; the matte is that alpha area-averaged to a
sixth of the size, as a perfect model answering the proxy would give it.
"""

from __future__ import annotations

import io
import tracemalloc

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageStat

from bgsyncd import imaging
from bgsyncd.imaging import edges
from tests.support.helpers import open_image

SUBJECT = (170, 60, 40)  # a red-brown subject
BACKDROP = (40, 170, 80)  # on a green backdrop


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _scene(width: int, height: int, *, strands: bool = False) -> tuple[Image.Image, Image.Image]:
    """(true alpha "L", photo "RGB"): a soft-edged disc, and optionally thin strands."""
    alpha = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(alpha)
    draw.ellipse((width * 0.25, height * 0.25, width * 0.75, height * 0.9), 255)
    alpha = alpha.filter(ImageFilter.GaussianBlur(1.5))
    if strands:
        draw = ImageDraw.Draw(alpha)
        for i in range(12):
            x = width * (0.1 + 0.065 * i)
            draw.line((x, height * 0.05, x + width * 0.05, height * 0.3), fill=255, width=2)
    grain = Image.effect_noise((width, height), 12)
    subject = Image.merge("RGB", [grain.point(lambda v, c=c: c - 20 + v // 6) for c in SUBJECT])
    backdrop = Image.merge("RGB", [grain.point(lambda v, c=c: c - 20 + v // 6) for c in BACKDROP])
    return alpha, Image.composite(subject, backdrop, alpha)


def _matte(alpha: Image.Image, factor: int = 6) -> Image.Image:
    return alpha.resize((alpha.width // factor, alpha.height // factor), Image.Resampling.BOX)


def _fringe(alpha: Image.Image, rgb: Image.Image, truth: Image.Image) -> float:
    """Mean difference between the cut-out on white and the true subject on white, at edges."""
    white = Image.new("RGB", rgb.size, (255, 255, 255))
    ours = Image.composite(rgb, white, alpha)
    true = Image.composite(Image.new("RGB", rgb.size, SUBJECT), white, truth)
    band = truth.point(lambda v: 255 if 0 < v < 255 else 0).filter(ImageFilter.MaxFilter(9))
    diff = ImageChops.difference(ours, true).convert("L")
    return ImageStat.Stat(diff, band).mean[0]


def test_where_the_whole_footprint_is_certain_the_matte_is_kept() -> None:
    truth, photo = _scene(900, 600, strands=True)
    matte = _matte(truth)
    alpha = edges.refine(photo.copy(), matte)
    # Grid pixels within 4 of a pixel's position: wider than the footprint (2 + 1 + 1).
    spread = 9
    all_zero = matte.filter(ImageFilter.MaxFilter(spread)).resize(
        photo.size, Image.Resampling.NEAREST
    )
    all_full = matte.filter(ImageFilter.MinFilter(spread)).resize(
        photo.size, Image.Resampling.NEAREST
    )
    zero = all_zero.point(lambda v: 255 if v == 0 else 0)
    full = all_full.point(lambda v: 255 if v == 255 else 0)
    assert ImageStat.Stat(zero).mean[0] > 60 and ImageStat.Stat(full).mean[0] > 20  # not vacuous
    assert ImageStat.Stat(alpha, zero).extrema[0] == (0, 0)
    assert ImageStat.Stat(alpha, full).extrema[0] == (255, 255)


def test_opaque_pixels_keep_the_originals_exact_colours_and_edges_are_cleaned() -> None:
    truth, photo = _scene(600, 400)
    data = _png(photo)
    out = imaging.render(
        data,
        _png(_matte(truth)),
        answer_is_matte=True,
        output="cutout",
        fmt="png",
        background="",
        edges="refine",
    )
    assert out.cutout is not None
    cut = open_image(out.cutout)
    alpha = cut.getchannel("A")
    opaque = alpha.point(lambda v: 255 if v == 255 else 0)
    edge = alpha.point(lambda v: 255 if 0 < v < 255 else 0)
    diff = ImageChops.difference(cut.convert("RGB"), photo).convert("L")
    assert ImageStat.Stat(opaque).mean[0] > 50
    assert ImageStat.Stat(diff, opaque).extrema[0] == (0, 0)
    assert ImageStat.Stat(diff, edge).extrema[0][1] > 0  # edge pixels do get new colours


def test_the_fringe_on_white_is_smaller_than_resizes() -> None:
    truth, photo = _scene(900, 600)
    matte = _matte(truth)
    resized = matte.resize(photo.size, Image.Resampling.LANCZOS)
    cleaned = photo.copy()
    refined = edges.refine(cleaned, matte)
    before, after = _fringe(resized, photo, truth), _fringe(refined, cleaned, truth)
    assert after < 0.6 * before, (before, after)


def test_a_thin_strand_survives_better_than_with_resize() -> None:
    truth, photo = _scene(900, 600, strands=True)
    matte = _matte(truth)
    strands = Image.new("L", photo.size, 0)
    strands.paste(truth.crop((0, 0, 900, 160)), (0, 0))  # the strands, above the disc
    on = strands.point(lambda v: 255 if v == 255 else 0)
    resized = matte.resize(photo.size, Image.Resampling.LANCZOS)
    refined = edges.refine(photo.copy(), matte)
    kept_resize = ImageStat.Stat(resized, on).mean[0]
    kept_refine = ImageStat.Stat(refined, on).mean[0]
    assert kept_resize < 160  # scaled alone, a 2-pixel strand is a faint smear
    assert kept_refine > kept_resize + 50, (kept_resize, kept_refine)


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_strips_give_the_same_result_as_one_piece(rows: int) -> None:
    truth, photo = _scene(600, 400, strands=True)
    matte = _matte(truth)
    whole, strips = photo.copy(), photo.copy()
    alpha_whole = edges.refine(whole, matte, strip_rows=400)
    alpha_strips = edges.refine(strips, matte, strip_rows=rows)
    assert alpha_strips.tobytes() == alpha_whole.tobytes()
    assert strips.tobytes() == whole.tobytes()


def test_a_matte_at_full_size_is_kept_and_only_edge_colours_change() -> None:
    truth, photo = _scene(300, 200)
    cleaned = photo.copy()
    alpha = edges.refine(cleaned, truth)
    assert alpha.tobytes() == truth.tobytes()
    certain = truth.point(lambda v: 255 if v in (0, 255) else 0)
    assert (
        ImageStat.Stat(ImageChops.difference(cleaned, photo).convert("L"), certain).extrema[0][1]
        == 0
    )


def test_a_cutout_answer_is_the_same_with_either_setting() -> None:
    truth, photo = _scene(300, 200)
    answer = photo.resize((150, 100))
    answer.putalpha(truth.resize((150, 100)))
    made = [
        imaging.render(
            _png(photo),
            _png(answer),
            answer_is_matte=False,
            output="both",
            fmt="png",
            background="",
            edges=setting,
        )
        for setting in ("refine", "resize")
    ]
    assert made[0] == made[1]


def test_refining_a_large_photo_allocates_far_less_than_one_float_copy_of_it() -> None:
    truth, photo = _scene(3000, 2000)
    matte = _matte(truth, factor=3)  # a 1000 x 666 matte, as the proxy's
    tracemalloc.start()
    try:
        edges.refine(photo, matte)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # One float32 RGB copy of the photo would be 72 MB; the grid's work and a strip are far less.
    assert peak < 45 * 1024 * 1024, peak
