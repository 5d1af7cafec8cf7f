"""A folder moved into an inbox from outside is watched like one made there.

watchdog 6 (Python 3.10) sets up inotify watches for a folder *made* in a
watched tree, not for one *moved in* from outside it: the files already inside
are reported, but nothing written into it later is, until the periodic rescan.
bgsyncd watches such a folder itself (``bgsyncd.inbox.moved_in``); watchdog 7 does it
on its own. Real watchdog observers and a real filesystem, on both.
"""

from __future__ import annotations

from pathlib import Path

from bgsyncd.emulator import Emulator
from tests.support.daemons import DaemonProcess, make_folder, start_daemon, write_config
from tests.support.helpers import product_image, wait_until
from tests.support.watching import RESCAN


def test_the_daemon_processes_an_image_written_into_a_folder_moved_in_long_before_the_rescan(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    folder = make_folder(tmp_path, "products")
    inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
    config = write_config(
        tmp_path / "bgsyncd.toml",
        base_url=emulator.url,
        folders=[folder],
        queue={"rescan_interval_seconds": RESCAN},
    )
    daemon = start_daemon(daemons, config)
    shoot = tmp_path / "outside" / "shoot"
    (shoot / "sub").mkdir(parents=True)
    (shoot / "first.jpg").write_bytes(product_image(40, 30))
    shoot.rename(inbox / "shoot")
    wait_until((outbox / "shoot" / "first.png").exists, 30.0, what="first.png")
    (inbox / "shoot" / "later.jpg").write_bytes(product_image(41, 31))
    (inbox / "shoot" / "sub" / "later.jpg").write_bytes(product_image(42, 32))
    # Seen by their closes: nothing else would find them before the hour's rescan.
    wait_until((outbox / "shoot" / "later.png").exists, 30.0, what="shoot/later.png")
    wait_until((outbox / "shoot" / "sub" / "later.png").exists, 30.0, what="sub/later.png")
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0
