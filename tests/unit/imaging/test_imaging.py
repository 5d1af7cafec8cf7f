"""imaging: sniffing, guarded decoding, shrinking, compositing and encoding, on real images."""

from __future__ import annotations

import ast
import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageCms, ImageDraw

from bgsyncd import imaging
from bgsyncd.imaging import CorruptImage, ImageInfo, codec
from tests.support.helpers import noisy_image, open_image, product_image, transparent_png

MB = 1024 * 1024

ALL_FORMATS = [
    ("JPEG", "jpeg"),
    ("PNG", "png"),
    ("WEBP", "webp"),
    ("TIFF", "tiff"),
    ("BMP", "bmp"),
    ("GIF", "gif"),
]


def _encode(img: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _half_mask(width: int, height: int) -> Image.Image:
    """An "L" mask: left half 0 (background), right half 255 (object)."""
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle((width // 2, 0, width - 1, height - 1), fill=255)
    return mask


# sniff


@pytest.mark.parametrize(("pillow", "name"), ALL_FORMATS)
def test_sniff_names_each_input_format(pillow: str, name: str) -> None:
    data = product_image(fmt=pillow)
    assert imaging.sniff(data[: imaging.SNIFF_BYTES]) == name


def test_sniff_knows_big_endian_tiff_and_old_gif() -> None:
    assert imaging.sniff(b"MM\x00*\x00\x00\x00\x08" + bytes(24)) == "tiff"
    assert imaging.sniff(b"GIF87a" + bytes(26)) == "gif"


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"hello, this is plain text\n",
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n",
        b"<!DOCTYPE html><html><head>",
        b"BMW 320d, blue, 2019, low mileage",  # starts like a BMP, is text
        b"RIFF\x24\x00\x00\x00WAVEfmt ",  # RIFF, but audio
        b"\xff\xd8",  # too short for JPEG
    ],
)
def test_sniff_refuses_what_is_not_an_input_image(head: bytes) -> None:
    assert imaging.sniff(head) is None


# inspect


@pytest.mark.parametrize(("pillow", "name"), ALL_FORMATS)
def test_inspect_reads_each_format(pillow: str, name: str) -> None:
    assert imaging.inspect(product_image(64, 48, fmt=pillow)) == ImageInfo(name, 64, 48)


def test_inspect_refuses_a_truncated_jpeg() -> None:
    data = product_image(400, 300, fmt="JPEG")
    with pytest.raises(CorruptImage, match="could not be decoded"):
        imaging.inspect(data[: len(data) // 2])


def test_inspect_refuses_a_png_cut_in_half() -> None:
    data = noisy_image(300, 200)
    with pytest.raises(CorruptImage, match="truncated"):
        imaging.inspect(data[: len(data) // 2])


def test_inspect_refuses_garbage_and_formats_outside_the_six() -> None:
    with pytest.raises(CorruptImage):
        imaging.inspect(b"%PDF-1.7\n" + bytes(100))
    with pytest.raises(CorruptImage):
        imaging.inspect(_encode(Image.new("RGB", (8, 8)), "PCX"))  # Pillow reads PCX; we don't


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` 1-bit pixels.

    Its data is a single row, so only a reader that trusted the header and
    went on to decode would spend memory on it.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(bytes(1 + (width + 7) // 8))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_inspect_refuses_a_decompression_bomb() -> None:
    # 900 million pixels (over twice MAX_IMAGE_PIXELS: Pillow's error) in a few KB.
    bomb = _png_claiming(30000, 30000)
    assert len(bomb) < 1000
    with pytest.raises(CorruptImage, match="too many pixels"):
        imaging.inspect(bomb)


def test_inspect_refuses_an_image_that_only_triggers_the_warning() -> None:
    # 100 million pixels: above MAX_IMAGE_PIXELS (a warning in Pillow), below twice it.
    pixels = 10000 * 10000
    limit = Image.MAX_IMAGE_PIXELS
    assert limit is not None and limit < pixels < 2 * limit
    with pytest.raises(CorruptImage, match="too many pixels"):
        imaging.inspect(_png_claiming(10000, 10000))


# a reduced copy at the stored size (the proxy with no side)


def _shrink(data: bytes, max_bytes: int) -> bytes:
    return imaging.make_proxy(data, side=None, max_bytes=max_bytes).data


def test_a_reduced_copy_makes_a_big_noisy_png_fit_and_keeps_the_aspect() -> None:
    data = noisy_image(3000, 2000)
    limit = 1_000_000
    assert len(data) > 5 * limit
    small = _shrink(data, limit)
    assert len(small) <= limit
    img = open_image(small)
    assert img.format == "JPEG"  # opaque input: JPEG
    assert img.width < 3000
    assert img.width / img.height == pytest.approx(1.5, abs=0.01)


def test_a_reduced_copy_keeps_transparency_as_png() -> None:
    data = _encode(Image.frombytes("RGBA", (600, 400), _rgba_noise(600, 400)))
    small = _shrink(data, len(data) // 4)
    out = open_image(small)
    assert len(small) <= len(data) // 4
    assert (out.format, out.mode) == ("PNG", "RGBA")
    assert out.width / out.height == pytest.approx(1.5, abs=0.01)


def _rgba_noise(width: int, height: int) -> bytes:
    import random

    return random.Random(7).randbytes(width * height * 4)


def test_a_reduced_copy_raises_when_nothing_can_fit() -> None:
    with pytest.raises(ValueError, match="cannot be reduced"):
        _shrink(product_image(), 10)


# render: a cut-out from the original and an answer


def _cutout(
    original: bytes, answer: bytes, *, matte: bool = True, fmt: str = "png", background: str = ""
) -> bytes:
    """``render``'s cut-out of ``original`` with ``answer`` (PNG with alpha by default)."""
    out = imaging.render(
        original, answer, answer_is_matte=matte, output="cutout", fmt=fmt, background=background
    )
    assert out.cutout is not None
    return out.cutout


def test_a_cutout_applies_a_smaller_mask_to_the_full_size_original() -> None:
    original = product_image(200, 100, fmt="JPEG")
    mask = _encode(_half_mask(100, 50))  # as if a half-size copy was uploaded
    out = open_image(_cutout(original, mask, matte=True))
    assert (out.format, out.mode, out.size) == ("PNG", "RGBA", (200, 100))
    assert out.getpixel((10, 50))[3] == 0  # type: ignore[index]
    assert out.getpixel((190, 50))[3] == 255  # type: ignore[index]
    # The colours are the original's, full size: the object's red is kept.
    red = open_image(original).convert("RGB").getpixel((100, 50))
    assert out.getpixel((100, 50))[:3] == pytest.approx(red, abs=2)  # type: ignore[index]


def test_a_cutout_multiplies_transparency_the_original_already_had() -> None:
    original = transparent_png(40, 40)  # opaque square 10..30 on transparent
    mask = _encode(Image.new("L", (40, 40), 255))
    out = open_image(_cutout(original, mask, matte=True))
    assert out.getpixel((2, 2))[3] == 0  # type: ignore[index]
    assert out.getpixel((20, 20))[3] == 255  # type: ignore[index]


def test_a_cutout_scales_an_rgba_cutout_of_another_size() -> None:
    cut = Image.new("RGBA", (50, 25), (0, 0, 0, 0))
    ImageDraw.Draw(cut).rectangle((25, 0, 49, 24), fill=(10, 200, 30, 255))
    out = open_image(_cutout(product_image(100, 50), _encode(cut), matte=False))
    assert out.size == (100, 50)
    assert out.getpixel((5, 25))[3] == 0  # type: ignore[index]
    assert out.getpixel((95, 25)) == pytest.approx((10, 200, 30, 255), abs=3)


def test_a_cutout_names_the_input_that_cannot_be_read() -> None:
    with pytest.raises(CorruptImage, match="API matte"):
        _cutout(product_image(), b"not a png", matte=True)
    with pytest.raises(CorruptImage, match="original image"):
        _cutout(b"\xff\xd8\xff garbage", transparent_png(), matte=False)


def test_a_cutout_brings_16_bit_images_to_8_bit_without_clipping() -> None:
    original = _encode(Image.new("I;16", (8, 8), 32768))
    out = open_image(_cutout(original, _encode(Image.new("L", (8, 8), 255)), matte=True))
    assert out.getpixel((4, 4)) == (128, 128, 128, 255)


def test_a_cutout_keeps_geometry_and_carries_only_the_orientation_tag() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° to display"
    exif[0x010F] = "Camera maker"  # must not be carried over
    original = product_image(60, 40, fmt="JPEG", exif=exif.tobytes())
    mask = _encode(Image.new("L", (60, 40), 255))
    cutout = _cutout(original, mask, matte=True)
    out = open_image(cutout)
    assert out.size == (60, 40)
    assert dict(out.getexif()) == {0x0112: 6}
    for fmt in ("png", "webp", "jpeg"):
        encoded = open_image(_reencode(cutout, fmt, "#ffffff"))
        assert encoded.getexif().get(0x0112) == 6, fmt
    assert open_image(_mask(cutout)).getexif().get(0x0112) == 6


# render's encoders: a cut-out given an opaque matte keeps its own alpha


def _opaque(cutout: bytes) -> bytes:
    return _encode(Image.new("L", Image.open(io.BytesIO(cutout)).size, 255))


def _reencode(cutout: bytes, fmt: str, background: str) -> bytes:
    return _cutout(cutout, _opaque(cutout), fmt=fmt, background=background)


def _mask(cutout: bytes) -> bytes:
    out = imaging.render(
        cutout, _opaque(cutout), answer_is_matte=True, output="mask", fmt="png", background=""
    )
    assert out.mask is not None
    return out.mask


@pytest.fixture(scope="module")
def cutout() -> bytes:
    """A 40x20 cut-out: left half transparent, right half opaque blue."""
    img = Image.new("RGBA", (40, 20), (255, 0, 0, 0))
    ImageDraw.Draw(img).rectangle((20, 0, 39, 19), fill=(0, 0, 255, 255))
    return _encode(img)


@pytest.mark.parametrize(("fmt", "pillow"), [("png", "PNG"), ("webp", "WEBP")])
def test_the_cutout_encoder_keeps_transparency_without_background(
    cutout: bytes, fmt: str, pillow: str
) -> None:
    out = open_image(_reencode(cutout, fmt, ""))
    assert (out.format, out.mode, out.size) == (pillow, "RGBA", (40, 20))
    assert out.getpixel((5, 10))[3] == 0  # type: ignore[index]
    assert out.getpixel((30, 10)) == (0, 0, 255, 255)  # lossless


def test_the_cutout_encoder_webp_without_background_is_lossless() -> None:
    noisy = open_image(noisy_image(32, 32)).convert("RGBA")
    out = open_image(_reencode(_encode(noisy), "webp", ""))
    assert out.convert("RGBA").tobytes() == noisy.tobytes()


@pytest.mark.parametrize(("fmt", "pillow"), [("png", "PNG"), ("webp", "WEBP"), ("jpeg", "JPEG")])
def test_the_cutout_encoder_composites_onto_the_background(
    cutout: bytes, fmt: str, pillow: str
) -> None:
    out = open_image(_reencode(cutout, fmt, "#00ff00"))
    assert (out.format, out.mode) == (pillow, "RGB")
    assert out.getpixel((5, 10)) == pytest.approx((0, 255, 0), abs=6)  # background shows
    assert out.getpixel((34, 10)) == pytest.approx((0, 0, 255), abs=6)  # object kept


def test_the_cutout_encoder_blends_partial_alpha_with_the_background() -> None:
    half = _encode(Image.new("RGBA", (4, 4), (0, 0, 0, 128)))
    out = open_image(_reencode(half, "png", "#ffffff"))
    assert out.getpixel((1, 1)) == pytest.approx((127, 127, 127), abs=1)


def test_the_cutout_encoder_refuses_jpeg_without_background_and_bad_arguments(
    cutout: bytes,
) -> None:
    with pytest.raises(ValueError, match="jpeg"):
        _reencode(cutout, "jpeg", "")
    with pytest.raises(ValueError, match="format"):
        _reencode(cutout, "gif", "")
    with pytest.raises(ValueError, match="background"):
        _reencode(cutout, "png", "white")


def test_the_mask_is_the_alpha_channel_as_grayscale_png(cutout: bytes) -> None:
    out = open_image(_mask(cutout))
    assert (out.format, out.mode, out.size) == ("PNG", "L", (40, 20))
    assert out.getpixel((5, 10)) == 0
    assert out.getpixel((30, 10)) == 255


def test_extensions_for_the_three_output_formats() -> None:
    assert imaging.EXTENSIONS == {"png": "png", "webp": "webp", "jpeg": "jpg"}


def test_decoding_from_several_threads_keeps_refusing_bombs() -> None:
    from concurrent.futures import ThreadPoolExecutor

    bomb, good = _png_claiming(10000, 10000), product_image(fmt="PNG")

    def check(i: int) -> bool:
        if i % 2:
            return imaging.inspect(good).format == "png"
        try:
            imaging.inspect(bomb)
        except CorruptImage:
            return True
        return False

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(check, range(40)))


# sniff: the one detector (client.py and the emulator should use it)


@pytest.mark.parametrize("head", [b"II+\x00\x08\x00\x00\x00", b"MM\x00+\x00\x08\x00\x00"])
def test_sniff_knows_bigtiff_in_both_byte_orders(head: bytes) -> None:
    assert imaging.sniff(head + bytes(24)) == "tiff"


def test_sniff_knows_each_bmp_header_and_refuses_bm_text() -> None:
    for size in (12, 40, 108, 124):
        head = b"BM" + bytes(12) + size.to_bytes(4, "little") + bytes(14)
        assert imaging.sniff(head) == "bmp", size
    assert imaging.sniff(b"BM" + bytes(12) + (99).to_bytes(4, "little") + bytes(14)) is None


def test_every_sniffed_format_has_a_media_type() -> None:
    names = {
        imaging.sniff(product_image(fmt=pillow)[: imaging.SNIFF_BYTES]) for pillow, _ in ALL_FORMATS
    }
    assert names == set(imaging.MIME_TYPES)
    assert imaging.MIME_TYPES["tiff"] == "image/tiff"


def test_inspect_reads_the_orientation_and_the_stored_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    info = imaging.inspect(product_image(60, 40, fmt="JPEG", exif=exif.tobytes()))
    assert info == ImageInfo("jpeg", 60, 40, orientation=6)
    assert info.size == (60, 40)


# check_matte / check_cutout


def test_check_matte_takes_the_shape_of_what_was_sent_at_any_scale_up_to_4_times() -> None:
    assert imaging.check_matte(_encode(Image.new("L", (1024, 683))), (1024, 683)) == (1024, 683)
    assert imaging.check_matte(_encode(Image.new("L", (512, 341))), (1024, 683)) == (512, 341)
    # SPEC §6: up to 4 times the pixels sent (a 3000 x 2001 matte, 8.6 times, is refused).
    assert imaging.check_matte(_encode(Image.new("L", (2048, 1366))), (1024, 683)) == (2048, 1366)


@pytest.mark.parametrize("size", [(1024, 1024), (683, 1024), (1024, 690), (10, 1)])
def test_check_matte_refuses_another_shape_as_unusable(size: tuple[int, int]) -> None:
    with pytest.raises(imaging.UnusableResult, match="not the shape of the 1024x683 sent"):
        imaging.check_matte(_encode(Image.new("L", size)), (1024, 683))


def test_check_matte_refuses_what_is_not_an_image_as_unusable() -> None:
    with pytest.raises(imaging.UnusableResult, match="API matte"):
        imaging.check_matte(b'{"alpha_channel": null}', (10, 10))
    truncated = noisy_image(200, 100)
    with pytest.raises(imaging.UnusableResult):
        imaging.check_matte(truncated[: len(truncated) // 2], (200, 100))


def test_check_cutout_takes_the_stored_or_the_turned_shape_only() -> None:
    info = ImageInfo("jpeg", 600, 400, orientation=6)
    assert imaging.check_cutout(_encode(Image.new("RGBA", (600, 400))), info) == (600, 400)
    assert imaging.check_cutout(_encode(Image.new("RGBA", (400, 600))), info) == (400, 600)
    with pytest.raises(imaging.UnusableResult):
        imaging.check_cutout(_encode(Image.new("RGBA", (500, 500))), info)
    with pytest.raises(imaging.UnusableResult):  # not turned: the upright shape is wrong
        imaging.check_cutout(_encode(Image.new("RGBA", (400, 600))), ImageInfo("png", 600, 400))


# render: the matte applied to the original's own pixels


def _random_matte(width: int, height: int) -> Image.Image:
    """A matte with zeros, full values and everything between."""
    import random

    rng = random.Random(3)
    return Image.frombytes(
        "L", (width, height), bytes(rng.choice((0, 0, 1, 77, 255)) for _ in range(width * height))
    )


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_an_8_bit_rgb_input_reaches_the_cutout_exactly_where_alpha_is_above_zero(fmt: str) -> None:
    original = open_image(noisy_image(300, 200)).convert("RGB")
    matte = _encode(_random_matte(150, 100))  # a half-size matte, as for a proxy
    out = imaging.render(
        _encode(original), matte, answer_is_matte=True, output="cutout", fmt=fmt, background=""
    )
    assert out.cutout is not None and out.mask is None
    cut = open_image(out.cutout).convert("RGBA")
    assert cut.size == (300, 200)
    alpha = cut.getchannel("A").tobytes()
    assert 0 in alpha and 255 in alpha and len(set(alpha)) > 10  # the test covers all kinds
    rgba, rgb = cut.tobytes(), original.tobytes()
    wrong = [
        i
        for i in range(300 * 200)
        if rgba[4 * i + 3] > 0 and rgba[4 * i : 4 * i + 3] != rgb[3 * i : 3 * i + 3]
    ]
    assert wrong == []


def test_a_jpeg_input_reaches_the_cutout_as_its_own_decoded_pixels() -> None:
    data = product_image(400, 300, fmt="JPEG", quality=80)
    made = _cutout(data, _encode(Image.new("L", (200, 150), 200)))
    cut = open_image(made)
    assert cut.convert("RGB").tobytes() == open_image(data).convert("RGB").tobytes()
    assert set(cut.getchannel("A").tobytes()) == {200}


def test_the_matte_is_scaled_to_the_originals_size_with_lanczos() -> None:
    matte = _half_mask(100, 50)
    out = imaging.render(
        product_image(400, 200, fmt="PNG"),
        _encode(matte),
        answer_is_matte=True,
        output="mask",
        fmt="png",
        background="",
    )
    assert out.cutout is None and out.mask is not None
    mask = open_image(out.mask)
    assert (mask.format, mask.mode) == ("PNG", "L")
    assert mask.tobytes() == matte.resize((400, 200), Image.Resampling.LANCZOS).tobytes()


def test_both_outputs_share_one_alpha() -> None:
    original = product_image(120, 80, fmt="PNG")
    out = imaging.render(
        original,
        _encode(_random_matte(60, 40)),
        answer_is_matte=True,
        output="both",
        fmt="webp",
        background="",
    )
    assert out.cutout is not None and out.mask is not None
    assert open_image(out.cutout).getchannel("A").tobytes() == open_image(out.mask).tobytes()


def test_render_on_a_background_and_as_jpeg() -> None:
    original = Image.new("RGB", (40, 20), (0, 0, 255))
    out = imaging.render(
        _encode(original),
        _encode(_half_mask(40, 20)),
        answer_is_matte=True,
        output="cutout",
        fmt="jpeg",
        background="#00ff00",
    )
    assert out.cutout is not None
    cut = open_image(out.cutout)
    assert (cut.format, cut.mode) == ("JPEG", "RGB")
    assert cut.getpixel((5, 10)) == pytest.approx((0, 255, 0), abs=6)
    assert cut.getpixel((34, 10)) == pytest.approx((0, 0, 255), abs=6)


def test_render_refuses_an_undecodable_answer_as_unusable() -> None:
    with pytest.raises(imaging.UnusableResult):
        imaging.render(
            product_image(),
            b"garbage",
            answer_is_matte=True,
            output="cutout",
            fmt="png",
            background="",
        )


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("CMYK", (40, 20), (0, 255, 255, 0)), (255, 0, 0, 255)),
        (Image.new("RGB", (40, 20), (0, 0, 255)).convert("P"), (0, 0, 255, 255)),
        (Image.new("I;16", (40, 20), 32768), (128, 128, 128, 255)),
        (Image.new("LA", (40, 20), (77, 255)), (77, 77, 77, 255)),
        # Its own transparency kept; no colour is kept where nothing can be seen.
        (Image.new("LA", (40, 20), (77, 0)), (0, 0, 0, 0)),
    ],
    ids=["cmyk", "palette", "16-bit", "la", "la-clear"],
)
def test_render_brings_every_mode_to_8_bit_rgba(
    image: Image.Image, expected: tuple[int, ...]
) -> None:
    fmt = "JPEG" if image.mode == "CMYK" else "TIFF" if image.mode == "I;16" else "PNG"
    made = _cutout(_encode(image, fmt), _encode(Image.new("L", (40, 20), 255)))
    cut = open_image(made)
    assert (cut.mode, cut.size) == ("RGBA", (40, 20))
    assert cut.getpixel((20, 10)) == pytest.approx(expected, abs=3)


def test_render_uses_the_first_frame_of_an_animated_input() -> None:
    frames = [Image.new("RGB", (30, 20), c).convert("P") for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    made = _cutout(buf.getvalue(), _encode(Image.new("L", (30, 20), 255)))
    assert open_image(made).getpixel((5, 5)) == (255, 0, 0, 255)


# render: the metadata the outputs keep

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _camera_original() -> bytes:
    """A JPEG with orientation 6, a maker, an sRGB profile, 300 DPI and a comment."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Camera maker"
    return product_image(
        60, 40, fmt="JPEG", exif=exif.tobytes(), icc_profile=SRGB, dpi=(300, 300), comment=b"secret"
    )


@pytest.mark.parametrize("fmt", ["png", "webp", "jpeg"])
def test_outputs_keep_the_orientation_icc_profile_and_dpi_and_nothing_else(fmt: str) -> None:
    out = imaging.render(
        _camera_original(),
        _encode(Image.new("L", (60, 40), 255)),
        answer_is_matte=True,
        output="both",
        fmt=fmt,
        background="#ffffff" if fmt == "jpeg" else "",
    )
    assert out.cutout is not None and out.mask is not None
    cut = open_image(out.cutout)
    assert cut.size == (60, 40)  # the stored geometry; the tag tells viewers to turn it
    assert dict(cut.getexif()) == {0x0112: 6}
    assert cut.info.get("icc_profile") == SRGB
    if fmt != "webp":  # WebP has no DPI field
        assert cut.info.get("dpi") == pytest.approx((300, 300), abs=0.01)
    assert b"Camera maker" not in out.cutout and b"secret" not in out.cutout
    mask = open_image(out.mask)
    assert dict(mask.getexif()) == {0x0112: 6}
    assert mask.info.get("dpi") == pytest.approx((300, 300), abs=0.01)
    assert "icc_profile" not in mask.info  # an RGB profile on a grey image would be wrong


def test_an_input_without_metadata_gives_outputs_without_metadata() -> None:
    out = imaging.render(
        product_image(60, 40, fmt="PNG"),
        _encode(Image.new("L", (60, 40), 255)),
        answer_is_matte=True,
        output="both",
        fmt="png",
        background="",
    )
    assert out.cutout is not None and out.mask is not None
    for data in (out.cutout, out.mask):
        img = open_image(data)
        assert len(img.getexif()) == 0
        assert not {"icc_profile", "dpi", "exif"} & set(img.info)


def test_a_grey_or_cmyk_profile_is_not_put_on_rgb_outputs() -> None:
    grey = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    assert grey[16:20] != b"RGB "
    original = product_image(60, 40, fmt="PNG", icc_profile=grey)
    made = _cutout(original, _encode(Image.new("L", (60, 40), 255)))
    assert "icc_profile" not in open_image(made).info


# "original" mode: a cut-out answer, and a server that applied the EXIF rotation


def _turned_original() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return product_image(60, 40, fmt="PNG", exif=exif.tobytes())


def test_a_cutout_as_stored_keeps_the_orientation_tag() -> None:
    answer = Image.new("RGBA", (60, 40), (10, 200, 30, 255))
    out = imaging.render(
        _turned_original(),
        _encode(answer),
        answer_is_matte=False,
        output="cutout",
        fmt="png",
        background="",
    )
    assert out.cutout is not None and not out.rotated_by_server
    cut = open_image(out.cutout)
    assert (cut.size, dict(cut.getexif())) == ((60, 40), {0x0112: 6})
    assert cut.getpixel((30, 20)) == (10, 200, 30, 255)  # the cut-out's own colours (0.1)


def test_a_cutout_turned_by_the_server_loses_the_orientation_tag() -> None:
    answer = Image.new("RGBA", (40, 60), (0, 0, 0, 0))
    ImageDraw.Draw(answer).rectangle((0, 0, 39, 29), fill=(10, 200, 30, 255))
    out = imaging.render(
        _turned_original(),
        _encode(answer),
        answer_is_matte=False,
        output="both",
        fmt="png",
        background="",
    )
    assert out.cutout is not None and out.mask is not None and out.rotated_by_server
    cut, mask = open_image(out.cutout), open_image(out.mask)
    assert cut.size == mask.size == (40, 60)
    assert len(cut.getexif()) == 0 and len(mask.getexif()) == 0
    assert cut.getpixel((20, 10)) == (10, 200, 30, 255)
    assert mask.getpixel((20, 50)) == 0


def test_a_turned_cutout_of_a_transparent_original_turns_its_own_alpha_too() -> None:
    original = Image.new("RGBA", (60, 40), (5, 5, 5, 255))
    ImageDraw.Draw(original).rectangle((0, 0, 29, 39), fill=(5, 5, 5, 0))  # left half clear
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90° clockwise: the clear left half is on top
    data = _encode(original, exif=exif.tobytes())
    answer = _encode(Image.new("RGBA", (40, 60), (9, 9, 9, 255)))
    out = imaging.render(
        data, answer, answer_is_matte=False, output="mask", fmt="png", background=""
    )
    assert out.mask is not None
    mask = open_image(out.mask)
    assert mask.size == (40, 60)
    assert (mask.getpixel((20, 5)), mask.getpixel((20, 55))) == (0, 255)


# the full-decode slot


def test_render_waits_for_the_full_decode_slot() -> None:
    import threading

    done = threading.Event()

    def work() -> None:
        imaging.render(
            product_image(200, 100, fmt="PNG"),
            _encode(Image.new("L", (200, 100), 255)),
            answer_is_matte=True,
            output="cutout",
            fmt="png",
            background="",
        )
        done.set()

    with imaging.full_decode_slot():
        worker = threading.Thread(target=work)
        worker.start()
        assert not done.wait(0.5), "render ran while another thread held the slot"
    assert done.wait(10)
    worker.join()


def test_a_jpeg_proxy_needs_no_slot_and_a_png_proxy_waits_for_it() -> None:
    from concurrent import futures
    from concurrent.futures import ThreadPoolExecutor

    jpeg, png = product_image(2000, 1000, fmt="JPEG"), product_image(2000, 1000, fmt="PNG")
    with ThreadPoolExecutor(2) as pool:
        with imaging.full_decode_slot():
            fast = pool.submit(imaging.make_proxy, jpeg, side=1024, max_bytes=10**7)
            slow = pool.submit(imaging.make_proxy, png, side=1024, max_bytes=10**7)
            assert fast.result(timeout=10).size == (1024, 512)
            assert not slow.done()
            inspect_png = pool.submit(imaging.inspect, png)
            # Neither finishes while the slot is held (given time to, had it been free).
            finished, _ = futures.wait([slow], timeout=0.5)
            assert not finished and not inspect_png.done()
        assert slow.result(timeout=10).size == (1024, 512)
        assert inspect_png.result(timeout=10) == ImageInfo("png", 2000, 1000)


def test_the_slot_is_reentrant_for_the_thread_that_holds_it() -> None:
    with imaging.full_decode_slot():
        out = imaging.render(
            product_image(40, 20, fmt="PNG"),
            _encode(Image.new("L", (40, 20), 255)),
            answer_is_matte=True,
            output="mask",
            fmt="png",
            background="",
        )
    assert out.mask is not None


def test_a_matte_answered_as_a_cutout_is_read_by_its_alpha() -> None:
    answer = Image.new("RGBA", (40, 20), (200, 10, 10, 0))
    ImageDraw.Draw(answer).rectangle((20, 0, 39, 19), fill=(200, 10, 10, 255))
    grey = Image.new("LA", (40, 20), (90, 255))  # grey with an opaque alpha: its grey values
    for data, left, right in ((_encode(answer), 0, 255), (_encode(grey), 90, 90)):
        out = imaging.render(
            product_image(40, 20, fmt="PNG"),
            data,
            answer_is_matte=True,
            output="mask",
            fmt="png",
            background="",
        )
        assert out.mask is not None
        mask = open_image(out.mask)
        assert (mask.getpixel((5, 10)), mask.getpixel((35, 10))) == (left, right)


# one place for each image fact


def _pillow_importers(package: Path) -> set[str]:
    """The modules under ``package`` (as paths relative to its parent) that import Pillow.

    Any ``import PIL``/``from PIL import``, also under ``TYPE_CHECKING`` or in a
    function, and ``importlib.import_module("PIL...")``/``__import__("PIL...")``.
    """

    def is_pil(name: str) -> bool:
        return name == "PIL" or name.startswith("PIL.")

    found = set()
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and node.args:
                func, first = node.func, node.args[0]
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called in ("import_module", "__import__") and isinstance(first, ast.Constant):
                    names = [str(first.value)]
            if any(is_pil(name) for name in names):
                found.add(path.relative_to(package.parent).as_posix())
    return found


def test_pillow_is_imported_only_by_imaging() -> None:
    """Beyond import-linter's contract: dynamic imports (``importlib``, ``__import__``) too."""
    package = Path(imaging.__file__).parent.parent
    importers = _pillow_importers(package)
    # The detector sees what it must: without this, an empty set would pass for any code.
    assert {"bgsyncd/imaging/codec.py", "bgsyncd/imaging/samples.py"} <= importers
    stray = {m for m in importers if not m.startswith("bgsyncd/imaging/")}
    assert not stray, f"Pillow imported outside bgsyncd/imaging: {sorted(stray)}"


def test_the_pillow_detector_sees_every_spelling_of_the_import(tmp_path: Path) -> None:
    spellings = {
        "a.py": "import PIL\n",
        "b.py": "from PIL import Image\n",
        "c.py": "import PIL.Image as I\n",
        "d.py": "if TYPE_CHECKING:\n    from PIL.Image import Image\n",
        "e.py": "def f():\n    import importlib\n    return importlib.import_module('PIL.Image')\n",
        "f.py": "m = __import__('PIL')\n",
        "clean.py": "import PILLOW_LIKE\nfrom .PIL import x\nfrom bgsyncd import imaging\n",
    }
    root = tmp_path / "pkg"
    root.mkdir()
    for name, text in spellings.items():
        (root / name).write_text(text)
    assert _pillow_importers(root) == {f"pkg/{n}" for n in spellings if n != "clean.py"}


def _mpo(size: tuple[int, int] = (400, 300)) -> bytes:
    """A multi-picture JPEG (MPO), as cameras write with an embedded preview."""
    first = Image.open(io.BytesIO(product_image(*size, fmt="JPEG")))
    second = Image.new("RGB", size, (0, 0, 200))
    return _encode(first, "MPO", save_all=True, append_images=[second])


def test_a_multi_picture_jpeg_is_inspected_and_proxied_as_a_jpeg() -> None:
    data = _mpo((400, 300))
    assert Image.open(io.BytesIO(data)).format == "MPO"  # what Pillow calls it
    assert imaging.sniff(data[: imaging.SNIFF_BYTES]) == "jpeg"
    assert imaging.inspect(data) == ImageInfo("jpeg", 400, 300)
    proxy = imaging.make_proxy(data, side=100, max_bytes=MB)
    # Drafted like any JPEG: libjpeg decoded it at 1/4, not at full size.
    assert (proxy.format, proxy.size, proxy.decoded_size) == ("jpeg", (100, 75), (100, 75))
    first = open_image(proxy.data)
    assert first.getpixel((2, 2)) != (0, 0, 200)  # the first picture, not the second
    matte = _encode(Image.new("L", proxy.size, 255))
    out = imaging.render(
        data, matte, answer_is_matte=True, output="cutout", fmt="png", background=""
    )
    assert out.cutout is not None
    cutout = open_image(out.cutout)
    assert cutout.size == (400, 300)
    # The first picture's own pixels, fully opaque under an all-white matte.
    own = Image.open(io.BytesIO(data)).convert("RGBA")
    assert cutout.tobytes() == own.tobytes()


def test_the_decompression_bomb_limit_is_one_constant() -> None:
    assert imaging.MAX_PIXELS == 89_478_485  # Pillow's own default, see codec's docstring
    codec.open_header(_png_claiming(imaging.MAX_PIXELS, 1))  # at the limit: opened
    with pytest.raises(CorruptImage, match="too many pixels"):
        codec.open_header(_png_claiming(imaging.MAX_PIXELS + 1, 1))


def test_decoding_refuses_what_sniffing_refuses() -> None:
    # Pillow's BMP plugin accepts any "BM" prefix; sniff wants a known DIB header size.
    bmp = bytearray(product_image(40, 30, fmt="BMP"))
    assert imaging.inspect(bytes(bmp)).format == "bmp"
    bmp[14:18] = (99).to_bytes(4, "little")
    with pytest.raises(CorruptImage, match="not a JPEG, PNG, WebP, TIFF, BMP or GIF"):
        imaging.decode(bytes(bmp))


def _png_16_bit(values: list[int], colour: bool) -> bytes:
    """A one-row 16-bit PNG of ``values``: grey (type 0) or grey-as-RGB (type 2)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    sample = ">HHH" if colour else ">H"
    row = b"\x00" + b"".join(struct.pack(sample, *[v] * (3 if colour else 1)) for v in values)
    ihdr = struct.pack(">IIBBBBB", len(values), 1, 16, 2 if colour else 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(row))
        + chunk(b"IEND", b"")
    )


def test_16_bits_come_to_8_as_their_high_byte_as_pillow_reads_16_bit_colour() -> None:
    values = [0, 255, 256, 511, 32896, 65280, 65535]
    grey = imaging.to_eight_bit(imaging.decode(_png_16_bit(values, colour=False)))
    colour = imaging.decode(_png_16_bit(values, colour=True))
    assert colour.mode == "RGB"  # Pillow's own reading of 16-bit colour: the high byte
    expected = bytes(v >> 8 for v in values)
    assert grey.tobytes() == expected
    assert colour.getchannel("R").tobytes() == expected


def test_32_bit_images_are_scaled_by_their_maximum_never_stretched() -> None:
    small = Image.new("I", (3, 1))
    small.putpixel((0, 0), 10)
    small.putpixel((1, 0), 20)
    small.putpixel((2, 0), 30)
    assert imaging.to_eight_bit(small).tobytes() == bytes([10, 20, 30])  # as they are
    large = small.point(lambda v: v * 40)  # 400, 800, 1200
    assert imaging.to_eight_bit(large).tobytes() == bytes([85, 170, 255])


def test_imaging_and_emulator_modules_stay_under_400_lines() -> None:
    package = Path(imaging.__file__).parent.parent
    modules = [*(package / "imaging").glob("*.py"), *(package / "emulator").glob("*.py")]
    assert len(modules) >= 10
    long = {m.name: n for m in modules if (n := len(m.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_no_colour_is_kept_where_the_cutout_is_fully_transparent(fmt: str) -> None:
    # A busy backdrop: every pixel differs. Under alpha 0 nothing is seen, so nothing is
    # encoded there; wherever alpha is above 0 the original's colours stay exact.
    noise = Image.effect_noise((120, 80), 60).convert("RGB")
    original = _encode(noise)
    out = open_image(_cutout(original, _encode(_half_mask(120, 80)), fmt=fmt))
    alpha = out.getchannel("A")
    hidden = [out.getpixel((x, y)) for x in range(60) for y in range(80)]
    assert set(hidden) == {(0, 0, 0, 0)}
    seen = [(x, y) for x in range(60, 120) for y in range(80) if alpha.getpixel((x, y)) == 255]
    assert len(seen) == 60 * 80
    rgb = out.convert("RGB")
    assert all(rgb.getpixel(xy) == noise.getpixel(xy) for xy in seen)
    # What it is for: the cut-out is a fraction of one that keeps the backdrop's noise.
    kept = noise.copy()
    kept.putalpha(_half_mask(120, 80))
    assert len(_cutout(original, _encode(_half_mask(120, 80)))) < 0.7 * len(_encode(kept))
