"""What is sent (SPEC §5): the decision, the proxy copy, its memory, and the two settings.

The decision is a pure function, tested row by row; the proxy is made from real
encoded images and decoded again to check what would go over the wire; the
memory claim is measured in real subprocesses (peak RSS), not guessed.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, ImageCms, ImageDraw

from bgsyncd import imaging
from bgsyncd.config.schema import ApiSettings
from bgsyncd.errors import ConfigError
from bgsyncd.imaging import UploadPlan, plan_upload
from bgsyncd.service.backends import load_settings
from tests.support.helpers import noisy_image, open_image, product_image
from tests.support.paths import ROOT

MB = 1024 * 1024


def _encode(img: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _plan(
    size: tuple[int, int], file_size: int = 1000, orientation: int = 1, **kw: object
) -> UploadPlan:
    settings: dict[str, object] = {
        "upload": "proxy",
        "proxy_side": 1024,
        "max_upload_bytes": 10 * MB,
        "oversize": "shrink",
    }
    settings.update(kw)
    return plan_upload(size, orientation, file_size, **settings)  # type: ignore[arg-type]


# --- the decision ---------------------------------------------------------------


def test_a_small_file_without_rotation_goes_as_it_is_to_the_alpha_channel() -> None:
    assert _plan((800, 600)) == UploadPlan("as_is", "alpha_channel", None, "")
    assert _plan((1024, 1024)).action == "as_is"  # at most proxy_side: still as it is


def test_a_longer_side_over_proxy_side_is_sent_as_a_copy_of_proxy_side() -> None:
    plan = _plan((1025, 10))
    assert (plan.action, plan.endpoint, plan.side) == ("proxy", "alpha_channel", 1024)
    assert "proxy_side" in plan.reason
    assert _plan((3000, 4000), proxy_side=512).side == 512


def test_a_small_image_over_max_upload_bytes_is_a_copy_never_enlarged() -> None:
    plan = _plan((900, 700), file_size=11 * MB)
    assert (plan.action, plan.side) == ("proxy", 900)
    assert "max_upload_bytes" in plan.reason


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_any_exif_rotation_makes_a_copy_even_of_a_small_image(orientation: int) -> None:
    plan = _plan((300, 200), orientation=orientation)
    assert (plan.action, plan.side) == ("proxy", 300)
    assert f"orientation {orientation}" in plan.reason


@pytest.mark.parametrize("upload", ["proxy", "original"])
def test_oversize_quarantine_refuses_a_file_over_the_limit_in_either_mode(upload: str) -> None:
    plan = _plan((100, 100), file_size=10 * MB + 1, upload=upload, oversize="quarantine")
    assert plan.action == "too_large"
    assert _plan((100, 100), file_size=10 * MB, upload=upload, oversize="quarantine").action == (
        "as_is"
    )


def test_original_mode_sends_the_file_to_the_cutout_endpoint_whatever_its_size() -> None:
    plan = _plan((6000, 4000), file_size=5 * MB, orientation=6, upload="original")
    assert plan == UploadPlan("as_is", "remove_background", None, "")


def test_original_mode_sends_an_oversize_file_as_a_reduced_copy_from_full_size() -> None:
    plan = _plan((6000, 4000), file_size=11 * MB, upload="original")
    assert (plan.action, plan.endpoint, plan.side) == ("proxy", "alpha_channel", None)


def test_scaled_size_keeps_the_aspect_and_never_enlarges() -> None:
    assert imaging.scaled_size((6000, 4000), 1024) == (1024, 683)
    assert imaging.scaled_size((4000, 6000), 1024) == (683, 1024)
    assert imaging.scaled_size((500, 300), 1024) == (500, 300)
    assert imaging.scaled_size((100000, 3), 1024) == (1024, 1)


@pytest.mark.parametrize(
    ("answer", "sent", "usable"),
    [
        ((1024, 683), (1024, 683), True),
        ((4096, 2732), (1024, 683), True),  # any scale
        ((512, 342), (1024, 683), True),  # 341.5 rounded up
        ((512, 341), (1024, 683), True),  # ... or down
        ((2048, 1366), (1024, 683), True),  # twice the size
        ((1024, 684), (1024, 683), True),  # a pixel off
        ((1024, 686), (1024, 683), False),  # three pixels off
        ((683, 1024), (1024, 683), False),  # turned
        ((1024, 1024), (1024, 683), False),
        ((0, 0), (1024, 683), False),
    ],
)
def test_same_aspect_is_to_a_pixel_at_any_scale(
    answer: tuple[int, int], sent: tuple[int, int], usable: bool
) -> None:
    assert imaging.same_aspect(answer, sent) is usable


def test_rotated_by_server_only_when_the_size_is_the_turned_one_and_not_the_stored() -> None:
    assert imaging.rotated_by_server((400, 600), (600, 400), 6)
    assert imaging.rotated_by_server((800, 1200), (600, 400), 8)  # at another scale too
    assert not imaging.rotated_by_server((600, 400), (600, 400), 6)  # as stored
    assert not imaging.rotated_by_server((400, 600), (600, 400), 3)  # 180°: size unchanged
    assert not imaging.rotated_by_server((500, 500), (500, 500), 6)  # square: cannot tell


# --- the proxy ------------------------------------------------------------------


def _camera_jpeg(width: int, height: int, **save: object) -> bytes:
    """A photo-like JPEG: noise over shapes, so it has real detail."""
    base = Image.effect_noise((width, height), 40).convert("RGB")
    draw = ImageDraw.Draw(base)
    draw.ellipse((width // 4, height // 4, width * 3 // 4, height * 3 // 4), fill=(150, 30, 40))
    return _encode(base, "JPEG", quality=85, **save)


def _rich_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° to display
    exif[0x010F] = "Camera maker"
    exif[0x0110] = "Model 1"
    return exif.tobytes()


SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_a_camera_jpeg_proxy_is_a_1024_pixel_jpeg_of_the_stored_pixels_with_no_metadata() -> None:
    data = _camera_jpeg(3000, 2000, exif=_rich_exif(), icc_profile=SRGB, comment=b"secret")
    proxy = imaging.make_proxy(data, side=1024, max_bytes=10 * MB)
    out = open_image(proxy.data)
    assert (proxy.format, proxy.size) == ("jpeg", (1024, 683))
    # EXIF rotation not applied: still landscape, as stored.
    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (1024, 683))
    assert len(out.getexif()) == 0
    assert not {"exif", "icc_profile", "comment", "xmp"} & set(out.info)
    assert b"Camera maker" not in proxy.data and b"secret" not in proxy.data
    assert len(proxy.data) < len(data) / 5
    # Decoded at reduced scale (3000 / 2 = 1500 >= 1024; 1/4 would be too small).
    assert proxy.decoded_size == (1500, 1000)


def test_a_24_megapixel_jpeg_is_decoded_at_a_quarter_for_its_proxy() -> None:
    proxy = imaging.make_proxy(_camera_jpeg(6000, 4000), side=1024, max_bytes=10 * MB)
    assert proxy.decoded_size == (1500, 1000)
    assert proxy.size == (1024, 683)


def test_a_non_jpeg_proxy_is_the_lanczos_scaled_stored_image() -> None:
    original = Image.frombytes("RGB", (2000, 1000), open_image(noisy_image(2000, 1000)).tobytes())
    proxy = imaging.make_proxy(_encode(original), side=1024, max_bytes=10 * MB)
    expected = _encode(original.resize((1024, 512), Image.Resampling.LANCZOS), "JPEG", quality=90)
    assert proxy.data == expected
    assert proxy.decoded_size == (2000, 1000)


def test_a_drafted_jpeg_proxy_is_close_to_one_scaled_from_the_full_decode() -> None:
    data = product_image(3000, 2000, fmt="JPEG", quality=95)
    proxy = open_image(imaging.make_proxy(data, side=1024, max_bytes=10 * MB).data)
    full = open_image(data).resize((1024, 683), Image.Resampling.LANCZOS)
    # The object's edge is where the full-size reference has it (no shift).
    for x, y in ((512, 341), (260, 341), (100, 100), (768, 341)):
        assert proxy.getpixel((x, y)) == pytest.approx(full.getpixel((x, y)), abs=12)


def test_a_small_image_is_never_enlarged() -> None:
    data = product_image(300, 200, fmt="PNG")
    proxy = imaging.make_proxy(data, side=1024, max_bytes=10 * MB)
    assert proxy.size == (300, 200)
    assert open_image(proxy.data).size == (300, 200)


def test_a_proxy_over_max_bytes_is_reduced_further_and_keeps_the_aspect() -> None:
    data = noisy_image(2048, 1024)
    proxy = imaging.make_proxy(data, side=1024, max_bytes=150_000)
    assert len(proxy.data) <= 150_000
    assert proxy.size[0] < 1024
    assert imaging.same_aspect(proxy.size, (2048, 1024))
    assert open_image(proxy.data).size == proxy.size


def test_a_proxy_that_cannot_fit_raises_value_error() -> None:
    with pytest.raises(ValueError, match="cannot be reduced"):
        imaging.make_proxy(product_image(), side=1024, max_bytes=10)


def test_transparency_gives_a_png_proxy_and_an_opaque_alpha_a_jpeg_one() -> None:
    clear = Image.new("RGBA", (2000, 1000), (0, 0, 0, 0))
    ImageDraw.Draw(clear).rectangle((500, 200, 1500, 800), fill=(20, 120, 200, 255))
    proxy = imaging.make_proxy(_encode(clear), side=1024, max_bytes=10 * MB)
    out = open_image(proxy.data)
    assert (proxy.format, out.format, out.mode, out.size) == ("png", "PNG", "RGBA", (1024, 512))
    assert out.getpixel((5, 5))[3] == 0  # type: ignore[index]
    opaque = Image.new("RGBA", (2000, 1000), (20, 120, 200, 255))
    assert imaging.make_proxy(_encode(opaque), side=1024, max_bytes=10 * MB).format == "jpeg"


def test_a_png_proxy_carries_no_metadata_of_the_original() -> None:
    from PIL import PngImagePlugin

    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "secret note")
    img = Image.new("RGBA", (1500, 1000), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle((100, 100, 900, 900), fill=(200, 10, 10, 255))
    data = _encode(img, pnginfo=text, icc_profile=SRGB, exif=_rich_exif(), dpi=(300, 300))
    proxy = imaging.make_proxy(data, side=1024, max_bytes=10 * MB)
    out = open_image(proxy.data)
    assert out.format == "PNG"
    assert not {"icc_profile", "exif", "Comment", "dpi"} & set(out.info)
    assert len(out.getexif()) == 0
    assert b"secret note" not in proxy.data


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        # CMYK JPEG: converted to RGB, colours as Pillow's conversion gives them.
        (lambda: _encode(Image.new("CMYK", (2000, 1000), (0, 255, 255, 0)), "JPEG"), (255, 0, 0)),
        # Palette GIF.
        (
            lambda: _encode(Image.new("RGB", (2000, 1000), (0, 0, 255)).convert("P"), "GIF"),
            (0, 0, 255),
        ),
        # 16-bit grey PNG at half scale: mid-grey, not clipped to white.
        (lambda: _encode(Image.new("I;16", (2000, 1000), 32768)), (128, 128, 128)),
        # 8-bit grey with alpha (LA), opaque: a JPEG of the grey.
        (lambda: _encode(Image.new("LA", (2000, 1000), (77, 255))), (77, 77, 77)),
    ],
    ids=["cmyk", "palette", "16-bit", "la"],
)
def test_other_modes_become_8_bit_rgb(
    make: Callable[[], bytes], expected: tuple[int, int, int]
) -> None:
    data = make()
    proxy = imaging.make_proxy(data, side=1024, max_bytes=10 * MB)
    out = open_image(proxy.data)
    assert (out.mode, out.size) == ("RGB", (1024, 512))
    assert out.getpixel((512, 256)) == pytest.approx(expected, abs=3)


def test_an_animated_gif_gives_its_first_frame() -> None:
    frames = [
        Image.new("RGB", (1200, 600), colour).convert("P") for colour in ((255, 0, 0), (0, 255, 0))
    ]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = open_image(imaging.make_proxy(buf.getvalue(), side=1024, max_bytes=10 * MB).data)
    assert out.getpixel((500, 250)) == pytest.approx((255, 0, 0), abs=3)


def test_a_corrupt_input_is_corrupt_image_not_a_pillow_error() -> None:
    data = _camera_jpeg(2000, 1000)
    with pytest.raises(imaging.CorruptImage):
        imaging.make_proxy(data[: len(data) // 2], side=1024, max_bytes=10 * MB)
    with pytest.raises(imaging.CorruptImage):
        imaging.make_proxy(b"GIF89a" + bytes(40), side=1024, max_bytes=10 * MB)


# --- memory, measured -------------------------------------------------------------

# In a fresh process: the peak resident memory of one step, from the kernel's
# own high-water mark (VmHWM), reset just before the step (clear_refs 5). Not
# ru_maxrss: a child inherits that from its parent, here pytest.
_MEASURE = """
import json, sys
from bgsyncd import imaging

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

data = open(sys.argv[1], "rb").read()
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")
before = status("VmRSS")
if sys.argv[2] == "proxy":
    imaging.make_proxy(data, side=1024, max_bytes=10 * 1024 * 1024)
else:
    imaging.decode(data)
print(json.dumps({"kib": status("VmHWM") - before}))
"""


def _peak_growth_kib(path: Path, how: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), how],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=True,
    )
    return int(json.loads(done.stdout)["kib"])


def test_a_24_megapixel_jpeg_proxy_needs_a_fraction_of_a_full_decode(tmp_path: Path) -> None:
    path = tmp_path / "camera.jpg"
    path.write_bytes(_camera_jpeg(6000, 4000))
    full = _peak_growth_kib(path, "full")
    small = _peak_growth_kib(path, "proxy")
    # A full decode of 6000 x 4000 RGB is 72 MB (Pillow may hold more).
    assert full > 60_000, full
    # Decoded at 1/4 (1500 x 1000, 4.5 MB) plus the resize and the encoding.
    assert small < full / 4, (small, full)


# --- the settings -----------------------------------------------------------------


def test_the_settings_default_to_proxy_and_1024() -> None:
    api = ApiSettings()
    assert (api.upload, api.proxy_side) == ("proxy", 1024)


def test_the_settings_load_from_the_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[api]\nupload = "original"\nproxy_side = 2048\n', encoding="utf-8")
    settings = load_settings(path, create_folders=False)
    assert (settings.api.upload, settings.api.proxy_side) == ("original", 2048)
    monkeypatch.setenv("BGSYNCD_API__PROXY_SIDE", "512")
    assert load_settings(path, create_folders=False).api.proxy_side == 512


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('upload = "thumbnail"', "api.upload"),
        ("proxy_side = 10", "api.proxy_side"),
        ("proxy_side = 0", "api.proxy_side"),
        ('proxy_side = "big"', "api.proxy_side"),
    ],
)
def test_bad_settings_are_one_message_naming_the_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[api]\n{text}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path, create_folders=False)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_the_example_file_states_both_settings_with_their_defaults() -> None:
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    assert '\nupload = "proxy"\n' in text
    assert "\nproxy_side = 1024\n" in text
