"""The worker on its own: a real queue, real files, the emulator over HTTP."""

from __future__ import annotations

from pathlib import Path

from bgsyncd.cache import ResultCache
from bgsyncd.client import Client
from bgsyncd.config import FolderSettings
from bgsyncd.emulator import Emulator
from bgsyncd.metrics import Recorder
from bgsyncd.queue import Found, Queue
from bgsyncd.worker import Kind, Worker, WorkerConfig
from tests.conftest import TEST_KEY
from tests.helpers import product_image

IMAGE_PATH = "/v1.0/image-without-background"


def make_worker(tmp_path: Path, emu: Emulator, queue: Queue, **folder: object) -> Worker:
    settings = FolderSettings(
        name="f",
        inbox=tmp_path / "inbox",
        outbox=tmp_path / "outbox",
        quarantine=tmp_path / "quarantine",
        **folder,
    )
    client = Client(emu.url, TEST_KEY, 10)
    config = WorkerConfig(
        folders={"f": settings},
        max_upload_bytes=10 * 1024 * 1024,
        max_attempts=5,
        retry_base_seconds=0.01,
        retry_max_seconds=0.1,
    )
    # cache_max_megabytes = 0: only the outputs on disk can tell the job was done
    return Worker(queue, ResultCache(tmp_path / "cache", 0), Recorder(), config, lambda: client)


def test_a_recovered_job_whose_outputs_were_written_is_not_sent_again(
    tmp_path: Path, emulator: Emulator
) -> None:
    (tmp_path / "inbox").mkdir()
    src = tmp_path / "inbox" / "p.jpg"
    src.write_bytes(product_image())
    st = src.stat()
    queue = Queue(tmp_path / "q.sqlite3")
    worker = make_worker(tmp_path, emulator, queue, output="both")
    queue.enqueue_many([Found("f", "p.jpg", st.st_size, st.st_mtime_ns, st.st_ino)])
    job = queue.claim(60)
    assert job is not None
    assert worker.process(job).kind is Kind.DONE
    assert (tmp_path / "outbox" / "p.png").exists()
    assert (tmp_path / "outbox" / "p.mask.png").exists()
    sent = len([r for r in emulator.requests() if r.path == IMAGE_PATH])
    # A crash after the outputs were written, before the job was marked done:
    with queue._write() as conn:
        conn.execute("UPDATE jobs SET state = 'in_flight' WHERE id = ?", (job.id,))
    assert queue.recover() == 1
    again = queue.claim(60)
    assert again is not None and again.resend
    assert worker.process(again).kind is Kind.DONE
    assert len([r for r in emulator.requests() if r.path == IMAGE_PATH]) == sent
    done = queue.get(job.id)
    assert done is not None and done.state == "done"

    # New content at the same path: newer than its outputs, so it is sent.
    src.write_bytes(product_image(70, 50))
    st = src.stat()
    queue.enqueue_many([Found("f", "p.jpg", st.st_size, st.st_mtime_ns, st.st_ino)])
    with queue._write() as conn:
        conn.execute("UPDATE jobs SET resend = 1 WHERE id = ?", (job.id,))
    third = queue.claim(60)
    assert third is not None and third.resend
    assert worker.process(third).kind is Kind.DONE
    assert len([r for r in emulator.requests() if r.path == IMAGE_PATH]) == sent + 1
    queue.close()
