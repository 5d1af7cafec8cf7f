"""Finishing end to end (SPEC §9): a real daemon with a preset, and check-config showing it.

A real ``bgsyncd run`` against the emulator over loopback HTTP; the output is
decoded and measured.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw

from bgsyncd.emulator import Emulator
from tests.support.daemons import (
    DaemonProcess,
    make_folder,
    outputs,
    run_cli,
    start_daemon,
    write_config,
)
from tests.support.helpers import open_image, wait_until


def _product(size: tuple[int, int], box: tuple[int, int, int, int] | None) -> bytes:
    """A red box (None: nothing) on a light studio background, as a PNG."""
    img = Image.new("RGB", size, (235, 235, 230))
    if box is not None:
        inclusive = (box[0], box[1], box[2] - 1, box[3] - 1)
        ImageDraw.Draw(img).rectangle(inclusive, fill=(200, 20, 20))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_the_amazon_preset_makes_a_2000_square_jpeg_on_white_with_the_subject_at_85_percent(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    # The mask beside it shows the alpha the crop box was read from.
    folder = make_folder(tmp_path, "shop", preset="amazon", output="both")
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
    shown = run_cli("check-config", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    for line in (
        'preset = "amazon"',
        "crop = true",
        'canvas = "2000x2000"',
        'margin = "7.5%"',
        'align = "center"',
        'background = "#ffffff"',
        'format = "jpeg"',
    ):
        assert line in shown.stdout, (line, shown.stdout)
    start_daemon(daemons, config)
    # A 300 x 200 product, off centre in a 1200 x 800 photo.
    (Path(folder["inbox"]) / "mug.png").write_bytes(_product((1200, 800), (700, 100, 1000, 300)))
    wait_until(lambda: outputs(folder) == ["mug.jpg", "mug.mask.png"], 60, what="the outputs")
    outbox = Path(folder["outbox"])
    out = open_image((outbox / "mug.jpg").read_bytes())
    assert (out.format, out.size, out.mode) == ("JPEG", (2000, 2000), "RGB")
    corners = [out.getpixel(xy) for xy in ((3, 3), (1996, 3), (3, 1996), (1996, 1996))]
    assert all(isinstance(c, tuple) and min(c) >= 250 for c in corners), corners
    # The subject (alpha 8 and up) is 85 % of the frame on its longer side, centred.
    mask = open_image((outbox / "mug.mask.png").read_bytes())
    subject = mask.point(lambda v: 255 if v >= 8 else 0).getbbox()
    assert subject is not None
    left, top, right, bottom = subject
    assert abs(left - 150) <= 2 and abs(right - 1850) <= 2
    assert abs((top + bottom) / 2 - 1000) <= 2 and abs((bottom - top) - 1700 * 2 / 3) <= 12
    # The red product itself, centred on white; the crop box holds the matte's soft edge
    # too (a few pixels of the photo, scaled with it).
    # The emulator's matte feathers the edge by about a pixel of the photo, not always
    # alike on every side: the red may sit off centre by up to one photo pixel, scaled.
    scale = 1700 / 300
    red = out.convert("HSV").getchannel("S").point(lambda s: 255 if s > 128 else 0).getbbox()
    assert red is not None
    left, top, right, bottom = red
    assert 1700 * 0.95 <= right - left <= 1700
    assert abs((left + right) / 2 - 1000) <= scale and abs((top + bottom) / 2 - 1000) <= scale


def test_a_crop_that_finds_no_subject_keeps_the_image_whole_and_logs_it(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    folder = make_folder(tmp_path, "plain", crop=True, margin="10px")
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
    d = start_daemon(daemons, config)
    # One flat colour: the emulator's matte is 0 everywhere.
    (Path(folder["inbox"]) / "wall.png").write_bytes(_product((120, 80), None))
    wait_until(lambda: outputs(folder) == ["wall.png"], 60, what="the output")
    out = open_image((Path(folder["outbox"]) / "wall.png").read_bytes())
    assert out.size == (140, 100)  # whole, with its margin
    assert d.saw("finish.no_subject", path="wall.png"), d.output()
