"""Hostile folders: symlink swaps mid-operation, 255-byte names, a lost queue (issue 9).

Real files, real SQLite, the emulator over loopback HTTP, real daemons; the
swaps are real ``renameat2(RENAME_EXCHANGE)`` calls in a tight loop.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from bgsyncd.emulator import Emulator
from bgsyncd.storage.sqlite.store import SqliteStore
from tests.support.daemons import (
    DaemonProcess,
    make_folder,
    run_cli,
    start_daemon,
    status_json,
    write_config,
)
from tests.support.emulated import IMAGE_PATHS
from tests.support.helpers import product_image, wait_until
from tests.support.jobs import find_job

# Issue 9 item 8: a 255-byte name (NAME_MAX is bytes)


def _visible(folder: Path) -> list[str]:
    """Names in ``folder`` but temp files (hidden) that are still being written."""
    return [n for n in os.listdir(folder) if not n.startswith(".")] if folder.is_dir() else []


def _tag(relpath: str) -> str:
    return "~" + hashlib.sha256(relpath.encode()).hexdigest()[:8]


def test_a_255_byte_name_gets_its_outputs_and_its_quarantine_sidecar(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    folder = make_folder(tmp_path, "f", output="both", format="webp")
    inbox, outbox, quarantine = (
        Path(folder["inbox"]),
        Path(folder["outbox"]),
        Path(folder["quarantine"]),
    )
    good = "a" + "é" * 125 + ".jpg"  # 255 bytes: `<stem>.webp` and `.mask.png` would not fit
    bad = "b" + "é" * 125 + ".png"
    assert len(good.encode()) == len(bad.encode()) == 255
    (inbox / "sub").mkdir()
    (inbox / "sub" / good).write_bytes(product_image())
    (inbox / "sub" / bad).write_bytes(b"not an image at all")
    config = write_config(tmp_path / "config.toml", base_url=emulator.url, folders=[folder])
    start_daemon(daemons, config)

    wait_until(lambda: len(_visible(outbox / "sub")) == 2, 30, what="two outputs")
    wait_until(lambda: len(_visible(quarantine / "sub")) == 2, 30, what="quarantine")
    wait_until(lambda: status_json(config)["jobs"]["done"] == 1, 30, what="the job done")
    stem = "a" + "é" * 125
    names = sorted(p.name for p in (outbox / "sub").iterdir())  # no temp file left either
    tag = _tag(f"sub/{good}")
    assert all(len(n.encode()) <= 255 for n in names), names
    cut = [n for n in names if n.endswith(tag + ".webp")]
    assert len(cut) == 1, names
    base = cut[0][: -len(tag + ".webp")]
    assert stem.startswith(base) and len(base.encode()) >= 200
    assert names == sorted([cut[0], base + tag + ".mask.png"])
    # One request, no retries: the names were right the first time.
    assert len([r for r in emulator.requests() if r.path in IMAGE_PATHS]) == 1

    quarantined = sorted(p.name for p in (quarantine / "sub").iterdir())
    assert bad in quarantined
    [sidecar] = [n for n in quarantined if n != bad]
    assert sidecar.endswith(_tag(f"sub/{bad}") + ".error.json") and len(sidecar.encode()) <= 255
    assert bad.startswith(sidecar[: -len(_tag(bad) + ".error.json")])
    body = json.loads((quarantine / "sub" / sidecar).read_text(encoding="utf-8"))
    assert body["path"] == f"sub/{bad}" and body["reason"] == "unsupported_media"
    assert not (inbox / "sub" / bad).exists()

    # `retry` finds it, and its shortened sidecar, and puts it back.
    assert daemons[0].stop() == 0
    result = run_cli("retry", "--all", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert (inbox / "sub" / bad).read_bytes() == b"not an image at all"
    assert list((quarantine / "sub").iterdir()) == []


# Issue 9 item 12, third clause: a new database over an inbox whose outputs exist


def test_a_new_queue_adopts_existing_outputs_without_a_request(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    folder = make_folder(tmp_path, "f", output="both")
    inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
    (inbox / "d").mkdir()
    for i in range(3):
        (inbox / "d" / f"p{i}.jpg").write_bytes(product_image(60 + i, 40))
    config = write_config(tmp_path / "config.toml", base_url=emulator.url, folders=[folder])
    first = start_daemon(daemons, config)
    wait_until(lambda: status_json(config)["jobs"]["done"] == 3, 30, what="three done")
    assert first.stop() == 0
    sent = len([r for r in emulator.requests() if r.path in IMAGE_PATHS])
    assert sent == 3

    # The queue is lost; one input is newer than its outputs (changed since).
    database = tmp_path / "state" / "queue.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    changed = inbox / "d" / "p2.jpg"
    changed.write_bytes(product_image(90, 40))
    later = (outbox / "d" / "p2.png").stat().st_mtime_ns + 1_000_000_000
    os.utime(changed, ns=(later, later))
    # after_success is not applied to adopted inputs, whatever it says now.
    write_config(
        tmp_path / "config.toml",
        base_url=emulator.url,
        folders=[{**folder, "after_success": "delete"}],
    )
    second = start_daemon(daemons, config)
    wait_until(lambda: status_json(config)["jobs"]["done"] == 3, 30, what="three done again")
    adopted = sorted(e["path"] for e in second.events() if e.get("event") == "job.adopted")
    assert adopted == ["d/p0.jpg", "d/p1.jpg"]
    assert len([r for r in emulator.requests() if r.path in IMAGE_PATHS]) == sent + 1
    assert (inbox / "d" / "p0.jpg").exists() and (inbox / "d" / "p1.jpg").exists()
    assert not changed.exists()  # processed normally, so deleted after success
    # The claims were recorded: the names stay the adopted inputs' own.
    queue = SqliteStore.open_readonly(database)
    try:
        job = find_job(queue, "f", "d/p0.jpg")
        assert job is not None and job.state == "done"
        assert sorted(queue.claimed_outputs(job.id)) == ["d/p0.mask.png", "d/p0.png"]
    finally:
        queue.close()
    assert second.stop() == 0
