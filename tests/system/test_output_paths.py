"""Outputs beside folders, end to end (SPEC §4): an output path is claimed with
every folder on its way, before any credit is spent.

A real ``bgsyncd run`` against the emulator over loopback HTTP; the emulator
counts the requests, the outbox and the quarantine folder show the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bgsyncd.emulator import Emulator
from tests.support.daemons import (
    DaemonProcess,
    make_folder,
    start_daemon,
    status_json,
    write_config,
)
from tests.support.emulated import IMAGE_PATHS
from tests.support.helpers import product_image, wait_until


def _image_requests(emu: Emulator) -> int:
    return sum(1 for r in emu.requests() if r.path in IMAGE_PATHS)


def _files(root: str) -> list[str]:
    top = Path(root)
    if not top.exists():
        return []
    return sorted(p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file())


def _drop(inbox: Path, relpaths: list[str], seed: int = 0) -> None:
    """Distinct images (no cache hits: each one is a request)."""
    for i, relpath in enumerate(relpaths, start=seed):
        (inbox / relpath).parent.mkdir(parents=True, exist_ok=True)
        (inbox / relpath).write_bytes(product_image(30 + i, 24 + i, "JPEG"))


def _finished(config: Path, total: int) -> None:
    def settled() -> bool:
        jobs = status_json(config)["jobs"]
        return bool(jobs["done"] + jobs["quarantined"] == total)

    wait_until(settled, 60, interval=0.25, what=f"{total} jobs finished")


def _start(
    tmp_path: Path, emu: Emulator, daemons: list[DaemonProcess], **extra: Any
) -> tuple[dict[str, Any], Path]:
    folder = make_folder(tmp_path, "shop", **extra)
    config = write_config(tmp_path / "c.toml", base_url=emu.url, folders=[folder])
    return folder, config


def test_a_file_beside_an_inbox_folder_of_its_output_name_gets_the_next_name(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    folder, config = _start(tmp_path, emulator, daemons)
    _drop(Path(folder["inbox"]), ["a.jpg", "a.png/b.jpg"])
    start_daemon(daemons, config)
    _finished(config, 2)
    assert _files(folder["quarantine"]) == []
    assert _files(folder["outbox"]) == ["a.jpg.png", "a.png/b.png"]
    assert _image_requests(emulator) == 2


def test_a_mask_beside_an_inbox_folder_of_its_name_gets_the_next_name(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    folder, config = _start(tmp_path, emulator, daemons, output="both")
    _drop(Path(folder["inbox"]), ["x.jpg", "x.mask.png/y.jpg"])
    start_daemon(daemons, config)
    _finished(config, 2)
    assert _files(folder["quarantine"]) == []
    assert _files(folder["outbox"]) == [
        "x.mask.png/y.mask.png",
        "x.mask.png/y.png",
        "x.mask~2.png",
        "x.png",
    ]
    assert _image_requests(emulator) == 2


def test_a_folder_that_comes_after_a_file_took_its_name_gets_the_next_name(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    folder, config = _start(tmp_path, emulator, daemons)
    inbox = Path(folder["inbox"])
    _drop(inbox, ["a.jpg"])
    start_daemon(daemons, config)
    _finished(config, 1)
    assert _files(folder["outbox"]) == ["a.png"]
    # The folder `a.png/` arrives once the file `a.png` is written.
    staging = tmp_path / "staging"
    _drop(staging, ["a.png/b.jpg", "a.png/c/d.jpg"], seed=5)
    (staging / "a.png").rename(inbox / "a.png")
    _finished(config, 3)
    assert _files(folder["quarantine"]) == []
    assert _files(folder["outbox"]) == ["a.png", "a.png~2/b.png", "a.png~2/c/d.png"]
    assert _image_requests(emulator) == 3
