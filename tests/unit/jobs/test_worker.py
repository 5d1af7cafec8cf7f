"""The worker on its own: a real queue, real files, the emulator over HTTP."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from bgsyncd.emulator import Emulator
from bgsyncd.files import outputs
from bgsyncd.jobs.outcomes import Transition
from bgsyncd.storage.contract import Found, Job
from bgsyncd.storage.sqlite.store import SqliteStore
from tests.support.emulated import IMAGE_PATHS, image_requests
from tests.support.helpers import product_image, wait_until
from tests.support.jobs import get_job
from tests.support.mounts import tmpfs
from tests.support.workers import WorkerFactory, queue_one


def test_a_recovered_job_whose_outputs_were_written_is_not_sent_again(
    tmp_path: Path, emulator: Emulator, worker_factory: WorkerFactory
) -> None:
    (tmp_path / "inbox").mkdir()
    src = tmp_path / "inbox" / "p.jpg"
    src.write_bytes(product_image())
    st = src.stat()
    queue = SqliteStore(tmp_path / "q.sqlite3")
    worker = worker_factory(tmp_path, emulator, queue, output="both")
    queue.enqueue_many([Found("f", "p.jpg", st.st_size, st.st_mtime_ns, st.st_ino)])
    job = queue.claim(60)
    assert job is not None
    assert worker.process(job).transition is Transition.DONE
    assert (tmp_path / "outbox" / "p.png").exists()
    assert (tmp_path / "outbox" / "p.mask.png").exists()
    sent = len([r for r in emulator.requests() if r.path in IMAGE_PATHS])
    # A crash after the outputs were written, before the job was marked done:
    with queue._write() as conn:
        conn.execute("UPDATE jobs SET state = 'in_flight' WHERE id = ?", (job.id,))
    assert queue.recover() == 1
    again = queue.claim(60)
    assert again is not None and again.resend
    assert worker.process(again).transition is Transition.DONE
    assert len([r for r in emulator.requests() if r.path in IMAGE_PATHS]) == sent
    done = get_job(queue, job.id)
    assert done is not None and done.state == "done"

    # New content at the same path: newer than its outputs, so it is sent.
    src.write_bytes(product_image(70, 50))
    st = src.stat()
    queue.enqueue_many([Found("f", "p.jpg", st.st_size, st.st_mtime_ns, st.st_ino)])
    with queue._write() as conn:
        conn.execute("UPDATE jobs SET resend = 1 WHERE id = ?", (job.id,))
    third = queue.claim(60)
    assert third is not None and third.resend
    assert worker.process(third).transition is Transition.DONE
    assert len([r for r in emulator.requests() if r.path in IMAGE_PATHS]) == sent + 1
    queue.close()


# -- local faults and refused writes (SPEC §4): the worker side ---------------------------------


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_an_unwritable_outbox_pauses_counts_nothing_and_the_resume_costs_no_credit(
    tmp_path: Path, emulator: Emulator, fault: str, worker_factory: WorkerFactory
) -> None:
    (tmp_path / "inbox").mkdir()
    queue = SqliteStore(tmp_path / "q.sqlite3")
    with tmpfs(tmp_path / "outbox", "256k") as fs:
        outbox = fs.path
        worker = worker_factory(tmp_path, emulator, queue)  # cache off: kept in memory
        if fault == "full":
            fs.fill()
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(outbox)], check=True)
        job = queue_one(tmp_path, queue)
        result = worker.process(job)
        expected = (Transition.RELEASE, "output_unwritable", True)
        assert (result.transition, result.pause, result.charged) == expected
        code = errno.ENOSPC if fault == "full" else errno.EROFS
        assert f"[Errno {code}]" in str(result.pause_context["error"])
        assert result.pause_context["folder_path"] == str(outbox)
        after = get_job(queue, job.id)
        assert after is not None and (after.state, after.attempts) == ("pending", 0)
        assert not (tmp_path / "quarantine").exists()
        assert (tmp_path / "inbox" / "p.jpg").exists()
        assert len(image_requests(emulator)) == 1
        if fault == "full":
            fs.free()
        else:
            subprocess.run(["mount", "-o", "remount,rw", str(outbox)], check=True)
        again = queue.claim(60)
        assert again is not None and not again.resend
        assert worker.process(again).transition is Transition.DONE
        assert (outbox / "p.png").exists()
        assert len(image_requests(emulator)) == 1  # the kept result: no second credit
    queue.close()


@pytest.mark.parametrize("swap", ["file", "symlink"])
def test_a_refused_output_folder_is_retried_without_resending_then_output_refused(
    tmp_path: Path, emulator: Emulator, swap: str, worker_factory: WorkerFactory
) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "outbox").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    if swap == "file":
        (tmp_path / "outbox" / "sub").write_bytes(b"a file where a folder should be")
    else:
        (tmp_path / "outbox" / "sub").symlink_to(outside, target_is_directory=True)
    # fsops refuses a symlink where a folder should be with ENOTDIR or ELOOP
    refused = [f"[Errno {c}] {os.strerror(c)}" for c in (errno.ENOTDIR, errno.ELOOP)]
    queue = SqliteStore(tmp_path / "q.sqlite3")
    worker = worker_factory(tmp_path, emulator, queue)  # cache off: kept in memory
    job = queue_one(tmp_path, queue, "sub/deep/p.jpg")
    for attempt in range(1, 5):
        result = worker.process(job)
        assert result.transition is Transition.RETRY
        now = get_job(queue, job.id)
        assert now is not None and now.attempts == attempt and not now.resend
        assert now.last_error is not None and any(r in now.last_error for r in refused)
        job = wait_until(lambda: queue.claim(60), what="the retry")
    result = worker.process(job)
    assert (result.transition, result.reason) == (Transition.QUARANTINE, "output_refused")
    assert len(image_requests(emulator)) == 1  # one credit, however many retries
    sidecar = json.loads(
        (tmp_path / "quarantine" / "sub" / "deep" / "p.jpg.error.json").read_text()
    )
    assert sidecar["reason"] == "output_refused" and sidecar["attempts"] == 5
    assert any(r in sidecar["message"] for r in refused)
    assert list(outside.iterdir()) == []  # nothing written through the symlink
    queue.close()


def _queued(tmp_path: Path, queue: SqliteStore, name: str, data: bytes) -> Job:
    (tmp_path / "inbox").mkdir(exist_ok=True)
    src = tmp_path / "inbox" / name
    src.write_bytes(data)
    st = src.stat()
    queue.enqueue_many([Found("f", name, st.st_size, st.st_mtime_ns, st.st_ino)])
    job = queue.claim(60)
    assert job is not None
    return job


def test_a_queued_file_emptied_before_it_is_read_is_left_alone(
    tmp_path: Path, emulator: Emulator, worker_factory: WorkerFactory
) -> None:
    """Truncated to zero bytes (a placeholder again): the job goes, the file stays."""
    queue = SqliteStore(tmp_path / "q.sqlite3")
    worker = worker_factory(tmp_path, emulator, queue)
    job = _queued(tmp_path, queue, "p.jpg", product_image())
    (tmp_path / "inbox" / "p.jpg").write_bytes(b"")
    assert worker.process(job).transition is Transition.FORGET
    assert (tmp_path / "inbox" / "p.jpg").exists()
    assert queue.counts() == {}
    assert not (tmp_path / "quarantine").exists() or not list((tmp_path / "quarantine").iterdir())


def test_a_file_rewritten_while_judged_is_queued_again_not_quarantined(
    tmp_path: Path, emulator: Emulator, worker_factory: WorkerFactory
) -> None:
    """The verdict was on the old bytes: the new version gets its own turn."""
    queue = SqliteStore(tmp_path / "q.sqlite3")
    worker = worker_factory(tmp_path, emulator, queue)
    worker.config = dataclasses.replace(worker.config, settle_seconds=0.0)  # verdicts final
    job = _queued(tmp_path, queue, "p.jpg", b"not an image yet")
    src = tmp_path / "inbox" / "p.jpg"
    # Between the verdict and the move, a writer rewrites the file in place.
    real_quarantine = worker._applier.quarantine

    def rewrite_first(*args: object, **kwargs: object) -> object:
        src.write_bytes(product_image())
        return real_quarantine(*args, **kwargs)  # type: ignore[arg-type]

    worker._applier.quarantine = rewrite_first  # type: ignore[method-assign,assignment]
    result = worker.process(job)
    assert result.transition is not Transition.QUARANTINE
    assert src.read_bytes() == product_image()
    again = queue.claim(60)
    assert again is not None and again.size == len(product_image()) and again.attempts == 0
    worker._applier.quarantine = real_quarantine  # type: ignore[method-assign]
    assert worker.process(again).transition is Transition.DONE


def test_a_file_rewritten_while_it_is_moved_to_the_quarantine_is_queued_again(
    tmp_path: Path,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    worker_factory: WorkerFactory,
) -> None:
    """The writer's moment falls inside the move (after the version check): the
    file stays in the inbox, nothing is left in the quarantine, and the new
    version gets its own turn (the fuzz test caught an image quarantined so)."""
    queue = SqliteStore(tmp_path / "q.sqlite3")
    worker = worker_factory(tmp_path, emulator, queue)
    worker.config = dataclasses.replace(worker.config, settle_seconds=0.0)  # verdicts final
    job = _queued(tmp_path, queue, "p.jpg", b"not an image yet")
    src = tmp_path / "inbox" / "p.jpg"
    real_write_at = outputs.write_at

    def rewrite_meanwhile(dir_fd: int, name: str, data: bytes) -> None:
        with open(src, "r+b") as fh:  # in place: the same inode, new bytes
            fh.write(product_image())
        real_write_at(dir_fd, name, data)

    monkeypatch.setattr(outputs, "write_at", rewrite_meanwhile)
    result = worker.process(job)
    monkeypatch.undo()
    assert result.transition is not Transition.QUARANTINE
    assert src.read_bytes() == product_image()
    quarantine = tmp_path / "quarantine"
    assert not quarantine.exists() or not [p for p in quarantine.rglob("*") if p.is_file()]
    again = queue.claim(60)
    assert again is not None and again.size == len(product_image()) and again.attempts == 0
    assert worker.process(again).transition is Transition.DONE


def test_a_file_rewritten_just_before_its_deletion_after_success_stays_and_is_queued_again(
    tmp_path: Path,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    worker_factory: WorkerFactory,
) -> None:
    """``after_success = "delete"``: a writer's new version landed after the daemon
    checked the version it processed, before the name went. Deleting it would lose
    bytes nobody processed; it stays and gets its own turn."""
    queue = SqliteStore(tmp_path / "q.sqlite3")
    worker = worker_factory(tmp_path, emulator, queue, after_success="delete")
    first = product_image()
    job = _queued(tmp_path, queue, "p.jpg", first)
    src = tmp_path / "inbox" / "p.jpg"
    newer = product_image(40, 30)
    assert newer != first
    real_rename, real_unlink = os.rename, os.unlink
    wrote: list[bool] = []

    def rewrite_first(name: object) -> None:
        if name == "p.jpg" and not wrote:
            wrote.append(True)
            with open(src, "r+b") as fh:  # in place: the same inode, new bytes
                fh.write(newer)
                fh.truncate()

    def rename(name: object, *args: object, **kwargs: object) -> None:
        rewrite_first(name)
        real_rename(name, *args, **kwargs)  # type: ignore[arg-type]

    def unlink(name: object, *args: object, **kwargs: object) -> None:
        rewrite_first(name)
        real_unlink(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "unlink", unlink)
    assert worker.process(job).transition is Transition.DONE
    monkeypatch.undo()
    assert wrote
    assert src.read_bytes() == newer
    again = queue.claim(60)
    assert again is not None and again.size == len(newer) and again.attempts == 0
    assert worker.process(again).transition is Transition.DONE
    assert not src.exists()  # this version was processed: now it goes


@pytest.mark.parametrize("after_success", ["keep", "delete"])
def test_the_version_processed_is_the_one_the_queue_knows(
    tmp_path: Path, emulator: Emulator, after_success: str, worker_factory: WorkerFactory
) -> None:
    """Rewritten between queueing and reading: the version read is the one done. Its
    own late find (the watcher settles it after the worker) is nothing new: not a
    second request (keep), not a job forgotten as vanished after the input was
    deleted (delete; the fuzz test saw that as a path never queued)."""
    queue = SqliteStore(tmp_path / "q.sqlite3")
    worker = worker_factory(tmp_path, emulator, queue, after_success=after_success)
    job = _queued(tmp_path, queue, "p.jpg", b"a first, partial version")
    src = tmp_path / "inbox" / "p.jpg"
    with open(src, "r+b") as fh:  # in place, before the worker reads it
        fh.write(product_image())
    st = src.stat()
    assert worker.process(job).transition is Transition.DONE
    assert src.exists() == (after_success == "keep")
    late = Found("f", "p.jpg", st.st_size, st.st_mtime_ns, st.st_ino)
    assert queue.is_unchanged("f", "p.jpg", st.st_size, st.st_mtime_ns, st.st_ino)
    assert queue.enqueue_many([late]) == []
    assert queue.claim(60) is None


def test_a_refused_rendition_folder_is_retried_without_resending_then_output_refused(
    tmp_path: Path, emulator: Emulator, worker_factory: WorkerFactory
) -> None:
    # SPEC §9: a rendition that cannot be written is a refused write like any output.
    (tmp_path / "inbox").mkdir()
    rendition = tmp_path / "rendition"
    rendition.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (rendition / "sub").symlink_to(outside, target_is_directory=True)
    queue = SqliteStore(tmp_path / "q.sqlite3")
    worker = worker_factory(
        tmp_path, emulator, queue, rendition=[{"outbox": rendition, "format": "webp"}]
    )
    job = queue_one(tmp_path, queue, "sub/p.jpg")
    for attempt in range(1, 5):
        result = worker.process(job)
        assert result.transition is Transition.RETRY
        now = get_job(queue, job.id)
        assert now is not None and now.attempts == attempt and not now.resend
        job = wait_until(lambda: queue.claim(60), what="the retry")
    result = worker.process(job)
    assert (result.transition, result.reason) == (Transition.QUARANTINE, "output_refused")
    assert len(image_requests(emulator)) == 1  # one credit, however many retries
    assert list(outside.iterdir()) == []  # nothing written through the symlink
    assert (tmp_path / "quarantine" / "sub" / "p.jpg").exists()
    queue.close()
