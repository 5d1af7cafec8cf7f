"""Database faults (issue 9 item 12): a queue database that cannot be opened,
written, or that is deleted or replaced under a running daemon. Real SQLite
files on real tmpfs mounts (full, read-only); real daemon subprocesses."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import pytest

from bgsyncd.emulator import Emulator
from bgsyncd.storage.sqlite.store import SqliteStore
from tests.support.daemons import (
    DaemonProcess,
    make_folder,
    run_cli,
    start_daemon,
    write_config,
)
from tests.support.helpers import product_image, wait_until
from tests.support.mounts import ENOSPC_TEXT, EROFS_TEXT, ext4, tmpfs

# -- real daemons -------------------------------------------------------------------------


def _config(tmp_path: Path, base_url: str, database: Path) -> Path:
    folder = make_folder(tmp_path, "products")
    return write_config(
        tmp_path / "config.toml",
        base_url=base_url,
        folders=[folder],
        queue={"database": str(database)},
    )


@pytest.mark.parametrize("command", ["run", "once"])
def test_daemon_with_its_database_folder_read_only_exits_1_with_one_line_naming_file_and_errno(
    tmp_path: Path, emulator: Emulator, command: str
) -> None:
    with tmpfs(tmp_path / "state") as fs:
        db = fs.path / "queue.sqlite3"
        config = _config(tmp_path, emulator.url, db)
        fs.readonly()
        result = run_cli(command, "--config", str(config))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("bgsyncd: ")]
    assert len(lines) == 1, result.stderr
    assert str(db) in lines[0] and EROFS_TEXT in lines[0]


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_daemon_notices_its_database_deleted_or_replaced_and_exits_1_for_a_restart(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess], how: str
) -> None:
    db = tmp_path / "state" / "queue.sqlite3"
    config = _config(tmp_path, emulator.url, db)
    daemon = start_daemon(daemons, config)
    lock = db.with_name(db.name + ".lock")
    for path in (db, lock, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        path.unlink(missing_ok=True)
    if how == "replaced":
        SqliteStore(tmp_path / "fresh.sqlite3").close()
        os.replace(tmp_path / "fresh.sqlite3", db)
    # Within a minute: the loop looks every few seconds.
    code = daemon.proc.wait(60)
    assert code == 1, daemon.output()
    assert daemon.saw("queue.lost", database=str(db), file=str(db), what=how)
    assert f"bgsyncd: the queue database file {db} was {how}" in daemon.output()
    assert "Traceback" not in daemon.output()


def test_daemon_notices_its_lock_deleted_and_exits_1(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    db = tmp_path / "state" / "queue.sqlite3"
    daemon = start_daemon(daemons, _config(tmp_path, emulator.url, db))
    lock = db.with_name(db.name + ".lock")
    lock.unlink()  # a second daemon could now take a fresh lock beside this one
    assert daemon.proc.wait(60) == 1, daemon.output()
    assert daemon.saw("queue.lost", file=str(lock), what="deleted")


def test_a_full_database_disk_while_running_pauses_queue_unavailable_and_resumes_losing_nothing(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    with tmpfs(tmp_path / "state", "16m") as fs:
        db = fs.path / "queue.sqlite3"
        config = _config(tmp_path, emulator.url, db)
        inbox, outbox = tmp_path / "products" / "inbox", tmp_path / "products" / "outbox"
        daemon = start_daemon(daemons, config)
        (inbox / "first.jpg").write_bytes(product_image(64, 48))
        wait_until((outbox / "first.png").exists, 20, what="first output")
        _empty_wal(db)  # so that the very next write needs room
        fs.fill()
        names = [f"{'n' * 150}-{i}.jpg" for i in range(40)]
        for i, name in enumerate(names):
            (inbox / name).write_bytes(product_image(64 + i, 48))
        wait_until(
            lambda: daemon.saw("dispatch.paused", reason="queue_unavailable"),
            30,
            what="dispatch.paused queue_unavailable",
        )
        paused = next(
            e
            for e in daemon.events()
            if e.get("event") == "dispatch.paused" and e.get("reason") == "queue_unavailable"
        )
        assert ENOSPC_TEXT in paused["error"] and str(db) in paused["error"], paused
        assert daemon.proc.poll() is None  # nothing crashed
        wait_until(lambda: daemon.saw("queue.ingest_deferred"), 10, what="ingest deferred")
        assert not any((outbox / Path(name).with_suffix(".png")).exists() for name in names)
        fs.free()
        wait_until(lambda: daemon.saw("queue.available"), 30, what="queue.available")
        wait_until(lambda: daemon.saw("dispatch.resumed", after="queue_unavailable"), 10)
        # Files found while it was down are found again, and processed once each.
        wait_until(
            lambda: all((outbox / Path(name).with_suffix(".png")).exists() for name in names),
            60,
            what="every output",
        )
        assert daemon.proc.poll() is None
        assert not any(e.get("event") == "daemon.crashed" for e in daemon.events())
        assert daemon.stop() == 0


def _empty_wal(db: Path) -> None:
    """Checkpoint the daemon's WAL and truncate it, from a connection of our own."""
    conn = sqlite3.connect(db)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
    finally:
        conn.close()


def test_a_running_daemon_whose_database_disk_goes_read_only_pauses_and_stops_cleanly(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    with ext4(tmp_path / "state") as fs:
        db = fs.path / "queue.sqlite3"
        config = _config(tmp_path, emulator.url, db)
        inbox, outbox = tmp_path / "products" / "inbox", tmp_path / "products" / "outbox"
        daemon = start_daemon(daemons, config)
        (inbox / "first.jpg").write_bytes(product_image(64, 48))
        wait_until((outbox / "first.png").exists, 20, what="first output")
        fs.fail()
        (inbox / "second.jpg").write_bytes(product_image(72, 48))
        wait_until(
            lambda: daemon.saw("dispatch.paused", reason="queue_unavailable"),
            30,
            what="dispatch.paused queue_unavailable",
        )
        paused = next(
            e
            for e in daemon.events()
            if e.get("event") == "dispatch.paused" and e.get("reason") == "queue_unavailable"
        )
        assert EROFS_TEXT in paused["error"] and str(db) in paused["error"], paused
        assert daemon.proc.poll() is None  # nothing crashed
        assert not (outbox / "second.png").exists()  # nothing sent without a record
        assert daemon.stop() == 0, daemon.output()
        assert "Traceback" not in daemon.output()


def test_a_reload_naming_another_database_is_not_taken_for_a_lost_one(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    db = tmp_path / "state" / "queue.sqlite3"
    config = _config(tmp_path, emulator.url, db)
    daemon = start_daemon(daemons, config)
    _config(tmp_path, emulator.url, tmp_path / "other" / "queue.sqlite3")
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: daemon.saw("config.restart_needed", key="queue.database"), 20)
    inbox, outbox = tmp_path / "products" / "inbox", tmp_path / "products" / "outbox"
    (inbox / "after.jpg").write_bytes(product_image(64, 48))
    wait_until((outbox / "after.png").exists, 20, what="an output after the reload")
    assert daemon.proc.poll() is None and not daemon.saw("queue.lost"), daemon.output()
    assert daemon.stop() == 0
