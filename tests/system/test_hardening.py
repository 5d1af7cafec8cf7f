"""Hostile and unusual situations: names that are not UTF-8, a folder swapped for a
symlink after discovery, two daemons on one queue, quarantine name collisions."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

from bgsyncd.emulator import Emulator
from tests.support.daemons import (
    TEST_KEY,
    DaemonProcess,
    make_folder,
    run_cli,
    status_json,
    write_config,
)
from tests.support.helpers import product_image, wait_until


def test_a_name_that_is_not_utf8_is_skipped_and_the_rest_goes_on(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    folder = make_folder(tmp_path, "names")
    inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
    bad = os.fsencode(str(inbox)) + b"/caf\xe9.jpg"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, product_image())
    os.close(fd)
    (inbox / "good.jpg").write_bytes(product_image(30, 30))
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
    d = DaemonProcess(config)
    daemons.append(d)
    d.wait_ready()
    wait_until((outbox / "good.png").exists, 20, what="good.png")
    assert d.saw("file.bad_name")
    assert os.path.exists(bad)  # left where it is, never lost
    (inbox / "later.jpg").write_bytes(product_image(31, 31))
    wait_until((outbox / "later.png").exists, 20, what="later.png")
    assert d.stop() == 0


def test_a_folder_swapped_for_a_symlink_after_discovery_is_never_followed(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    with Emulator(keys=[TEST_KEY], credits=0, rate_limit=1000) as emu:
        folder = make_folder(tmp_path, "swap", after_success="delete")
        inbox = Path(folder["inbox"])
        config = write_config(tmp_path / "c.toml", base_url=emu.url, folders=[folder])
        d = DaemonProcess(config)
        daemons.append(d)
        d.wait_ready()
        wait_until(lambda: status_json(config)["paused"] == "credit_floor", 20, what="paused")
        (inbox / "d").mkdir()
        (inbox / "d" / "x.jpg").write_bytes(product_image(20, 20))
        wait_until(lambda: d.saw("file.queued", path="d/x.jpg"), 20, what="queued")
        # The attacker's move: the folder goes, a symlink to a private folder takes its place.
        private = tmp_path / "private"
        private.mkdir()
        secret = private / "x.jpg"
        secret.write_bytes(product_image(40, 40))
        (inbox / "d").rename(tmp_path / "moved-away")
        (inbox / "d").symlink_to(private, target_is_directory=True)
        emu.configure(credits=100)
        d.signal(signal.SIGHUP)  # re-check credits at once
        wait_until(lambda: d.saw("file.vanished", path="d/x.jpg"), 20, what="vanished")
        assert secret.exists(), "a file outside the inbox was deleted"
        digest = hashlib.sha256(secret.read_bytes()).hexdigest()
        assert all(r.image_sha256 != digest for r in emu.requests())
        assert not list(Path(folder["outbox"]).rglob("*.png"))
        assert d.stop() == 0


def test_a_second_daemon_on_the_same_queue_refuses_to_start(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    folder = make_folder(tmp_path, "one")
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
    first = DaemonProcess(config)
    daemons.append(first)
    first.wait_ready()
    second = run_cli("once", "--config", str(config), timeout=30)
    assert second.returncode == 1
    assert "already running" in second.stderr and "Traceback" not in second.stderr
    assert first.stop() == 0
    again = run_cli("once", "--config", str(config), timeout=60)
    assert again.returncode == 0, again.stderr


def test_retry_finds_a_file_quarantined_under_a_suffixed_name(
    tmp_path: Path, emulator: Emulator
) -> None:
    folder = make_folder(tmp_path, "twice")
    inbox, quarantine = Path(folder["inbox"]), Path(folder["quarantine"])
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
    (inbox / "a.jpg").write_bytes(b"not an image, first")
    assert run_cli("once", "--config", str(config)).returncode == 0
    (inbox / "a.jpg").write_bytes(b"not an image, second time")
    assert run_cli("once", "--config", str(config)).returncode == 0
    assert (quarantine / "a.jpg").exists() and (quarantine / "a~2.jpg").exists()
    result = run_cli("retry", "--config", str(config), str(quarantine / "a~2.jpg"))
    assert result.returncode == 0, result.stderr
    assert (inbox / "a.jpg").read_bytes() == b"not an image, second time"
    assert (quarantine / "a.jpg").read_bytes() == b"not an image, first"
    assert not (quarantine / "a~2.jpg").exists()
