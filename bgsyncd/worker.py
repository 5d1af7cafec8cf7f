"""Processing one claimed job: from the input file to its outputs.

``Worker.process`` never raises for a bad file or a failed request: every
outcome becomes a queue transition (done, quarantined, retry later, released)
and a ``Result`` that tells the dispatcher what it means for the account.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bgsyncd import imaging, outputs
from bgsyncd.backoff import compute_backoff
from bgsyncd.cache import ResultCache
from bgsyncd.client import Client
from bgsyncd.config import FolderSettings
from bgsyncd.errors import (
    AccountError,
    MalformedResponse,
    PermanentFileError,
    RateLimited,
    Stopped,
    TransientError,
)
from bgsyncd.inputs import Signature, read_input, signature_of
from bgsyncd.logs import get_logger
from bgsyncd.metrics import Recorder
from bgsyncd.queue import Found, Job, Queue

log = get_logger("bgsyncd.worker")

# A file this large is refused before it is read into memory, whatever `oversize` says.
HARD_SIZE_LIMIT = 256 * 1024 * 1024


class Kind(enum.Enum):
    """What became of a job, as far as the dispatcher cares."""

    DONE = "done"  # outputs written (from the API or the cache)
    QUARANTINED = "quarantined"
    RETRY = "retry"  # transient failure, retried later
    VANISHED = "vanished"  # the input disappeared before it was processed
    PAUSED = "paused"  # account-wide problem: the job went back to the queue
    RATE_LIMITED = "rate_limited"  # 429: the job went back to the queue
    RELEASED = "released"  # shutting down: the job went back to the queue


@dataclass(frozen=True)
class Result:
    """The outcome of one job; ``charged`` when a credit was (or may have been) spent."""

    kind: Kind
    charged: bool = False
    reason: str | None = None
    retry_after: float | None = None
    pause: str | None = None  # dispatch pauses for this reason
    pause_context: Mapping[str, object] = field(default_factory=dict)  # logged with the pause


@dataclass(frozen=True)
class WorkerConfig:
    """The parts of the settings the worker uses (replaced on reload)."""

    folders: Mapping[str, FolderSettings]
    max_upload_bytes: int
    max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float


class _Quarantine(Exception):
    """Internal: stop processing and quarantine the input."""

    def __init__(self, reason: str, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.http_status = http_status


class Worker:
    """Turns a claimed job into outputs; safe to call from several threads."""

    def __init__(
        self,
        queue: Queue,
        cache: ResultCache,
        recorder: Recorder,
        config: WorkerConfig,
        client: Callable[[], Client],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._cache = cache
        self._recorder = recorder
        self.config = config
        self._client = client
        self._clock = clock
        self._lock = threading.Lock()
        self._busy: dict[str, threading.Event] = {}

    def process(self, job: Job) -> Result:
        """Process ``job`` (claimed, in flight) to one of the outcomes of ``Kind``."""
        folder = self.config.folders.get(job.folder)
        if folder is None:
            # The folder was removed by a reload: leave the job for a later configuration.
            self._queue.release(job.id)
            return Result(Kind.RELEASED)
        bound = log.bind(folder=job.folder, path=job.relpath, job=job.id)
        try:
            return self._process(job, folder, bound)
        except _Quarantine as q:
            return self._quarantine(job, folder, q.reason, q.message, q.http_status, bound)
        except Exception as exc:  # a bug must not take the daemon down, nor loop forever
            bound.exception("job.error", error=type(exc).__name__)
            return self._retry(job, folder, f"internal error: {type(exc).__name__}", None, bound)

    def _process(self, job: Job, folder: FolderSettings, bound: Any) -> Result:
        src = folder.inbox / job.relpath
        read = read_input(folder.inbox, job.relpath, HARD_SIZE_LIMIT)
        if read is None:
            self._queue.forget(job.id)
            bound.info("file.vanished")
            return Result(Kind.VANISHED)
        data, sig = read
        if data is None:
            raise _Quarantine("too_large", f"{sig[0]} bytes is over the hard limit")
        if imaging.sniff(data[: imaging.SNIFF_BYTES]) is None:
            raise _Quarantine("unsupported_media", "not a JPEG, PNG, WebP, TIFF, BMP or GIF")
        try:
            imaging.inspect(data)
        except imaging.CorruptImage as exc:
            raise _Quarantine("corrupt_image", str(exc)) from None
        sha = hashlib.sha256(data).hexdigest()
        self._queue.set_sha256(job.id, sha)
        with self._same_content(sha):
            return self._process_content(job, folder, data, sig, sha, src, bound)

    @contextlib.contextmanager
    def _same_content(self, sha: str) -> Iterator[None]:
        """Let one job at a time process a given content; the others wait for it.

        Two names with the same bytes dropped together would otherwise both be
        sent before either result is cached: the second waits, then finds the
        first one's result in the cache and spends no credit.
        """
        while True:
            with self._lock:
                busy = self._busy.get(sha)
                if busy is None:
                    self._busy[sha] = threading.Event()
                    break
            busy.wait()
        try:
            yield
        finally:
            with self._lock:
                self._busy.pop(sha).set()

    def _process_content(
        self,
        job: Job,
        folder: FolderSettings,
        data: bytes,
        sig: Signature,
        sha: str,
        src: Path,
        bound: Any,
    ) -> Result:
        cached = self._cache.get(sha)
        if cached is not None:
            self._finish(job, folder, sig, cached, src, bound)
            self._recorder.job_finished(job.folder, "cached", self._clock() - job.queued_at)
            bound.info("job.done", source="cache")
            return Result(Kind.DONE)
        oversize = len(data) > self.config.max_upload_bytes
        if oversize and folder.oversize == "quarantine":
            raise _Quarantine("too_large", f"{len(data)} bytes is over api.max_upload_bytes", None)
        if job.resend and self._outputs_already_written(job, folder, sig):
            # A crash came after the outputs were written and before the job was
            # marked done: they are there and newer than the input. Never send
            # such a job again (the cache usually answers first; not when it is
            # off or the entry was evicted).
            self._queue.complete(job.id, self._queue.claimed_outputs(job.id))
            self._after_success(job, folder, sig, src, bound)
            self._recorder.job_finished(job.folder, "cached", self._clock() - job.queued_at)
            bound.info("job.done", source="outputs already written")
            return Result(Kind.DONE)
        if job.resend:
            self._recorder.resend()
            bound.warning("job.resend", note="earlier outcome unknown; may cost a second credit")
        upload = data
        if oversize:
            try:
                upload = imaging.shrink_to_fit(data, self.config.max_upload_bytes)
            except ValueError as exc:
                raise _Quarantine("too_large", f"cannot shrink below the limit: {exc}") from None
        try:
            if oversize:
                answer = self._client().alpha_channel(upload, filename=src.name)
            else:
                answer = self._client().remove_background(upload, filename=src.name)
        except Stopped:
            self._queue.release(job.id)
            return Result(Kind.RELEASED)
        except PermanentFileError as exc:
            raise _Quarantine(exc.reason, exc.message, exc.status) from None
        except AccountError as exc:
            self._queue.release(job.id)
            return Result(Kind.PAUSED, reason=exc.reason, pause=exc.reason)
        except RateLimited as exc:
            self._queue.release(job.id)
            self._recorder.rate_limited()
            bound.warning("api.rate_limited", retry_after=exc.retry_after)
            return Result(Kind.RATE_LIMITED, retry_after=exc.retry_after)
        except MalformedResponse as exc:
            # Answered 200: the credit is spent, and sending again spends another.
            bound.warning("api.malformed", error=exc.message)
            return self._retry(job, folder, exc.message, exc.status, bound, charged=True)
        except TransientError as exc:
            if exc.outcome_unknown:
                bound.warning("api.outcome_unknown", error=exc.message)
            return self._retry(job, folder, exc.message, exc.status, bound, exc.outcome_unknown)
        # From here on the credit is spent: whatever fails, the local count knows.
        try:
            cutout = imaging.compose(data, answer, result_is_alpha=oversize)
        except imaging.CorruptImage as exc:
            return self._retry(job, folder, f"unusable result: {exc}", None, bound, charged=True)
        self._cache.put(sha, cutout)
        try:
            self._finish(job, folder, sig, cutout, src, bound)
        except Exception as exc:
            # The result is cached: the retry costs no credit, so it is no resend.
            bound.exception("job.error", error=type(exc).__name__)
            message = f"writing the outputs failed: {type(exc).__name__}"
            return self._retry(job, folder, message, None, bound, charged=True, resend=False)
        self._recorder.job_finished(job.folder, "success", self._clock() - job.queued_at)
        bound.info("job.done", source="api")
        return Result(Kind.DONE, charged=True)

    def _finish(
        self,
        job: Job,
        folder: FolderSettings,
        sig: Signature,
        cutout: bytes,
        src: Path,
        bound: Any,
    ) -> None:
        """Write the outputs, mark the job done, then deal with the input.

        If the input changed after it was read (a writer came back), it is
        neither deleted nor moved but queued again: its new content must not
        be lost, and it gets its own turn.
        """
        written = self._write_outputs(job, folder, cutout)
        self._queue.complete(job.id, written)
        self._after_success(job, folder, sig, src, bound)

    def _after_success(
        self, job: Job, folder: FolderSettings, sig: Signature, src: Path, bound: Any
    ) -> None:
        """Keep, delete or move the input, once its outputs are durable."""
        now = signature_of(folder.inbox, job.relpath)
        if now != sig:
            # Changed (queued again), gone, or its path now leads through a
            # symlink: never delete or move it.
            if now is not None:
                size, mtime_ns, inode = now
                self._queue.enqueue_many([Found(job.folder, job.relpath, size, mtime_ns, inode)])
                bound.info("file.changed", note="changed while processed; queued again")
            return
        if folder.after_success == "delete":
            src.unlink(missing_ok=True)
            outputs.fsync_dir(src.parent)
        elif folder.after_success == "move" and folder.done is not None:
            try:
                outputs.move_to(src, folder.done, job.relpath)
            except FileNotFoundError:
                bound.warning("file.vanished", during="move to done")

    def _outputs_already_written(self, job: Job, folder: FolderSettings, sig: Signature) -> bool:
        """Every output this job claimed exists and is newer than its input."""
        claimed = self._queue.claimed_outputs(job.id)
        if len(claimed) < (2 if folder.output == "both" else 1):
            return False
        for rel in claimed:
            try:
                written = os.stat(folder.outbox / rel).st_mtime_ns
            except OSError:
                return False
            if written < sig[1]:
                return False
        return True

    def _write_outputs(self, job: Job, folder: FolderSettings, cutout: bytes) -> list[str]:
        ext = "png" if folder.output == "mask" else imaging.EXTENSIONS[folder.format]
        primary = self._queue.claim_output(
            job.folder, job.id, outputs.output_candidates(job.relpath, ext)
        )
        if folder.output == "mask":
            outputs.write_atomic(folder.outbox / primary, imaging.encode_mask(cutout))
            return [primary]
        outputs.write_atomic(
            folder.outbox / primary,
            imaging.encode_cutout(cutout, folder.format, folder.background),
        )
        written = [primary]
        if folder.output == "both":
            # The mask's name is claimed too: `a.mask.jpg` beside `a.jpg` must not
            # write the same file as a.jpg's mask.
            mask = self._queue.claim_output(job.folder, job.id, outputs.mask_candidates(primary))
            outputs.write_atomic(folder.outbox / mask, imaging.encode_mask(cutout))
            written.append(mask)
        return written

    def _retry(
        self,
        job: Job,
        folder: FolderSettings,
        message: str,
        status: int | None,
        bound: Any,
        charged: bool = False,
        resend: bool | None = None,
    ) -> Result:
        """Count a failed attempt: retry later with backoff, or quarantine at the last.

        ``charged``: a credit was (or may have been) spent; ``resend`` (default:
        the same) marks the next send as a possible second charge.
        """
        attempts = job.attempts + 1
        if attempts >= self.config.max_attempts:
            self._quarantine(job, folder, "retries_exhausted", message, status, bound, attempts)
            return Result(Kind.QUARANTINED, charged=charged)
        delay = compute_backoff(
            attempts, self.config.retry_base_seconds, self.config.retry_max_seconds
        )
        again = charged if resend is None else resend
        self._queue.retry_later(job.id, self._clock() + delay, message, resend=again)
        bound.warning("job.retry", attempts=attempts, delay=round(delay, 2), error=message)
        return Result(Kind.RETRY, charged=charged)

    def _quarantine(
        self,
        job: Job,
        folder: FolderSettings,
        reason: str,
        message: str,
        status: int | None,
        bound: Any,
        attempts: int | None = None,
    ) -> Result:
        src = folder.inbox / job.relpath
        sidecar = {
            "path": job.relpath,
            "folder": job.folder,
            "reason": reason,
            "http_status": status,
            "message": message,
            "attempts": job.attempts if attempts is None else attempts,
            "first_seen": _iso(job.first_seen),
            "failed_at": _iso(self._clock()),
        }
        location: str | None = None
        if signature_of(folder.inbox, job.relpath) is None:
            # Gone, or a folder on its path was swapped for a symlink: touch nothing.
            self._queue.forget(job.id)
            bound.info("file.vanished", during="quarantine")
            return Result(Kind.VANISHED)
        try:
            final = outputs.quarantine_file(src, folder.quarantine, job.relpath, sidecar)
            location = final.relative_to(folder.quarantine).as_posix()
        except FileNotFoundError:
            self._queue.forget(job.id)
            bound.info("file.vanished", during="quarantine")
            return Result(Kind.VANISHED)
        except OSError as exc:
            # Unreadable input, full or read-only quarantine disk: the file stays
            # where it is, but the job ends here instead of coming back forever.
            message = f"{message}; could not move it to the quarantine: {exc.strerror}"
            bound.error("job.quarantine_failed", error=exc.strerror)
        self._queue.quarantine(job.id, reason, message, status, location)
        self._recorder.job_finished(job.folder, "quarantined", None)
        bound.warning("job.quarantined", reason=reason, http_status=status, error=message)
        return Result(Kind.QUARANTINED, reason=reason)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")
