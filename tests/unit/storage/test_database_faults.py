"""Database faults (issue 9 item 12): a queue database that cannot be opened,
written, or that is deleted or replaced under a running daemon. Real SQLite
files on real tmpfs mounts (full, read-only); real daemon subprocesses."""

from __future__ import annotations

import os
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
)
from tests.support.emulated import image_requests
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
