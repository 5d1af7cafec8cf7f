"""Processing one claimed job: from the input file to its outputs.

The worker does things and decides nothing: each step reports what happened
(:mod:`bgsyncd.outcomes`), :func:`~bgsyncd.outcomes.decide` maps it to an
``Outcome``, and :meth:`Worker._apply` alone carries it out (the queue
transition, the metrics, the log line). ``Worker.process`` never raises for a
bad file, a failed request or a failing disk (only ``QueueUnavailable``, the
database's own failure, reaches the dispatcher); its ``Result`` tells the
dispatcher what the outcome means for the account (credits, pauses, 429s).
"""

from __future__ import annotations

import enum
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bgsyncd import imaging, outputs, uploads
from bgsyncd.backoff import compute_backoff
from bgsyncd.cache import ResultCache
from bgsyncd.client import Client
from bgsyncd.config import FolderSettings
from bgsyncd.errors import ApiError, QueueUnavailable, Stopped, UnusableAnswer
from bgsyncd.history import History
from bgsyncd.inputs import Signature, read_input, signature_of
from bgsyncd.logs import get_logger
from bgsyncd.metrics import Recorder
from bgsyncd.outcomes import (
    ApiFailed,
    Changed,
    Context,
    Crashed,
    Finished,
    Happening,
    Interrupted,
    LocalVerdict,
    Outcome,
    Transition,
    Vanished,
    WriteFailed,
    decide,
    describe,
    quiet_for,
)
from bgsyncd.queue import Found, Job, Queue

log = get_logger("bgsyncd.worker")

# A file this large is refused before it is read into memory, whatever `oversize` says.
HARD_SIZE_LIMIT = 256 * 1024 * 1024


class Kind(enum.Enum):
    """What became of a job, as far as the dispatcher cares."""

    DONE = "done"  # outputs written (from the API or the cache)
    QUARANTINED = "quarantined"
    RETRY = "retry"  # failed, retried later (an attempt counted, or waiting to settle)
    VANISHED = "vanished"  # the input disappeared before it was processed
    PAUSED = "paused"  # account-wide or disk problem: the job went back to the queue
    RATE_LIMITED = "rate_limited"  # 429: the job went back to the queue
    RELEASED = "released"  # shutting down: the job went back to the queue


_KINDS = {
    Transition.DONE: Kind.DONE,
    Transition.QUARANTINE: Kind.QUARANTINED,
    Transition.RETRY: Kind.RETRY,
    Transition.DEFER: Kind.RETRY,
    Transition.RELEASE: Kind.RELEASED,
    Transition.FORGET: Kind.VANISHED,
    Transition.REQUEUE: Kind.RELEASED,
}
# Called with a pause reason (and context) before the job returns to the queue.
PauseHook = Callable[..., None]


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
    settle_seconds: float = 2.0  # a local verdict is final once the input is this quiet
    upload: str = "proxy"  # api.upload: "proxy" | "original" (SPEC §5 "What is sent")
    proxy_side: int = 1024  # api.proxy_side: the longer side of the copy sent


@dataclass
class _Run:
    """What one run of a job has done so far (for the outcome and its application)."""

    sha: str | None = None
    read: Signature | None = None  # the version of the input that was read and judged
    answer: uploads.Answer | None = None  # what the API returned (or the cache kept)
    charged: bool = False  # the image request was answered
    folder: str = ""  # where the write that may fail goes
    during: str = "writing the outputs"


class _LeaseLost(Exception):
    """This host no longer holds the job's claim: its result must not be written."""


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
        *,
        holds: Callable[[int], bool] | None = None,
    ) -> None:
        self._queue = queue
        # In a fleet: does this host still hold the job's claim? Asked before
        # outputs are written (SPEC §8), so each output is written once.
        self._holds = holds
        self._cache = cache
        self._recorder = recorder
        self.config = config
        self._client = client
        self._clock = clock
        self._history = History()

    def process(self, job: Job, on_pause: PauseHook | None = None) -> Result:
        """Process ``job`` (claimed, in flight) to one of the outcomes of ``Kind``.

        ``on_pause(reason, **context)`` is called before the job goes back to the
        queue when its outcome pauses dispatch, so the dispatcher never claims it
        again in between.
        """
        folder = self.config.folders.get(job.folder)
        bound = log.bind(folder=job.folder, path=job.relpath, job=job.id)
        run = _Run()
        if folder is None:
            # The folder was removed by a reload: leave the job for a later configuration.
            return self._apply(
                job, None, decide(Interrupted("folder"), self._context(job)), bound, run, on_pause
            )
        try:
            happened = self._do(job, folder, run, bound)
        except _LeaseLost:
            # Another host took the job over (this one was silent past the lease):
            # its result is that host's to write. The answer stays at hand here.
            if run.sha is not None and run.answer is not None:
                self._history.keep(uploads.kept_key(run.sha, run.answer.kind), run.answer.data)
            bound.warning("job.lease_lost", note="another host took the job over; result dropped")
            return Result(Kind.RELEASED, charged=run.charged)
        except QueueUnavailable:
            # The database, not the job: the dispatcher pauses (queue_unavailable).
            # A charged result waits in memory, so the resume costs no credit.
            if run.sha is not None and run.answer is not None:
                self._history.keep(uploads.kept_key(run.sha, run.answer.kind), run.answer.data)
            raise
        except Exception as exc:  # a bug must not take the daemon down, nor loop forever
            bound.exception("job.error", error=describe(exc))
            happened = Crashed(exc, charged=run.charged)
        outcome = decide(happened, self._context(job))
        if run.sha is not None and run.answer is not None:
            key, kept = uploads.kept_key(run.sha, run.answer.kind), run.answer.data
            self._history.remember(job, outcome, key, kept)
        else:
            self._history.remember(job, outcome, None, None)
        return self._apply(job, folder, outcome, bound, run, on_pause)

    # -- doing: each step says what happened ------------------------------------------

    def _do(self, job: Job, folder: FolderSettings, run: _Run, bound: Any) -> Happening:
        src = folder.inbox / job.relpath
        read = read_input(folder.inbox, job.relpath, HARD_SIZE_LIMIT)
        if read is None:
            return Vanished()
        data, sig = read
        run.read = sig
        if data == b"":
            # Emptied since it was queued: a placeholder again, left alone like any
            # empty file; its next write queues it anew.
            return Vanished("emptied")
        age = quiet_for(self._clock(), sig[1] / 1e9, job.queued_at)
        if data is None:
            return LocalVerdict("too_large", f"{sig[0]} bytes is over the hard limit", age)
        if imaging.sniff(data[: imaging.SNIFF_BYTES]) is None:
            message = "not a JPEG, PNG, WebP, TIFF, BMP or GIF"
            return LocalVerdict("unsupported_media", message, age)
        try:
            info = imaging.inspect(data)
        except imaging.CorruptImage as exc:
            return LocalVerdict("corrupt_image", str(exc), age)
        sha = hashlib.sha256(data).hexdigest()
        run.sha = sha
        self._queue.set_sha256(job.id, sha)
        with self._history.same_content(sha):
            return self._do_content(job, folder, data, info, sig, src, age, run, bound)

    def _do_content(
        self,
        job: Job,
        folder: FolderSettings,
        data: bytes,
        info: imaging.ImageInfo,
        sig: Signature,
        src: Path,
        age: float,
        run: _Run,
        bound: Any,
    ) -> Happening:
        assert run.sha is not None
        kept = self._kept_answer(run.sha)
        if kept is not None:
            return self._finish(job, folder, sig, data, kept, src, run, "cache", bound)
        if job.resend and self._outputs_already_written(job, folder, sig):
            # A crash came after the outputs were written and before the job was
            # marked done: they are there and newer than the input. Never send
            # such a job again (the cache usually answers first; not when it is
            # off or the entry was evicted).
            self._queue.complete(job.id, self._queue.claimed_outputs(job.id))
            run.folder, run.during = _after_success_target(folder)
            self._after_success(job, folder, sig, src, bound)
            return Finished("outputs")
        config = self.config
        up = uploads.prepare(
            data,
            info,
            src.name,
            upload=config.upload,
            proxy_side=config.proxy_side,
            max_upload_bytes=config.max_upload_bytes,
            oversize=folder.oversize,
        )
        if isinstance(up, uploads.Refused):
            return LocalVerdict(up.reason, up.message, age)
        if up.reason:
            bound.debug(
                "job.proxy", why=up.reason, sent_bytes=len(up.data), sent_size=list(up.size)
            )
        # Output names are decided before a credit is spent on them.
        self._claim_names(job, folder)
        if job.resend:
            self._recorder.resend()
            bound.warning("job.resend", note="earlier outcome unknown; may cost a second credit")
        try:
            answer = uploads.send(self._client(), self._recorder, up)
        except Stopped:
            return Interrupted("stopping")
        except ApiError as exc:
            return ApiFailed(exc)
        run.charged = True  # from here on the credit is spent, whatever fails
        try:
            run.answer = uploads.check(answer, up, info, config.upload)
        except imaging.UnusableResult as exc:
            return ApiFailed(UnusableAnswer(f"unusable result: {exc}", 200))
        # Cached only once it passed: a bad answer must not serve the next file.
        self._cache.put(run.sha, answer, run.answer.kind)
        return self._finish(job, folder, sig, data, run.answer, src, run, "api", bound)

    def _finish(
        self,
        job: Job,
        folder: FolderSettings,
        sig: Signature,
        data: bytes,
        answer: uploads.Answer,
        src: Path,
        run: _Run,
        source: str,
        bound: Any,
    ) -> Happening:
        """Make this folder's outputs from the original and the answer, write them, mark
        the job done, then deal with the input.

        If the input changed after it was read (a writer came back), it is
        neither deleted nor moved but queued again: its new content must not
        be lost, and it gets its own turn.
        """
        if run.answer is None:
            run.answer = answer
        try:
            rendered = imaging.render(
                data,
                answer.data,
                answer_is_matte=answer.matte,
                output=folder.output,
                fmt=folder.format,
                background=folder.background,
            )
        except imaging.UnusableResult as exc:
            if source != "api":
                raise  # a kept answer was checked when it came: this is a bug
            return ApiFailed(UnusableAnswer(f"unusable result: {exc}", 200))
        if rendered.rotated_by_server:
            bound.info("job.rotated_by_server", note="outputs carry no orientation tag")
        if self._holds is not None and not self._holds(job.id):
            raise _LeaseLost
        try:
            run.folder, run.during = str(folder.outbox), "writing the outputs"
            written = self._write_outputs(job, folder, rendered)
            self._queue.complete(job.id, written)
            run.folder, run.during = _after_success_target(folder)
            self._after_success(job, folder, sig, src, bound)
        except OSError as exc:
            return WriteFailed(exc, run.folder, run.during, charged=run.charged)
        return Finished(source)

    def _claim_names(self, job: Job, folder: FolderSettings) -> None:
        """Claim the output names now, so that no credit is spent on a name that cannot be had."""
        ext = "png" if folder.output == "mask" else imaging.EXTENSIONS[folder.format]
        primary = self._queue.claim_output(
            job.folder, job.id, outputs.output_candidates(job.relpath, ext)
        )
        if folder.output == "both":
            mask = outputs.mask_candidates(primary, job.relpath)
            self._queue.claim_output(job.folder, job.id, mask)

    def _kept_answer(self, sha: str) -> uploads.Answer | None:
        """An answer for this content that serves the upload setting: kept in memory, or cached."""
        for kind in uploads.kinds_serving(self.config.upload):
            kept = self._history.kept(uploads.kept_key(sha, kind))
            if kept is None:
                kept = self._cache.get(sha, kind)
            if kept is not None:
                return uploads.Answer(kept, kind)
        return None

    def _context(self, job: Job) -> Context:
        return self._history.context(job, self.config.max_attempts, self.config.settle_seconds)

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
            elif folder.after_success != "keep":
                # Its folder may be away (swapped, unmounted) and come back: the
                # input then stays where it is, done, and is not processed again.
                bound.warning("file.vanished", during=f"after success ({folder.after_success})")
            return
        if folder.after_success == "delete":
            try:
                outputs.delete_input(folder.inbox, job.relpath, sig)
            except FileNotFoundError:
                bound.warning("file.vanished", during="delete")
        elif folder.after_success == "move" and folder.done is not None:
            try:
                outputs.move_to(folder.inbox, job.relpath, folder.done, job.relpath)
            except FileNotFoundError:
                bound.warning("file.vanished", during="move to done")

    def _outputs_already_written(self, job: Job, folder: FolderSettings, sig: Signature) -> bool:
        """Every output this job claimed exists and is newer than its input."""
        claimed = self._queue.claimed_outputs(job.id)
        if len(claimed) < (2 if folder.output == "both" else 1):
            return False
        return outputs.outputs_newer_than(folder.outbox, claimed, sig[1])

    def _write_outputs(
        self, job: Job, folder: FolderSettings, rendered: imaging.Rendered
    ) -> list[str]:
        ext = "png" if folder.output == "mask" else imaging.EXTENSIONS[folder.format]
        primary = self._queue.claim_output(
            job.folder, job.id, outputs.output_candidates(job.relpath, ext)
        )
        if folder.output == "mask":
            assert rendered.mask is not None  # render made what the folder asks for
            outputs.write_file(folder.outbox, primary, rendered.mask)
            return [primary]
        assert rendered.cutout is not None
        outputs.write_file(folder.outbox, primary, rendered.cutout)
        written = [primary]
        if folder.output == "both":
            # The mask's name is claimed too: `a.mask.jpg` beside `a.jpg` must not
            # write the same file as a.jpg's mask.
            mask = self._queue.claim_output(
                job.folder, job.id, outputs.mask_candidates(primary, job.relpath)
            )
            assert rendered.mask is not None
            outputs.write_file(folder.outbox, mask, rendered.mask)
            written.append(mask)
        return written

    # -- applying: the one place an outcome becomes a transition, a metric, a log line ---

    def _apply(
        self,
        job: Job,
        folder: FolderSettings | None,
        out: Outcome,
        bound: Any,
        run: _Run,
        on_pause: PauseHook | None,
    ) -> Result:
        fields = dict(out.fields)
        if out.message and out.transition is not Transition.DONE:
            fields["error"] = out.message
        context = {k: v for k, v in fields.items() if k in ("location", "folder_path", "error")}
        if out.pause is not None and on_pause is not None:
            on_pause(out.pause, **context)  # paused before the job can be claimed again
        if out.transition is Transition.QUARANTINE and folder is not None:
            moved = self._quarantine(job, folder, out, run.read)
            if moved is not None:
                # The quarantine itself could not be written: decided anew.
                again = decide(moved, self._context(job))
                if again.transition is Transition.QUARANTINE and again.reason != "output_refused":
                    # Neither the disk nor a swap: the job ends, the input stays.
                    note = f"{out.message}; could not move it to the quarantine: {again.message}"
                    again = replace(out, move=False, message=note)
                again = replace(again, charged=out.charged)
                result = self._apply(job, folder, again, bound, run, on_pause)
                return replace(result, pause=result.pause or out.pause)
        elif out.transition is Transition.RETRY:
            delay = compute_backoff(
                job.attempts + 1, self.config.retry_base_seconds, self.config.retry_max_seconds
            )
            self._queue.retry_later(job.id, self._clock() + delay, out.message, resend=out.resend)
            fields["delay"] = round(delay, 2)
        elif out.transition is Transition.DEFER:
            self._queue.defer(job.id, self._clock() + (out.wait or 0.0), out.message)
            fields["wait"] = round(out.wait or 0.0, 2)
        elif out.transition is Transition.RELEASE:
            self._queue.release(job.id)
        elif out.transition is Transition.FORGET:
            self._queue.forget(job.id)
        elif out.transition is Transition.REQUEUE and out.requeue_as is not None:
            self._queue.release(job.id)  # out of flight, so the new version may replace it
            self._queue.enqueue_many([Found(job.folder, job.relpath, *out.requeue_as)])
        if out.finished is not None:
            took = None if out.finished == "quarantined" else self._clock() - job.queued_at
            self._recorder.job_finished(job.folder, out.finished, took)
        if out.rate_limited:
            self._recorder.rate_limited()
        getattr(bound, out.level)(out.event, **_loggable(fields, out))
        kind = Kind.RATE_LIMITED if out.rate_limited else _KINDS[out.transition]
        if out.pause is not None:
            kind = Kind.PAUSED
        return Result(
            kind,
            charged=out.charged,
            reason=out.reason if out.transition is Transition.QUARANTINE else out.pause,
            retry_after=out.wait if out.rate_limited else None,
            pause=out.pause,
            pause_context=context,
        )

    def _quarantine(
        self, job: Job, folder: FolderSettings, out: Outcome, judged: Signature | None
    ) -> Happening | None:
        """Move the input and its sidecar to the quarantine and mark the job.

        Returns what happened instead when that could not be done: the input
        vanished, was rewritten since ``judged`` was read (a verdict on old
        bytes moves nothing), or writing under the quarantine failed (decided anew).
        """
        reason = out.reason or "retries_exhausted"
        message, status = out.message, out.http_status
        sidecar = {
            "path": job.relpath,
            "folder": job.folder,
            "reason": reason,
            "http_status": status,
            "message": message,
            "attempts": job.attempts + (1 if out.counts_attempt else 0),
            "first_seen": _iso(job.first_seen),
            "failed_at": _iso(self._clock()),
        }
        location: str | None = None
        if out.move:
            now = signature_of(folder.inbox, job.relpath)
            if now is None:
                # Gone, or a folder on its path was swapped for a symlink: touch nothing.
                return Vanished("quarantine")
            if judged is not None and now != judged:
                return Changed(*now)
            try:
                location = outputs.quarantine_file(
                    folder.inbox, job.relpath, folder.quarantine, sidecar
                )
            except FileNotFoundError:
                return Vanished("quarantine")
            except OSError as exc:
                return WriteFailed(exc, str(folder.quarantine), "quarantine")
        self._queue.quarantine(job.id, reason, message, status, location)
        return None


def _after_success_target(folder: FolderSettings) -> tuple[str, str]:
    """Where keeping, deleting or moving the input writes, for a message."""
    if folder.after_success == "move" and folder.done is not None:
        return str(folder.done), "moving the input to done"
    return str(folder.inbox), "deleting the input"


def _loggable(fields: dict[str, object], out: Outcome) -> dict[str, object]:
    if out.transition is Transition.QUARANTINE:
        fields = {"reason": out.reason, "http_status": out.http_status, **fields}
    if out.pause is not None:
        fields["pause"] = out.pause
    return fields


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")
