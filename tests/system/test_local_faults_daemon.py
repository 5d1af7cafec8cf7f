"""Local faults (SPEC §4): a full or read-only outbox pauses ``output_unwritable``
and a probe write lifts the pause by itself. Real tmpfs mounts (root)."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest

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
from tests.support.mounts import ENOSPC_TEXT, EROFS_TEXT, tmpfs


def _image_requests(emulator: Emulator) -> int:
    """Image requests the emulator answered 200: each took a credit."""
    return sum(1 for r in emulator.requests() if r.image_sha256 is not None and r.status == 200)


def _attempts(db: Path) -> dict[str, tuple[str, int]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT relpath, state, attempts FROM jobs").fetchall()
    finally:
        conn.close()
    return {relpath: (state, attempts) for relpath, state, attempts in rows}


@pytest.mark.parametrize("fault", ["full", "read_only"])
def test_unwritable_outbox_pauses_keeps_jobs_pending_and_a_probe_resumes_without_a_credit(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess], fault: str
) -> None:
    folder = make_folder(tmp_path, "products")
    inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
    db = tmp_path / "state" / "queue.sqlite3"
    config = write_config(
        tmp_path / "config.toml",
        base_url=emulator.url,
        folders=[folder],
        queue={"database": str(db)},
    )
    with tmpfs(outbox, "1m") as fs:
        daemon = start_daemon(daemons, config)
        (inbox / "first.jpg").write_bytes(product_image(64, 48))
        wait_until((outbox / "first.png").exists, 20, what="first output")
        if fault == "full":
            fs.fill()
            expected = ENOSPC_TEXT
        else:
            fs.readonly()
            expected = EROFS_TEXT
        names = [f"img{i}.jpg" for i in range(3)]
        for i, name in enumerate(names):
            (inbox / name).write_bytes(product_image(80 + 8 * i, 60))
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
        assert expected in json.dumps(paused), paused  # the errno text in the log
        assert str(outbox) in json.dumps(paused), paused  # and the folder
        wait_until(lambda: status_json(config)["paused"] == "output_unwritable", 15)
        # Nothing quarantined, no attempt counted, every job back to pending.
        jobs = _attempts(db)
        assert {name: jobs[name] for name in names} == dict.fromkeys(names, ("pending", 0))
        assert not Path(folder["quarantine"]).exists() or not any(
            Path(folder["quarantine"]).iterdir()
        )
        assert not any(e.get("event") == "job.quarantined" for e in daemon.events())
        # At most the first and those in flight when the write failed (3 at once):
        # each result is kept, so none of them is paid for twice below.
        assert _image_requests(emulator) <= 1 + len(names)

        if fault == "full":
            fs.free()
        else:
            fs.readwrite()
        daemon.signal(signal.SIGHUP)  # the probe runs at once (else within 30 s)
        wait_until(lambda: daemon.saw("output.writable"), 20, what="output.writable")
        wait_until(
            lambda: all((outbox / Path(name).with_suffix(".png")).exists() for name in names),
            30,
            what="every output",
        )
        assert daemon.saw("dispatch.resumed", after="output_unwritable")
        # The resume cost no credit: one request per distinct image, ever.
        assert _image_requests(emulator) == 1 + len(names)
        assert status_json(config)["paused"] is None
        assert daemon.stop() == 0


@pytest.mark.parametrize("what", ["key_file", "config", "folder"])
def test_unreadable_key_config_or_folder_messages_name_the_errno(tmp_path: Path, what: str) -> None:
    with tmpfs(tmp_path / "ro") as fs:
        (fs.path / "dir").mkdir()
        fs.readonly()
        if what == "key_file":
            loop = tmp_path / "key"
            loop.symlink_to(loop)  # root reads anything; a symlink loop it cannot
            config = _minimal_config(tmp_path, key_file=loop)
            result = run_cli("credits", "--config", str(config), env={"BGSYNCD_API_KEY": ""})
            expected = "[Errno 40] Too many levels of symbolic links"
        elif what == "config":
            result = run_cli("check-config", "--config", str(fs.path / "dir"))
            expected = "[Errno 21] Is a directory"
        else:
            # `once` creates missing folders: a read-only disk refuses.
            result = run_cli(
                "once", "--config", str(_minimal_config(tmp_path, outbox=fs.path / "new"))
            )
            expected = EROFS_TEXT
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr, result.stderr


def _minimal_config(tmp_path: Path, **extra: Path) -> Path:
    folder = make_folder(tmp_path, "products")
    api: dict[str, object] = {}
    if "key_file" in extra:
        api["key_file"] = str(extra["key_file"])
    if "outbox" in extra:
        folder["outbox"] = str(extra["outbox"])
    return write_config(
        tmp_path / "c.toml", base_url="http://127.0.0.1:9", folders=[folder], api=api
    )
