"""A folder above a root swapped for a symlink: bgsyncd never goes outside (issue 15 item 1).

SPEC §4: the roots are opened once through a path that holds no symlink at
any level, and every later operation starts from that descriptor; a folder
above a root swapped for a symlink changes nothing bgsyncd touches (the root
is then a lost folder). Real daemons, real files, the emulator over loopback.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from bgsyncd.emulator import Emulator
from tests.support.daemons import DaemonProcess, start_daemon, status_json, write_config
from tests.support.emulated import IMAGE_PATHS
from tests.support.helpers import product_image, wait_until


def _sent(emulator: Emulator) -> list[str | None]:
    return [r.image_sha256 for r in emulator.requests() if r.path in IMAGE_PATHS]


def _holds_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """``condition`` stays true for ``seconds`` (checked often); fail the moment it is not."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert condition(), what
        time.sleep(0.05)
    assert condition(), what


def _swap_for_symlink(folder: Path, target: Path) -> Path:
    """Rename ``folder`` aside and put a symlink to ``target`` in its place; the aside path."""
    aside = folder.with_name(folder.name + ".aside")
    folder.rename(aside)
    folder.symlink_to(target)
    return aside


def test_an_inbox_whose_parent_is_swapped_for_a_symlink_never_reaches_outside(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    team = tmp_path / "in" / "team"
    inbox = team / "x"
    inbox.mkdir(parents=True)
    outside = tmp_path / "outside" / "team"
    (outside / "x").mkdir(parents=True)
    secret = outside / "x" / "secret.jpg"
    secret_bytes = product_image(70, 50)
    secret.write_bytes(secret_bytes)
    folder = {
        "name": "f",
        "inbox": str(inbox),
        "outbox": str(tmp_path / "out"),
        "quarantine": str(tmp_path / "quarantine"),
        "after_success": "delete",
    }
    config = write_config(
        tmp_path / "config.toml",
        base_url=emulator.url,
        folders=[folder],
        queue={"rescan_interval_seconds": 1},
    )
    daemon = start_daemon(daemons, config)
    (inbox / "first.jpg").write_bytes(product_image(60, 40))
    wait_until(lambda: status_json(config)["jobs"]["done"] == 1, 30, what="the first job done")
    assert len(_sent(emulator)) == 1

    aside = _swap_for_symlink(team, outside)
    wait_until(lambda: daemon.saw("folder.lost", folder="f"), 20, what="folder.lost")
    # Several root checks (every 2 s) and rescans (every 1 s) go by: the
    # folder stays lost, and the outside file is never queued, sent or deleted.
    secret_hash = hashlib.sha256(secret_bytes).hexdigest()

    def untouched() -> bool:
        return (
            secret.is_file()
            and secret.read_bytes() == secret_bytes
            and len(_sent(emulator)) == 1
            and secret_hash not in _sent(emulator)
            and not daemon.saw("folder.restored", folder="f")
        )

    _holds_for(untouched, 8, "the outside secret.jpg was reached")
    assert status_json(config)["jobs"]["done"] == 1
    assert daemon.proc.poll() is None

    # The real folder back: restored, scanned, and it works as before.
    team.unlink()
    aside.rename(team)
    wait_until(lambda: daemon.saw("folder.restored", folder="f"), 20, what="folder.restored")
    (inbox / "second.jpg").write_bytes(product_image(61, 40))
    wait_until(lambda: status_json(config)["jobs"]["done"] == 2, 30, what="the second job done")
    assert not (inbox / "second.jpg").exists()  # deleted after success, inside
    assert secret.read_bytes() == secret_bytes
    assert secret_hash not in _sent(emulator)
    assert daemon.stop() == 0


def test_an_outbox_whose_parent_is_swapped_for_a_symlink_is_never_written_through(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    team = tmp_path / "out" / "team"
    outbox = team / "x"
    outside = tmp_path / "outside" / "team"
    (outside / "x").mkdir(parents=True)
    victim = outside / "x" / "victim.png"
    victim.write_bytes(b"the victim's own file")
    folder = {
        "name": "f",
        "inbox": str(inbox),
        "outbox": str(outbox),
        "quarantine": str(tmp_path / "quarantine"),
    }
    config = write_config(
        tmp_path / "config.toml",
        base_url=emulator.url,
        folders=[folder],
        queue={"max_attempts": 2},
    )
    daemon = start_daemon(daemons, config)
    (inbox / "first.jpg").write_bytes(product_image(60, 40))
    wait_until((outbox / "first.png").is_file, 30, what="the first output")

    aside = _swap_for_symlink(team, outside)
    (inbox / "victim.jpg").write_bytes(product_image(62, 40))
    # Refused writes: retried, then the input is quarantined as output_refused.
    wait_until(
        lambda: (
            victim.read_bytes() != b"the victim's own file"
            or status_json(config)["jobs"].get("quarantined") == 1
        ),
        60,
        what="output_refused",
    )
    assert victim.read_bytes() == b"the victim's own file"
    assert sorted(p.name for p in (outside / "x").iterdir()) == ["victim.png"]
    assert sorted(os.listdir(outside)) == ["x"]
    sidecar = tmp_path / "quarantine" / "victim.jpg.error.json"
    assert '"output_refused"' in sidecar.read_text(encoding="utf-8")
    assert (tmp_path / "quarantine" / "victim.jpg").is_file()
    assert not (aside / "x" / "victim.png").exists()
    refused = [e for e in daemon.events() if "symlink" in str(e.get("error", ""))]
    assert refused, "the refusal is not logged clearly"

    # The real folder back: outputs go there again.
    team.unlink()
    aside.rename(team)
    (inbox / "third.jpg").write_bytes(product_image(63, 40))
    wait_until((outbox / "third.png").is_file, 30, what="the third output")
    assert victim.read_bytes() == b"the victim's own file"
    assert sorted(p.name for p in (outside / "x").iterdir()) == ["victim.png"]
    assert daemon.stop() == 0
