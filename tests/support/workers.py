"""The worker and the dispatcher in process: a real queue, real files, a real client."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bgsyncd.api.client import Client
from bgsyncd.config.schema import FolderSettings
from bgsyncd.dispatch.credits import CreditGuard
from bgsyncd.dispatch.dispatcher import Dispatcher
from bgsyncd.dispatch.pacer import Pacer
from bgsyncd.emulator import Emulator
from bgsyncd.jobs.worker import Worker, WorkerConfig
from bgsyncd.ops.metrics import Recorder
from bgsyncd.storage.cache import ResultCache
from bgsyncd.storage.contract import Found, Job
from bgsyncd.storage.sqlite.store import SqliteStore
from tests.support.daemons import TEST_KEY
from tests.support.helpers import product_image, wait_until
from tests.support.pacing import MemoryRequestLog


class WorkerFactory(Protocol):
    """The ``worker_factory`` fixture: a worker on a client of ``emu`` it closes afterwards."""

    def __call__(
        self, tmp_path: Path, emu: Emulator, queue: SqliteStore, **folder: Any
    ) -> Worker: ...


def make_worker(
    tmp_path: Path,
    client: Client | Callable[[], Client],
    queue: SqliteStore,
    *,
    clock: Callable[[], float] | None = None,
    **folder: Any,
) -> Worker:
    """A worker for one folder "f" under ``tmp_path`` (inbox, outbox, quarantine, cache).

    ``client``: the client, or what the worker calls for one each time.
    """
    settings = FolderSettings(
        name="f",
        inbox=tmp_path / "inbox",
        outbox=tmp_path / "outbox",
        quarantine=tmp_path / "quarantine",
        **folder,
    )
    config = WorkerConfig(
        folders={"f": settings},
        max_upload_bytes=10 * 1024 * 1024,
        max_attempts=5,
        retry_base_seconds=0.01,
        retry_max_seconds=0.1,
    )
    # cache_max_megabytes = 0: only the outputs on disk can tell the job was done
    cache = ResultCache(tmp_path / "cache", 0)
    get_client = client if callable(client) else lambda: client
    if clock is None:
        return Worker(queue, cache, Recorder(), config, get_client)
    return Worker(queue, cache, Recorder(), config, get_client, clock)


def queue_one(tmp_path: Path, queue: SqliteStore, relpath: str = "p.jpg") -> Job:
    src = tmp_path / "inbox" / relpath
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(product_image(80, 60))
    st = src.stat()
    # Queued a while ago: a local verdict would be final at once.
    queue.enqueue_many([Found("f", relpath, st.st_size, st.st_mtime_ns, st.st_ino)])
    job = wait_until(lambda: queue.claim(60), what="a claimable job")
    return job


def make_dispatcher(
    worker_factory: WorkerFactory, tmp_path: Path, emu: Emulator, floor: int = 0, **pacer: Any
) -> tuple[Any, Any, Any]:
    (tmp_path / "inbox").mkdir()
    queue = SqliteStore(tmp_path / "q.sqlite3")
    worker = worker_factory(tmp_path, emu, queue)
    client = Client(emu.url, TEST_KEY, 10)
    d = Dispatcher(
        queue,
        worker,
        Pacer(1000, 60.0, MemoryRequestLog(), **pacer),
        CreditGuard(floor, 600),
        lambda: client,
        Recorder(),
        max_in_flight=2,
        lease_seconds=60,
    )
    return d, queue, client
