"""The ingest thread: complete files found by the watcher go into the queue.

The watcher's threads hand each file to :meth:`Ingest.sink`; one thread takes
them in batches, one transaction a batch, and tells the daemon what it queued.
"""

from __future__ import annotations

import queue as stdqueue
import threading
from collections.abc import Callable

from bgsyncd.errors import QueueUnavailable
from bgsyncd.inbox.adoption import Adopter
from bgsyncd.logs import get_logger
from bgsyncd.ops.metrics import Recorder
from bgsyncd.storage.contract import Found, QueueError, Store

log = get_logger("bgsyncd.ingest")

INGEST_BATCH = 2000
HANDOVER_SIZE = 20_000


class Ingest:
    """Batches found files into the queue on its own thread."""

    def __init__(
        self,
        queue: Store,
        recorder: Recorder,
        on_queued: Callable[[list[Found]], None],
        stopping: threading.Event,
        *,
        adopter: Adopter | None = None,
        on_unavailable: Callable[[QueueUnavailable], None] = lambda exc: None,
    ) -> None:
        self.queue = queue
        self.adopter = adopter  # a new or lost queue: existing outputs are adopted first
        self._on_unavailable = on_unavailable
        self.metrics = recorder
        self._on_queued = on_queued
        self._stop = stopping
        self._found: stdqueue.Queue[Found | None] = stdqueue.Queue(maxsize=HANDOVER_SIZE)
        self._thread = threading.Thread(target=self._loop, name="bgsyncd-ingest", daemon=True)

    def start(self) -> None:
        """Start the ingest thread."""
        self._thread.start()

    def alive(self) -> bool:
        """The ingest thread is running."""
        return self._thread.is_alive()

    def busy(self) -> bool:
        """Files handed over and not yet in the queue."""
        return bool(self._found.unfinished_tasks)

    def stop(self, timeout: float = 10.0) -> None:
        """Queue what was handed over, then end the thread (after the watcher stopped)."""
        if self._thread.is_alive():
            self._found.put(None)
            self._thread.join(timeout=timeout)

    def sink(self, found: Found) -> None:
        """Hand a complete file to the ingest thread; give up once stopping.

        The hand-over queue is bounded; if the ingest thread died, a scan must
        not block forever (and with it the stop). A file dropped here is found
        again by the next start's scan.
        """
        while True:
            try:
                self._found.put(found, timeout=0.5)
                return
            except stdqueue.Full:
                if self._stop.is_set():
                    return

    def _loop(self) -> None:
        """Batch found files into the queue: one transaction per batch."""
        while True:
            item = self._found.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < INGEST_BATCH:
                try:
                    nxt = self._found.get_nowait()
                except stdqueue.Empty:
                    break
                if nxt is None:
                    self._found.put(None)
                    break
                batch.append(nxt)
            try:
                fresh = batch if self.adopter is None else self.adopter.adopt(batch)
                queued = self.queue.enqueue_many(fresh)
            except QueueUnavailable as exc:
                # Not queued: the rescan after the database answers finds them again.
                log.warning("queue.ingest_deferred", files=len(batch), error=str(exc))
                self._on_unavailable(exc)
                queued = []
            except QueueError:
                # The database refused (busy, full, read-only): the next scan finds them again.
                log.exception("queue.ingest_failed", files=len(batch))
                queued = []
            finally:
                for _ in batch:
                    self._found.task_done()
            for found in queued:
                self.metrics.file_discovered(found.folder)
                log.info("file.queued", folder=found.folder, path=found.relpath, size=found.size)
            if queued:
                self._on_queued(queued)
