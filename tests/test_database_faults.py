"""Database faults (issue 9 item 12): a queue database that cannot be opened,
written, or that is deleted or replaced under a running daemon. Real SQLite
files on real tmpfs mounts (full, read-only); real daemon subprocesses."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import pytest

from bgsyncd.api.client import Client
from bgsyncd.emulator import Emulator
from bgsyncd.errors import QueueUnavailable
from bgsyncd.jobs.outcomes import Transition
from bgsyncd.storage.contract import Found, QueueError
from bgsyncd.storage.sqlite.request_log import SqliteRequestLog
from bgsyncd.storage.sqlite.store import SqliteStore
from tests.support.daemons import (
    TEST_KEY,
    DaemonProcess,
    make_folder,
    run_cli,
    start_daemon,
    write_config,
)
from tests.support.emulated import image_requests
from tests.support.helpers import product_image, wait_until
from tests.support.mounts import ENOSPC_TEXT, EROFS_TEXT, Tmpfs, ext4, tmpfs
from tests.support.workers import WorkerFactory, queue_one


def _batch(n: int, prefix: str = "a") -> list[Found]:
    # Long names: a batch that needs more room than a full disk has.
    return [Found("products", f"{prefix}/{'x' * 200}-{i}.jpg", 100, 1, i) for i in range(n)]


def _committed(db: Path) -> int:
    """Jobs another connection sees: what was really committed."""
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
    finally:
        conn.close()


# -- at start ---------------------------------------------------------------------------


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_queue_on_a_read_only_disk_at_start_names_the_file_and_the_errno(
    tmp_path: Path, existing: bool
) -> None:
    with tmpfs(tmp_path / "state") as fs:
        db = fs.path / "queue.sqlite3"
        if existing:
            SqliteStore(db).close()
        fs.readonly()
        with pytest.raises(QueueError) as caught:
            SqliteStore(db)
        message = str(caught.value)
        assert str(db) in message and EROFS_TEXT in message
        with pytest.raises(QueueError, match=r"\[Errno 30\] Read-only file system"):
            SqliteRequestLog(db)


# -- while running: a full disk ---------------------------------------------------------


def test_a_full_disk_makes_writes_queue_unavailable_with_enospc_and_loses_nothing_once_freed(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "state", "1m") as fs:
        db = fs.path / "queue.sqlite3"
        queue = SqliteStore(db)
        try:
            queue.enqueue_many(_batch(5, "before"))
            queue.check_writable()
            fs.fill()
            with pytest.raises(QueueUnavailable) as caught:
                queue.enqueue_many(_batch(300))
            assert str(db) in str(caught.value) and ENOSPC_TEXT in str(caught.value)
            with pytest.raises(QueueUnavailable, match=r"\[Errno 28\]"):
                queue.check_writable()
            assert queue.counts()["products"]["pending"] == 5  # reads still answer
            fs.free()
            queue.check_writable()  # it answers again
            # The failed commit did not leave a transaction open that would
            # swallow every later write: this batch is committed for good.
            assert len(queue.enqueue_many(_batch(300))) == 300
            assert _committed(db) == 305
        finally:
            queue.close()


def test_request_log_on_a_full_disk_fails_closed_with_queue_unavailable(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "state", "1m") as fs:
        db = fs.path / "queue.sqlite3"
        log = SqliteRequestLog(db)
        queue = SqliteStore(db)
        try:
            fs.fill()
            # Grow the WAL past what it had room for; the log's next record must not pass.
            with pytest.raises(QueueUnavailable):
                queue.enqueue_many(_batch(300))
            with pytest.raises(QueueUnavailable, match=r"\[Errno 28\]"):
                for i in range(5000):
                    log.record(float(i))
            fs.free()
            log.record(99_999.0)
            assert log.since(99_999.0) == [99_999.0]
        finally:
            log.close()
            queue.close()


# -- while running: deleted or replaced --------------------------------------------------


def test_lost_says_deleted_when_the_database_file_is_removed(tmp_path: Path) -> None:
    db = tmp_path / "queue.sqlite3"
    with SqliteStore(db) as queue:
        assert queue.lost() is None
        db.unlink()
        assert queue.lost() == "deleted"


def test_lost_says_replaced_when_another_file_takes_the_path(tmp_path: Path) -> None:
    db = tmp_path / "queue.sqlite3"
    with SqliteStore(db) as queue:
        SqliteStore(tmp_path / "fresh.sqlite3").close()
        os.replace(tmp_path / "fresh.sqlite3", db)
        assert queue.lost() == "replaced"


def test_lost_says_deleted_when_the_whole_state_folder_goes(tmp_path: Path) -> None:
    db = tmp_path / "state" / "queue.sqlite3"
    with SqliteStore(db) as queue:
        for name in os.listdir(db.parent):
            (db.parent / name).unlink()
        db.parent.rmdir()
        assert queue.lost() == "deleted"


def test_a_read_only_view_never_reports_lost_nor_writes_a_probe(tmp_path: Path) -> None:
    db = tmp_path / "queue.sqlite3"
    SqliteStore(db).close()
    with SqliteStore.open_readonly(db) as view:
        db.unlink()
        assert view.lost() is None


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


def test_a_job_whose_database_write_fails_counts_no_attempt_and_reaches_the_dispatcher(
    tmp_path: Path, emulator: Emulator, worker_factory: WorkerFactory
) -> None:
    (tmp_path / "inbox").mkdir()
    with tmpfs(tmp_path / "state", "16m") as fs:
        db = fs.path / "q.sqlite3"
        queue = SqliteStore(db)
        try:
            worker = worker_factory(tmp_path, emulator, queue)
            job = queue_one(tmp_path, queue)
            # An empty WAL: the next write needs room, and the disk has none.
            queue._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            fs.fill()
            with pytest.raises(QueueUnavailable, match=r"\[Errno 28\] No space left on device"):
                worker.process(job)  # the dispatcher catches it and pauses
            fs.free()
            # No attempt counted; still in flight, until the daemon gives it back.
            assert _job_row(db, job.id) == ("in_flight", 0)
            assert queue.recover() == 1
            again = queue.claim(60)
            assert again is not None and again.id == job.id and again.attempts == 0
            assert worker.process(again).transition is Transition.DONE
            assert (tmp_path / "outbox" / "p.png").exists()
        finally:
            queue.close()


def _empty_wal(db: Path) -> None:
    """Checkpoint the daemon's WAL and truncate it, from a connection of our own."""
    conn = sqlite3.connect(db)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
    finally:
        conn.close()


def _job_row(db: Path, job_id: int) -> tuple[str, int]:
    conn = sqlite3.connect(db)
    try:
        state, attempts = conn.execute(
            "SELECT state, attempts FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
    finally:
        conn.close()
    return str(state), int(attempts)


# -- while running: the disk goes read-only -------------------------------------------------


def test_a_disk_gone_read_only_under_the_queue_makes_writes_queue_unavailable_with_erofs(
    tmp_path: Path,
) -> None:
    with ext4(tmp_path / "state") as fs:
        db = fs.path / "queue.sqlite3"
        queue = SqliteStore(db)
        try:
            queue.enqueue_many(_batch(3, "before"))
            fs.fail()
            with pytest.raises(QueueUnavailable) as caught:
                queue.enqueue_many(_batch(3))
            # SQLite says "disk I/O error"; the probe finds what the kernel says.
            assert str(db) in str(caught.value) and EROFS_TEXT in str(caught.value)
            with pytest.raises(QueueUnavailable, match=r"\[Errno 30\]"):
                queue.check_writable()
            assert queue.counts()["products"]["pending"] == 3  # reads still answer
        finally:
            queue.close()


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


class _ThenFill(Client):
    """A real client; once the API has answered, the database's disk fills up."""

    def __init__(self, url: str, fs: Tmpfs) -> None:
        super().__init__(url, TEST_KEY, 10)
        self._fs = fs

    def alpha_channel(
        self, image: bytes, filename: str = "image", *, max_bytes: int | None = None
    ) -> bytes:
        answer = super().alpha_channel(image, filename, max_bytes=max_bytes)
        self._fs.fill()
        return answer

    def remove_background(
        self, image: bytes, filename: str = "image", *, max_bytes: int | None = None
    ) -> bytes:
        answer = super().remove_background(image, filename, max_bytes=max_bytes)
        self._fs.fill()
        return answer


def test_a_charged_job_whose_done_row_cannot_be_written_is_no_job_error_and_never_paid_twice(
    tmp_path: Path,
    emulator: Emulator,
    capfd: pytest.CaptureFixture[str],
    worker_factory: WorkerFactory,
) -> None:
    (tmp_path / "inbox").mkdir()
    with tmpfs(tmp_path / "state", "16m") as fs:
        db = fs.path / "q.sqlite3"
        queue = SqliteStore(db)
        client = _ThenFill(emulator.url, fs)
        try:
            worker = worker_factory(tmp_path, emulator, queue)  # the cache is off
            worker._client = lambda: client
            job = queue_one(tmp_path, queue)
            queue._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no room kept back
            capfd.readouterr()
            with pytest.raises(QueueUnavailable, match=r"\[Errno 28\]"):
                worker.process(job)
            # The database's fault, not the job's: no job.error, no traceback, nothing decided.
            logged = capfd.readouterr().err
            assert "job.error" not in logged and "Traceback" not in logged, logged
            assert (tmp_path / "outbox" / "p.png").exists()  # written before the row failed
            fs.free()
            assert _job_row(db, job.id) == ("in_flight", 0)
            assert queue.recover() == 1  # what the daemon does when the database answers
            again = queue.claim(60)
            assert again is not None and again.resend
            assert worker.process(again).transition is Transition.DONE
            assert len(image_requests(emulator)) == 1  # never paid twice
        finally:
            queue.close()
            client.close()


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
