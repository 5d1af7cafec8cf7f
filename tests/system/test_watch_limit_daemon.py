"""An inbox that inotify cannot watch is polled instead (SPEC §6), under a real watch limit.

The limit is real, and lowered for the daemon alone: the daemon runs in a user
namespace of its own (``unshare --user --map-root-user``), where it writes its
namespace's ``/proc/sys/user/max_inotify_watches`` before it starts. The kernel
charges every inotify watch to its user in each namespace up the chain, so the
lowered value binds that daemon and nothing else; the machine's
``fs.inotify.max_user_watches`` is never written, and the other tests running on
this machine at the same time are not touched.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bgsyncd.emulator import Emulator
from tests.support.daemons import TEST_KEY, DaemonProcess, make_folder, write_config
from tests.support.helpers import product_image, wait_until
from tests.support.namespaces import namespaces_work

pytestmark = pytest.mark.skipif(
    not namespaces_work(), reason="needs user namespaces (unshare --user) to set a watch limit"
)


class LimitedDaemon(DaemonProcess):
    """``bgsyncd run`` in its own user namespace, allowed ``watches`` inotify watches."""

    def __init__(self, config: Path, watches: int) -> None:
        self.config = config
        self.log_path = config.parent / f"daemon-{os.getpid()}-{id(self)}.log"
        self._log = self.log_path.open("wb")
        run = shlex.join([sys.executable, "-m", "bgsyncd", "run", "--config", str(config)])
        script = f"echo {watches} > /proc/sys/user/max_inotify_watches && exec {run}"
        self.proc = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "sh", "-c", script],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "BGSYNCD_API_KEY": TEST_KEY},
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _folder_up(port: int, folder: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode("utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f'bgsyncd_folder_up{{folder="{folder}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return None


def _drop(inbox: Path, relpaths: list[str], seed: int) -> None:
    """Distinct images, each written whole under a temp name first (no cache hits)."""
    for i, relpath in enumerate(relpaths, start=seed):
        target = inbox / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.parent / f".{target.name}.part"
        temp.write_bytes(product_image(30 + i, 24 + i % 9, "JPEG"))
        temp.rename(target)


def _outputs(folder: dict[str, Any]) -> set[str]:
    top = Path(folder["outbox"])
    return {p.relative_to(top).as_posix() for p in top.rglob("*.png")} if top.exists() else set()


def _setup(
    tmp_path: Path, emu: Emulator, subfolders: list[str]
) -> tuple[dict[str, Any], Path, int]:
    folder = make_folder(tmp_path, "shop")
    for name in subfolders:
        (Path(folder["inbox"]) / name).mkdir()
    port = _free_port()
    config = write_config(
        tmp_path / "c.toml",
        base_url=emu.url,
        folders=[folder],
        # Only inotify or polling can find what arrives later: no rescan in the test's time.
        queue={"rescan_interval_seconds": 3600},
        metrics_listen=f"127.0.0.1:{port}",
    )
    return folder, config, port


def _started(daemons: list[DaemonProcess], config: Path, watches: int) -> DaemonProcess:
    d = LimitedDaemon(config, watches)
    daemons.append(d)
    d.wait_ready(60)
    return d


def test_more_folders_than_watches_at_start_are_polled_and_the_daemon_runs(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    # The inbox and three subfolders: four watches wanted, two allowed.
    folder, config, port = _setup(tmp_path, emulator, ["a", "b", "c"])
    inbox = Path(folder["inbox"])
    _drop(inbox, ["a/one.jpg", "c/two.jpg"], seed=0)
    d = _started(daemons, config, watches=2)
    assert d.saw("folder.degraded", folder="shop"), d.output()
    wait_until(lambda: _folder_up(port, "shop") == 0.5, 30, what="folder_up 0.5")
    # Files that arrive in the part inotify could not watch are found by polling.
    _drop(inbox, ["b/three.jpg", "c/four.jpg", "five.jpg"], seed=10)
    want = {"a/one.png", "c/two.png", "b/three.png", "c/four.png", "five.png"}
    wait_until(lambda: _outputs(folder) == want, 60, what=f"outputs {want}")
    assert d.proc.poll() is None
    assert _folder_up(port, "shop") == 0.5


def test_a_new_subfolder_beyond_the_watch_limit_turns_the_inbox_to_polling(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    # The inbox and `a/`: the two watches allowed, all taken.
    folder, config, port = _setup(tmp_path, emulator, ["a"])
    inbox = Path(folder["inbox"])
    d = _started(daemons, config, watches=2)
    wait_until(lambda: _folder_up(port, "shop") == 1, 30, what="folder_up 1")
    assert not d.saw("folder.degraded")
    _drop(inbox, ["b/one.jpg"], seed=0)  # `b/` cannot be watched
    wait_until(lambda: d.saw("folder.degraded", folder="shop"), 30, what="folder.degraded")
    wait_until(lambda: _folder_up(port, "shop") == 0.5, 30, what="folder_up 0.5")
    _drop(inbox, ["b/two.jpg", "b/deeper/three.jpg", "a/four.jpg"], seed=10)
    want = {"b/one.png", "b/two.png", "b/deeper/three.png", "a/four.png"}
    wait_until(lambda: _outputs(folder) == want, 60, what=f"outputs {want}")
    assert d.proc.poll() is None


def test_a_folder_moved_in_beyond_the_watch_limit_turns_the_inbox_to_polling(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    # The inbox and `a/` watched, one watch left: the moved-in `shoot/` and
    # `shoot/sub/` want two (watchdog 6 would not even try: bgsyncd does).
    folder, config, port = _setup(tmp_path, emulator, ["a"])
    inbox = Path(folder["inbox"])
    d = _started(daemons, config, watches=3)
    wait_until(lambda: _folder_up(port, "shop") == 1, 30, what="folder_up 1")
    outside = tmp_path / "outside"
    _drop(outside, ["shoot/one.jpg", "shoot/sub/two.jpg"], seed=0)
    (outside / "shoot").rename(inbox / "shoot")
    wait_until(lambda: d.saw("folder.degraded", folder="shop"), 30, what="folder.degraded")
    wait_until(lambda: _folder_up(port, "shop") == 0.5, 30, what="folder_up 0.5")
    _drop(inbox, ["shoot/three.jpg", "shoot/sub/four.jpg"], seed=10)
    want = {"shoot/one.png", "shoot/sub/two.png", "shoot/three.png", "shoot/sub/four.png"}
    wait_until(lambda: _outputs(folder) == want, 60, what=f"outputs {want}")
    assert d.proc.poll() is None
