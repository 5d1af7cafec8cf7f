"""imaging: sniffing, guarded decoding, shrinking, compositing and encoding, on real images."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, ImageDraw

from bgsyncd import imaging
from bgsyncd.imaging import CorruptImage, ImageInfo
from tests.helpers import noisy_image, open_image, product_image, transparent_png

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


# shrink_to_fit


def test_shrink_to_fit_makes_a_big_noisy_png_fit_and_keeps_the_aspect() -> None:
    data = noisy_image(3000, 2000)
    limit = 1_000_000
    assert len(data) > 5 * limit
    small = imaging.shrink_to_fit(data, limit)
    assert len(small) <= limit
    img = open_image(small)
    assert img.format == "JPEG"  # opaque input: JPEG
    assert img.width < 3000
    assert img.width / img.height == pytest.approx(1.5, abs=0.01)


def test_shrink_to_fit_keeps_transparency_as_png() -> None:
    data = _encode(Image.frombytes("RGBA", (600, 400), _rgba_noise(600, 400)))
    small = imaging.shrink_to_fit(data, len(data) // 4)
    out = open_image(small)
    assert len(small) <= len(data) // 4
    assert (out.format, out.mode) == ("PNG", "RGBA")
    assert out.width / out.height == pytest.approx(1.5, abs=0.01)


def _rgba_noise(width: int, height: int) -> bytes:
    import random

    return random.Random(7).randbytes(width * height * 4)


def test_shrink_to_fit_raises_when_nothing_can_fit() -> None:
    with pytest.raises(ValueError, match="cannot be reduced"):
        imaging.shrink_to_fit(product_image(), 10)


# compose


def test_compose_applies_a_smaller_mask_to_the_full_size_original() -> None:
    original = product_image(200, 100, fmt="JPEG")
    mask = _encode(_half_mask(100, 50))  # as if a half-size copy was uploaded
    out = open_image(imaging.compose(original, mask, result_is_alpha=True))
    assert (out.format, out.mode, out.size) == ("PNG", "RGBA", (200, 100))
    assert out.getpixel((10, 50))[3] == 0  # type: ignore[index]
    assert out.getpixel((190, 50))[3] == 255  # type: ignore[index]
    # The colours are the original's, full size: the object's red is kept.
    red = open_image(original).convert("RGB").getpixel((100, 50))
    assert out.getpixel((100, 50))[:3] == pytest.approx(red, abs=2)  # type: ignore[index]


def test_compose_multiplies_transparency_the_original_already_had() -> None:
    original = transparent_png(40, 40)  # opaque square 10..30 on transparent
    mask = _encode(Image.new("L", (40, 40), 255))
    out = open_image(imaging.compose(original, mask, result_is_alpha=True))
    assert out.getpixel((2, 2))[3] == 0  # type: ignore[index]
    assert out.getpixel((20, 20))[3] == 255  # type: ignore[index]


def test_compose_scales_an_rgba_cutout_of_another_size() -> None:
    cut = Image.new("RGBA", (50, 25), (0, 0, 0, 0))
    ImageDraw.Draw(cut).rectangle((25, 0, 49, 24), fill=(10, 200, 30, 255))
    out = open_image(imaging.compose(product_image(100, 50), _encode(cut), result_is_alpha=False))
    assert out.size == (100, 50)
    assert out.getpixel((5, 25))[3] == 0  # type: ignore[index]
    assert out.getpixel((95, 25)) == pytest.approx((10, 200, 30, 255), abs=3)


def test_compose_names_the_input_that_cannot_be_read() -> None:
    with pytest.raises(CorruptImage, match="API matte"):
        imaging.compose(product_image(), b"not a png", result_is_alpha=True)
    with pytest.raises(CorruptImage, match="original image"):
        imaging.compose(b"\xff\xd8\xff garbage", transparent_png(), result_is_alpha=False)


def test_compose_brings_16_bit_images_to_8_bit_without_clipping() -> None:
    original = _encode(Image.new("I;16", (8, 8), 32768))
    out = open_image(
        imaging.compose(original, _encode(Image.new("L", (8, 8), 255)), result_is_alpha=True)
    )
    assert out.getpixel((4, 4)) == (128, 128, 128, 255)


def test_compose_keeps_geometry_and_carries_only_the_orientation_tag() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° to display"
    exif[0x010F] = "Camera maker"  # must not be carried over
    original = product_image(60, 40, fmt="JPEG", exif=exif.tobytes())
    mask = _encode(Image.new("L", (60, 40), 255))
    cutout = imaging.compose(original, mask, result_is_alpha=True)
    out = open_image(cutout)
    assert out.size == (60, 40)
    assert dict(out.getexif()) == {0x0112: 6}
    for fmt in ("png", "webp", "jpeg"):
        encoded = open_image(imaging.encode_cutout(cutout, fmt, "#ffffff"))
        assert encoded.getexif().get(0x0112) == 6, fmt
    assert open_image(imaging.encode_mask(cutout)).getexif().get(0x0112) == 6


# encode_cutout / encode_mask


@pytest.fixture(scope="module")
def cutout() -> bytes:
    """A 40x20 cut-out: left half transparent, right half opaque blue."""
    img = Image.new("RGBA", (40, 20), (255, 0, 0, 0))
    ImageDraw.Draw(img).rectangle((20, 0, 39, 19), fill=(0, 0, 255, 255))
    return _encode(img)


@pytest.mark.parametrize(("fmt", "pillow"), [("png", "PNG"), ("webp", "WEBP")])
def test_encode_cutout_keeps_transparency_without_background(
    cutout: bytes, fmt: str, pillow: str
) -> None:
    out = open_image(imaging.encode_cutout(cutout, fmt, ""))
    assert (out.format, out.mode, out.size) == (pillow, "RGBA", (40, 20))
    assert out.getpixel((5, 10))[3] == 0  # type: ignore[index]
    assert out.getpixel((30, 10)) == (0, 0, 255, 255)  # lossless


def test_encode_cutout_webp_without_background_is_lossless() -> None:
    noisy = open_image(noisy_image(32, 32)).convert("RGBA")
    out = open_image(imaging.encode_cutout(_encode(noisy), "webp", ""))
    assert out.convert("RGBA").tobytes() == noisy.tobytes()


@pytest.mark.parametrize(("fmt", "pillow"), [("png", "PNG"), ("webp", "WEBP"), ("jpeg", "JPEG")])
def test_encode_cutout_composites_onto_the_background(cutout: bytes, fmt: str, pillow: str) -> None:
    out = open_image(imaging.encode_cutout(cutout, fmt, "#00ff00"))
    assert (out.format, out.mode) == (pillow, "RGB")
    assert out.getpixel((5, 10)) == pytest.approx((0, 255, 0), abs=6)  # background shows
    assert out.getpixel((34, 10)) == pytest.approx((0, 0, 255), abs=6)  # object kept


def test_encode_cutout_blends_partial_alpha_with_the_background() -> None:
    half = _encode(Image.new("RGBA", (4, 4), (0, 0, 0, 128)))
    out = open_image(imaging.encode_cutout(half, "png", "#ffffff"))
    assert out.getpixel((1, 1)) == pytest.approx((127, 127, 127), abs=1)


def test_encode_cutout_refuses_jpeg_without_background_and_bad_arguments(
    cutout: bytes,
) -> None:
    with pytest.raises(ValueError, match="jpeg"):
        imaging.encode_cutout(cutout, "jpeg", "")
    with pytest.raises(ValueError, match="format"):
        imaging.encode_cutout(cutout, "gif", "")
    with pytest.raises(ValueError, match="background"):
        imaging.encode_cutout(cutout, "png", "white")


def test_encode_mask_is_the_alpha_channel_as_grayscale_png(cutout: bytes) -> None:
    out = open_image(imaging.encode_mask(cutout))
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
