"""The watcher against the real filesystem and real watchdog observers (inotify, polling)."""

from __future__ import annotations

import shutil
import socket
import urllib.request
from pathlib import Path

import pytest

from bgsyncd.emulator import Emulator
from tests.support.daemons import DaemonProcess, make_folder, start_daemon, write_config
from tests.support.helpers import product_image, wait_until
from tests.support.watching import LOST_WITHIN


def _folder_up(port: int, folder: str) -> float | None:
    """``bgsyncd_folder_up{folder=...}`` from a real scrape of the daemon, None if absent."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode("utf-8")
    for line in text.splitlines():
        if line.startswith(f'bgsyncd_folder_up{{folder="{folder}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.parametrize("polling", [False, True])
def test_daemon_processes_a_file_dropped_into_a_remade_inbox_long_before_the_rescan(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess], polling: bool
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    folder = make_folder(tmp_path, "products", polling=polling)
    inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
    config = write_config(
        tmp_path / "bgsyncd.toml",
        base_url=emulator.url,
        folders=[folder],
        queue={"rescan_interval_seconds": 300},
        metrics_listen=f"127.0.0.1:{port}",
    )
    daemon = start_daemon(daemons, config)
    wait_until(lambda: _folder_up(port, "products") == 1, 5.0, what="folder_up 1 at start")
    shutil.rmtree(inbox)
    wait_until(lambda: daemon.saw("folder.lost", folder="products"), LOST_WITHIN)
    assert _folder_up(port, "products") == 0
    inbox.mkdir()
    wait_until(lambda: daemon.saw("folder.restored", folder="products"), LOST_WITHIN)
    assert _folder_up(port, "products") == 1
    (inbox / "after.jpg").write_bytes(product_image())
    # Processed through the new watch: well before the 300 s rescan.
    wait_until((outbox / "after.png").exists, 20.0, what="after.png in the outbox")
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0
