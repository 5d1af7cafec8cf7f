"""Renditions (SPEC §9) on a real daemon and the emulator: more outputs from one matte,
each in its own mirrored tree, for the one credit of the input's request.

Sizes are asserted only where no geometry applies (crop, canvas and max_side
are another part's); names, trees, formats and credits are this one's.
"""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path
from typing import Any

from PIL import Image

from bgsyncd.emulator import Emulator
from tests.support.daemons import (
    DaemonProcess,
    make_folder,
    run_cli,
    start_daemon,
    status_json,
    write_config,
)
from tests.support.helpers import product_image, wait_until
from tests.support.mounts import EROFS_TEXT, tmpfs

START_CREDITS = 10_000  # the emulator fixture's


def _spent(emulator: Emulator) -> int:
    return START_CREDITS - emulator.credits


def _renditions(root: Path) -> list[dict[str, Any]]:
    """The done-when line's three: a preset, a mask with max_side, a WebP with a template."""
    return [
        {"outbox": str(root / "amazon"), "preset": "amazon"},
        {"outbox": str(root / "masks"), "output": "mask", "max_side": 512},
        {"outbox": str(root / "web"), "format": "webp", "name_template": "{stem}-web"},
    ]


def _opened(path: Path) -> Image.Image:
    img = Image.open(io.BytesIO(path.read_bytes()))
    img.load()
    return img


def _done_outputs(daemon: DaemonProcess, relpath: str) -> list[list[str]]:
    return [
        e.get("outputs", [])
        for e in daemon.events()
        if e.get("event") == "job.done" and e.get("path") == relpath
    ]


def test_own_output_and_three_renditions_cost_one_credit_and_the_input_goes_after_all(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    root = tmp_path / "products"
    folder = make_folder(tmp_path, "products", after_success="delete", rendition=_renditions(root))
    inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
    config = write_config(tmp_path / "config.toml", base_url=emulator.url, folders=[folder])
    daemon = start_daemon(daemons, config)
    for tree in ("amazon", "masks", "web"):  # created at start, like any outbox
        assert (root / tree).is_dir()
    (inbox / "shoes").mkdir()
    (inbox / "shoes" / "red.jpg").write_bytes(product_image(640, 480))
    wait_until(lambda: _done_outputs(daemon, "shoes/red.jpg"), 30, what="job.done")

    own = outbox / "shoes" / "red.png"
    amazon = root / "amazon" / "shoes" / "red.jpg"
    mask = root / "masks" / "shoes" / "red.png"
    web = root / "web" / "shoes" / "red-web.webp"
    # job.done lists every output: the folder's own relative to its outbox, a
    # rendition's by its full path.
    assert _done_outputs(daemon, "shoes/red.jpg") == [
        ["shoes/red.png", str(amazon), str(mask), str(web)]
    ]
    assert _opened(own).format == "PNG" and _opened(own).mode == "RGBA"
    assert _opened(own).size == (640, 480)
    assert _opened(amazon).format == "JPEG"
    assert _opened(mask).format == "PNG" and _opened(mask).mode == "L"
    assert _opened(web).format == "WEBP" and _opened(web).size == (640, 480)
    # One request, one credit, for all four.
    assert _spent(emulator) == 1
    assert not (inbox / "shoes" / "red.jpg").exists()  # after_success: deleted
    assert status_json(config)["jobs"]["done"] == 1
    assert daemon.stop() == 0


def test_an_unwritable_rendition_outbox_pauses_like_the_folders_own_and_the_input_stays(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    root = tmp_path / "products"
    web = root / "web"
    rendition = {"outbox": str(web), "format": "webp", "name_template": "{stem}-web"}
    folder = make_folder(tmp_path, "products", after_success="delete", rendition=[rendition])
    inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
    config = write_config(tmp_path / "config.toml", base_url=emulator.url, folders=[folder])
    with tmpfs(web, "4m") as fs:
        daemon = start_daemon(daemons, config)
        (inbox / "first.jpg").write_bytes(product_image(64, 48))
        wait_until((web / "first-web.webp").exists, 20, what="first rendition")
        fs.readonly()
        (inbox / "second.jpg").write_bytes(product_image(80, 60))
        wait_until(
            lambda: daemon.saw("dispatch.paused", reason="output_unwritable"),
            30,
            what="dispatch.paused output_unwritable",
        )
        paused = next(
            e
            for e in daemon.events()
            if e.get("event") == "dispatch.paused" and e.get("reason") == "output_unwritable"
        )
        assert EROFS_TEXT in json.dumps(paused), paused
        assert str(web) in json.dumps(paused), paused  # the rendition's outbox is named
        # The folder's own output may be written; the input is not dealt with
        # before every rendition is: it stays, its job pending, nothing counted.
        assert (inbox / "second.jpg").exists()
        assert not any(e.get("event") == "job.quarantined" for e in daemon.events())
        assert not _done_outputs(daemon, "second.jpg")
        assert _spent(emulator) == 2

        fs.readwrite()
        daemon.signal(signal.SIGHUP)  # the probe runs at once
        wait_until(lambda: daemon.saw("output.writable"), 20, what="output.writable")
        wait_until(lambda: _done_outputs(daemon, "second.jpg"), 30, what="second done")
        assert (web / "second-web.webp").exists() and (outbox / "second.png").exists()
        wait_until(lambda: not (inbox / "second.jpg").exists(), 10, what="input deleted")
        assert _spent(emulator) == 2  # the resume came from the kept answer
        assert daemon.stop() == 0


def test_a_rendition_added_later_is_made_by_retry_from_the_cache_without_a_credit(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    folder = make_folder(tmp_path, "products")
    inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
    config = write_config(tmp_path / "config.toml", base_url=emulator.url, folders=[folder])
    daemon = start_daemon(daemons, config)
    (inbox / "a.jpg").write_bytes(product_image(96, 64))
    wait_until((outbox / "a.png").exists, 20, what="first output")
    wait_until(lambda: _done_outputs(daemon, "a.jpg"), 10, what="job.done")
    assert _spent(emulator) == 1
    assert daemon.stop() == 0

    web = tmp_path / "products" / "web"
    folder["rendition"] = [{"outbox": str(web), "format": "webp", "name_template": "{stem}-web"}]
    write_config(config, base_url=emulator.url, folders=[folder])
    result = run_cli("retry", "--config", str(config), str(inbox / "a.jpg"))
    assert result.returncode == 0, result.stderr
    assert "queued again, to be made anew: products/a.jpg" in result.stdout
    # A file the queue has not done is not retried.
    (inbox / "new.jpg").write_bytes(product_image(50, 40))
    refused = run_cli("retry", "--config", str(config), str(inbox / "new.jpg"))
    assert refused.returncode == 1
    assert "neither a quarantined file nor a done one" in refused.stderr

    daemon = start_daemon(daemons, config)
    wait_until((web / "a-web.webp").exists, 30, what="the new rendition")
    wait_until(lambda: len(_done_outputs(daemon, "a.jpg")) == 1, 10, what="job.done")
    assert _done_outputs(daemon, "a.jpg") == [["a.png", str(web / "a-web.webp")]]
    assert daemon.saw("job.done", path="a.jpg", source="cache")
    assert _opened(web / "a-web.webp").size == (96, 64)
    wait_until(lambda: _done_outputs(daemon, "new.jpg"), 30, what="new.jpg done")
    assert _spent(emulator) == 2  # new.jpg's; the remake cost nothing
    assert daemon.stop() == 0
