"""A finishing's geometry and shadow (SPEC §9), on real encoded images through ``render_all``.

Each original is a grey PNG with a red subject, each matte a PNG of the same
size (so the alpha is the matte exactly); the outputs are decoded and
measured. A rectangular subject with a fully opaque matte stays a constant
255 when scaled, so its placement can be read to the pixel from the mask.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageDraw

from bgsyncd import imaging
from bgsyncd.config.finishing import Canvas, Finishing, Margin
from bgsyncd.service.backends import load_settings
from tests.support.configs import FOLDER
from tests.support.helpers import open_image

GREY, RED = (200, 200, 200), (200, 20, 20)


def _png(img: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **params)
    return buf.getvalue()


def _scene(
    size: tuple[int, int], box: tuple[int, int, int, int]
) -> tuple[Image.Image, Image.Image]:
    """An original (grey, red ``box``) and its matte (255 in ``box``, 0 elsewhere)."""
    original = Image.new("RGB", size, GREY)
    matte = Image.new("L", size, 0)
    inclusive = (box[0], box[1], box[2] - 1, box[3] - 1)
    ImageDraw.Draw(original).rectangle(inclusive, fill=RED)
    ImageDraw.Draw(matte).rectangle(inclusive, fill=255)
    return original, matte


def _render(
    original: Image.Image | bytes, matte: Image.Image, finishing: Finishing
) -> imaging.Rendered:
    data = original if isinstance(original, bytes) else _png(original)
    (rendered,) = imaging.render_all(
        data, _png(matte), answer_is_matte=True, edges="resize", finishings=[finishing]
    )
    return rendered


def _outputs(rendered: imaging.Rendered) -> tuple[Image.Image, Image.Image]:
    assert rendered.cutout is not None and rendered.mask is not None
    return open_image(rendered.cutout), open_image(rendered.mask)


def _both(**keys: Any) -> Finishing:
    return Finishing(output="both", edges="resize", **keys)


def _px(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    """A colour pixel's channels."""
    value = img.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def _seen(colours: Image.Image, alpha: Image.Image) -> bytes:
    """The RGB a viewer can see: black wherever ``alpha`` is 0 (no colour is kept there)."""
    shown = Image.new("RGB", colours.size)
    shown.paste(colours.convert("RGB"), mask=alpha.point([0] + [255] * 255))
    return shown.tobytes()


def _placement(mask: Image.Image) -> tuple[int, int, int, int] | None:
    """Where the subject is: the box of the mask's pixels at 128 or more."""
    return mask.point(lambda v: 255 if v >= 128 else 0).getbbox()


# -- crop ------------------------------------------------------------------------------


def test_crop_keeps_the_smallest_box_of_pixels_with_alpha_8_or_more() -> None:
    original, matte = _scene((300, 200), (100, 60, 180, 140))
    matte.putpixel((10, 10), 7)  # below the threshold: not the subject
    matte.putpixel((5, 190), 7)
    matte.putpixel((250, 150), 8)  # at it: the subject
    rendered = _render(original, matte, _both(crop=True))
    cutout, mask = _outputs(rendered)
    box = (100, 60, 251, 151)
    assert cutout.size == mask.size == (151, 91)
    assert mask.tobytes() == matte.crop(box).tobytes()
    assert _seen(cutout, mask) == _seen(original.crop(box), mask)
    assert not rendered.no_subject


def test_no_subject_keeps_the_image_whole_and_says_so() -> None:
    original, _ = _scene((120, 80), (40, 20, 80, 60))
    faint = Image.new("L", (120, 80), 7)
    rendered = _render(original, faint, _both(crop=True, margin=Margin(10, percent=True)))
    cutout, mask = _outputs(rendered)
    assert rendered.no_subject
    assert (
        cutout.size == mask.size == (120 + 24, 80 + 24)
    )  # whole, with 10 % of its longer side around
    assert cutout.convert("RGB").crop((12, 12, 132, 92)).tobytes() == original.tobytes()
    assert not _render(original, faint, _both(margin=Margin(10, percent=True))).no_subject


# -- margin ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("margin", "pixels"),
    [(Margin(10, percent=True), 8), (Margin(2.5, percent=True), 2), (Margin(5, False), 5)],
)
def test_a_margin_is_a_percentage_of_the_subject_s_longer_side_or_pixels(
    margin: Margin, pixels: int
) -> None:
    original, matte = _scene((300, 200), (100, 60, 180, 100))  # an 80 x 40 subject
    cutout, mask = _outputs(_render(original, matte, _both(crop=True, margin=margin)))
    assert cutout.size == mask.size == (80 + 2 * pixels, 40 + 2 * pixels)
    assert mask.getbbox() == (pixels, pixels, pixels + 80, pixels + 40)
    # The margin is transparent, the subject's colours are the original's.
    assert _px(cutout, (0, 0)) == (0, 0, 0, 0)
    assert _px(cutout, (pixels, pixels)) == (*RED, 255)


# -- canvases --------------------------------------------------------------------------


def test_a_fixed_canvas_scales_a_small_subject_up() -> None:
    original, matte = _scene((300, 200), (100, 60, 180, 100))  # 80 x 40
    finishing = _both(crop=True, canvas=Canvas(400, 300, fixed=True))
    cutout, mask = _outputs(_render(original, matte, finishing))
    assert cutout.size == mask.size == (400, 300)
    assert mask.getbbox() == (0, 50, 400, 250)  # 5 times, centred top to bottom


def test_a_fixed_canvas_scales_a_large_subject_down_inside_its_margin() -> None:
    original, matte = _scene((400, 300), (50, 50, 350, 200))  # 300 x 150
    finishing = _both(crop=True, canvas=Canvas(100, 200, True), margin=Margin(10, True))
    cutout, mask = _outputs(_render(original, matte, finishing))
    # 10 % of the width left and right, of the height top and bottom: 80 x 160 of room.
    assert cutout.size == mask.size == (100, 200)
    assert mask.getbbox() == (10, 80, 90, 120)


def test_a_ratio_canvas_is_the_smallest_of_that_ratio_and_does_not_scale() -> None:
    original, matte = _scene((300, 200), (100, 60, 180, 100))  # 80 x 40
    finishing = _both(crop=True, canvas=Canvas(1, 1, False), margin=Margin(10, False))
    cutout, mask = _outputs(_render(original, matte, finishing))
    assert cutout.size == mask.size == (100, 100)
    assert mask.getbbox() == (10, 30, 90, 70)
    subject = cutout.crop((10, 30, 90, 70)).convert("RGB")
    assert subject.tobytes() == original.crop((100, 60, 180, 100)).tobytes()
    tall, _ = _outputs(_render(original, matte, _both(crop=True, canvas=Canvas(1, 3, False))))
    assert tall.size == (80, 240)


def test_align_bottom_rests_the_subject_on_the_bottom_margin() -> None:
    original, matte = _scene((300, 200), (100, 60, 180, 100))  # 80 x 40
    fixed = _both(crop=True, canvas=Canvas(400, 400, True), margin=Margin(5, True), align="bottom")
    _, mask = _outputs(_render(original, matte, fixed))
    assert mask.size == (400, 400)
    assert mask.getbbox() == (20, 200, 380, 380)  # 360 x 180, 20 pixels above the bottom
    ratio = _both(crop=True, canvas=Canvas(1, 1, False), margin=Margin(10, False), align="bottom")
    _, mask = _outputs(_render(original, matte, ratio))
    assert mask.size == (100, 100)
    assert mask.getbbox() == (10, 50, 90, 90)


# -- max_side --------------------------------------------------------------------------


def test_max_side_shrinks_the_result_and_never_enlarges_it() -> None:
    original, matte = _scene((300, 200), (100, 50, 200, 150))
    cutout, mask = _outputs(_render(original, matte, _both(max_side=1000)))
    assert cutout.size == mask.size == (300, 200)
    assert _seen(cutout, mask) == _seen(original, matte)
    cutout, mask = _outputs(_render(original, matte, _both(max_side=150)))
    assert cutout.size == mask.size == (150, 100)
    assert _placement(mask) == (50, 25, 100, 75)
    # After a canvas: the whole result, margin included.
    finishing = _both(crop=True, canvas=Canvas(400, 400, True), max_side=100)
    _, mask = _outputs(_render(original, matte, finishing))
    assert mask.size == (100, 100) and mask.getbbox() == (0, 0, 100, 100)


# -- fill ------------------------------------------------------------------------------


def test_canvas_beyond_the_original_is_transparent_or_the_background() -> None:
    original, matte = _scene((300, 200), (100, 50, 200, 150))
    ratio = Canvas(1, 1, False)
    cutout, mask = _outputs(_render(original, matte, _both(canvas=ratio)))
    assert cutout.size == mask.size == (300, 300)
    assert _px(cutout, (150, 10)) == (0, 0, 0, 0)  # beyond the original
    assert _px(cutout, (10, 60))[3] == 0  # the original's background: its matte is 0
    assert _px(cutout, (150, 150)) == (*RED, 255)
    assert mask.getpixel((150, 10)) == 0 and mask.getbbox() == (100, 100, 200, 200)
    green = _both(canvas=ratio, background="#00ff00")
    cutout, mask = _outputs(_render(original, matte, green))
    assert cutout.mode == "RGB" and cutout.size == (300, 300)
    assert _px(cutout, (150, 10)) == _px(cutout, (10, 60)) == (0, 255, 0)
    assert _px(cutout, (150, 150)) == RED
    assert mask.getpixel((150, 10)) == 0  # a mask has no background


def test_the_mask_is_the_cut_out_s_alpha_pixel_for_pixel() -> None:
    original = Image.new("RGB", (640, 480), GREY)
    matte = Image.new("L", (640, 480), 0)
    ImageDraw.Draw(matte).ellipse((150, 100, 500, 400), fill=255)
    ImageDraw.Draw(matte).ellipse((200, 150, 300, 250), fill=90)  # soft parts scale too
    for finishing in (
        _both(crop=True, canvas=Canvas(333, 222, True), margin=Margin(7.5, True), align="bottom"),
        _both(crop=True, canvas=Canvas(4, 5, False), margin=Margin(13, False), max_side=201),
    ):
        cutout, mask = _outputs(_render(original, matte, finishing))
        assert cutout.size == mask.size
        diff = ImageChops.difference(cutout.getchannel("A"), mask).getextrema()
        assert diff == (0, 0)


def test_outputs_of_a_turned_photo_are_laid_out_upright_without_an_orientation_tag() -> None:
    original, matte = _scene((300, 200), (200, 60, 280, 100))  # 80 x 40 as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: 200 x 300
    data = _png(original, exif=exif.tobytes())
    finishing = _both(crop=True, canvas=Canvas(1, 1, False), align="bottom")
    rendered = _render(data, matte, finishing)
    cutout, mask = _outputs(rendered)
    assert cutout.size == mask.size == (80, 80)
    assert mask.getbbox() == (20, 0, 60, 80)  # upright it is 40 x 80: centred left to right
    assert cutout.getexif().get(0x0112) is None and mask.getexif().get(0x0112) is None
    upright = original.transpose(Image.Transpose.ROTATE_270).crop((100, 200, 140, 280))
    assert cutout.crop((20, 0, 60, 80)).convert("RGB").tobytes() == upright.tobytes()
    # Without geometry the stored pixels and their tag are kept.
    plain, _ = _outputs(_render(data, matte, _both()))
    assert plain.size == (300, 200) and plain.getexif().get(0x0112) == 6


# -- shadow ----------------------------------------------------------------------------


def _glass(level: int) -> tuple[Image.Image, Image.Image]:
    """A 400 x 400 subject whose matte is ``level``: a shadow under it shows through."""
    original, matte = _scene((500, 500), (50, 50, 450, 450))
    return original, matte.point(lambda v: level if v else 0)


def test_the_shadow_is_black_at_35_percent_under_the_subject_and_not_in_the_mask() -> None:
    original, matte = _glass(128)
    cutout, mask = _outputs(_render(original, matte, _both(shadow=True)))
    # Inside, far (> 5 standard deviations of 8 px) from the edges, the subject (alpha a)
    # over the shadow (alpha s): a + s (1 - a). s is 35 % of the matte.
    r, g, b, a = _px(cutout, (250, 250))
    s = (a - 128) / (255 - 128) * 255
    assert 0.33 <= s / 128 <= 0.37
    expected = (c * 128 / a for c in RED)  # the shadow is black: it only dims the colours
    assert all(abs(got - want) <= 1 for got, want in zip((r, g, b), expected, strict=True))
    # Below the subject (the shadow moved down 4 px) darker than as far above; gone far away.
    below = _px(cutout, (250, 452))[3]
    above = _px(cutout, (250, 47))[3]
    assert below > above + 5 and 0 < below < 45
    assert _px(cutout, (250, 497))[3] == 0
    assert mask.tobytes() == matte.tobytes()
    plain, _ = _outputs(_render(original, matte, _both()))
    assert _px(plain, (250, 250))[3] == 128 and _px(plain, (250, 452))[3] == 0


def test_on_a_background_the_shadow_lies_between_it_and_the_subject() -> None:
    original, matte = _glass(255)
    finishing = _both(shadow=True, background="#ffffff", format="jpeg")
    cutout, mask = _outputs(_render(original, matte, finishing))
    assert cutout.mode == "RGB" and mask.tobytes() == matte.tobytes()
    below, above = _px(cutout, (250, 452)), _px(cutout, (250, 47))
    assert all(c < 235 for c in below)
    assert all(a > b + 5 for a, b in zip(above, below, strict=True))
    assert all(c >= 250 for c in _px(cutout, (250, 497)))
    r, g, b = _px(cutout, (250, 250))
    assert abs(r - RED[0]) <= 6 and g <= 30 and b <= 30  # the subject on top
    # Under a half-transparent subject the white is 35 % darker where the matte is 255.
    half, _ = _outputs(_render(original, matte.point(lambda v: v // 2), finishing))
    r, g, b = _px(half, (250, 250))
    under = 255 * (1 - 0.35 * 127 / 255)  # the shadow of a 127 matte on white
    assert abs(g - (20 * 127 / 255 + under * 128 / 255)) <= 4


# -- presets ---------------------------------------------------------------------------


def test_amazon_gives_a_2000_square_jpeg_on_white_with_the_subject_85_percent_and_centred(
    cfg: Path, clean_env: None
) -> None:
    cfg.write_text(FOLDER + 'preset = "amazon"\n', encoding="utf-8")
    (folder,) = load_settings(cfg).folders
    original, matte = _scene((900, 600), (500, 100, 800, 300))  # 300 x 200, off centre
    rendered = _render(original, matte, folder.finishing())
    assert rendered.cutout is not None and rendered.mask is None
    out = open_image(rendered.cutout)
    assert out.format == "JPEG" and out.size == (2000, 2000) and out.mode == "RGB"
    assert all(c >= 250 for c in _px(out, (5, 5)))
    red = out.convert("HSV").getchannel("S").point(lambda s: 255 if s > 128 else 0).getbbox()
    assert red is not None
    left, top, right, bottom = red
    assert abs((right - left) - 1700) <= 2  # 85 % of 2000
    assert abs((bottom - top) - 1133) <= 2
    assert abs((left + right) / 2 - 1000) <= 2 and abs((top + bottom) / 2 - 1000) <= 2
