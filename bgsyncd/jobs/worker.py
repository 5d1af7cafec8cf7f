"""Processing one claimed job: from the input file to its outputs.

The worker does things and decides nothing: each step reports what happened
(:mod:`bgsyncd.jobs.outcomes`), :func:`~bgsyncd.jobs.outcomes.decide` maps it to an
``Outcome``, and :class:`~bgsyncd.jobs.applier.Applier` alone carries it out (the
queue transition, the metrics, the log line). The outputs are written and the
input dealt with by :mod:`bgsyncd.jobs.delivery`. ``Worker.process`` never raises for a
bad file, a failed request or a failing disk (only ``QueueUnavailable``, the
database's own failure, reaches the dispatcher); its ``Result`` tells the
dispatcher what the outcome means for the account (credits, pauses, 429s).

Every change to the job is fenced by its claim (``storage.JobStore``): the
claim is confirmed before outputs are written, and a change refused because
another host took the job over (:class:`~bgsyncd.storage.contract.LeaseLost`) drops
the result (``job.lease_lost``): no output written, no input moved or
deleted, nothing quarantined (SPEC §8).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bgsyncd import imaging
from bgsyncd.api.client import Client
from bgsyncd.api.outage import Outage
from bgsyncd.config.schema import FolderSettings
from bgsyncd.errors import ApiError, QueueUnavailable, Stopped, UnusableAnswer, describe
from bgsyncd.files.inputs import Signature, read_input
from bgsyncd.hooks import events as hook_events
from bgsyncd.jobs import delivery, uploads
from bgsyncd.jobs.applier import Applier
from bgsyncd.jobs.backoff import compute_backoff
from bgsyncd.jobs.memory import ContentLocks, KeptAnswers, UnusableCount
from bgsyncd.jobs.outcomes import (
    NEEDS_REQUEST,
    ApiFailed,
    Context,
    Crashed,
    Finished,
    Happening,
    Interrupted,
    LocalVerdict,
    Outcome,
    PauseHook,
    Result,
    Transition,
    Vanished,
    WriteFailed,
    decide,
    quiet_for,
)
from bgsyncd.logs import get_logger
from bgsyncd.ops.metrics import Recorder
from bgsyncd.storage.contract import HookEvent, Job, LeaseLost, ResultStore, Store

log = get_logger("bgsyncd.worker")

# A file this large is refused before it is read into memory, whatever `oversize` says.
HARD_SIZE_LIMIT = 256 * 1024 * 1024


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
    free_only: bool = False  # settle only what needs no request (SPEC §4); release the rest
    folder: str = ""  # where the write that may fail goes
    during: str = "writing the outputs"

    def kept(self) -> tuple[str, bytes] | None:
        """(key, data) of the answer this run got, to keep while its outputs wait; or None."""
        if self.sha is None or self.answer is None:
            return None
        return uploads.kept_key(self.sha, self.answer.kind), self.answer.data


class Worker:
    """Turns a claimed job into outputs; safe to call from several threads."""

    def __init__(
        self,
        queue: Store,
        cache: ResultStore,
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
        self._kept = KeptAnswers()
        self._unusable = UnusableCount()
        self._content = ContentLocks()
        self.outage = Outage()  # the account's failures in a row (the dispatcher's probe reads it)
        self._applier = Applier(queue, recorder, clock, self._context, self._backoff)

    def process(self, job: Job, on_pause: PauseHook | None = None) -> Result:
        r"""Process ``job`` (claimed, in flight) to one of the ``Transition``\s.

        ``on_pause(reason, **context)`` is called before the job goes back to the
        queue when its outcome pauses dispatch, so the dispatcher never claims it
        again in between.
        """
        return self._process(job, on_pause, _Run())

    def settle_free(self, job: Job, on_pause: PauseHook | None = None) -> Result:
        """Like :meth:`process`, for work that needs no request: a local verdict, a
        cache hit, outputs already written. A job that needs a request goes back to
        pending (no attempt), untouched: it waits for its turn and the rate limit.
        """
        return self._process(job, on_pause, _Run(free_only=True))

    def needs_no_request(self, folder_name: str, relpath: str) -> bool:
        """A look without a claim: is this file's work free (a local verdict, a cache hit)?

        The free lane asks before it claims: a job it claimed would look, after a
        crash, like a request possibly sent (a resend).
        """
        folder = self.config.folders.get(folder_name)
        read = None if folder is None else read_input(folder.inbox, relpath, HARD_SIZE_LIMIT)
        if folder is None or read is None or read[0] == b"":
            return False  # gone or emptied: the dispatcher's turn forgets it
        data = read[0]
        if data is None or imaging.sniff(data[: imaging.SNIFF_BYTES]) is None:
            return True
        try:
            imaging.inspect(data)
        except imaging.CorruptImage:
            return True
        if len(data) > self.config.max_upload_bytes and folder.oversize == "quarantine":
            return True
        return self._kept_answer(hashlib.sha256(data).hexdigest()) is not None

    def _process(self, job: Job, on_pause: PauseHook | None, run: _Run) -> Result:
        folder = self.config.folders.get(job.folder)
        bound = log.bind(folder=job.folder, path=job.relpath, job=job.id)
        if folder is None:
            # The folder was removed by a reload: leave the job for a later configuration.
            interrupted = decide(Interrupted("folder"), self._context(job))
            return self._apply(job, None, interrupted, bound, run, on_pause)
        try:
            happened = self._do(job, folder, run, bound)
        except LeaseLost:
            return self._lease_lost(run, bound)
        except QueueUnavailable:
            # The database, not the job: the dispatcher pauses (queue_unavailable).
            # A charged result waits in memory, so the resume costs no credit.
            if (kept := run.kept()) is not None:
                self._kept.keep(*kept)
            raise
        except Exception as exc:  # a bug must not take the daemon down, nor loop forever
            bound.exception("job.error", error=describe(exc))
            happened = Crashed(exc, charged=run.charged)
        outcome = decide(happened, self._context(job, happened))
        self._unusable.count(job, outcome)
        if (kept := run.kept()) is not None:
            self._kept.after(*kept, outcome)
        return self._apply(job, folder, outcome, bound, run, on_pause)

    def _apply(
        self,
        job: Job,
        folder: FolderSettings | None,
        outcome: Outcome,
        bound: Any,
        run: _Run,
        on_pause: PauseHook | None,
    ) -> Result:
        if run.sha is not None:  # for the hooks' events (SPEC §10)
            job = replace(job, sha256=run.sha)
        try:
            return self._applier.apply(job, folder, outcome, bound, run.read, on_pause)
        except LeaseLost:
            return self._lease_lost(run, bound)

    def _lease_lost(self, run: _Run, bound: Any) -> Result:
        """Another host took the job over (this one was silent past the lease), or it
        was given back: its result is not this run's to write, nor its input to
        move. The answer stays at hand here, in case the job comes back."""
        if (kept := run.kept()) is not None:
            self._kept.keep(*kept)
        bound.warning("job.lease_lost", note="another host took the job over; result dropped")
        return Result(Transition.RELEASE, charged=run.charged)

    # -- doing: each step says what happened ------------------------------------------

    def _do(self, job: Job, folder: FolderSettings, run: _Run, bound: Any) -> Happening:
        src = folder.inbox / job.relpath
        read = read_input(folder.inbox, job.relpath, HARD_SIZE_LIMIT)
        if read is None:
            return Vanished()
        data, sig = read
        run.read = sig
        if sig != (job.size, job.mtime_ns, job.inode):  # rewritten since it was queued
            self._queue.record_version(job, *sig)
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
        self._queue.set_sha256(job, sha)
        # One request per content: this host's threads wait on the history, a
        # fleet's hosts on the shared cache's claim (SPEC §8).
        with self._content.same_content(sha), self._cache.fetching(sha):
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
            return self._finish(job, folder, sig, data, kept, run, "cache", bound)
        if job.resend and delivery.outputs_already_written(self._queue, job, folder, sig):
            # A crash came after the outputs were written and before the job was
            # marked done: they are there and newer than the input. Never send
            # such a job again (the cache usually answers first; not when it is
            # off or the entry was evicted).
            written = delivery.claimed_outputs(self._queue, job, folder)
            self._queue.complete(job, written, _done_hooks(job, folder, written, run))
            run.folder, run.during = delivery.after_success_target(folder)
            delivery.after_success(self._queue, job, folder, sig, bound)
            return Finished("outputs", tuple(written))
        config = self.config
        too_big = len(data) > config.max_upload_bytes and folder.oversize == "quarantine"
        if run.free_only and not too_big:  # (a file too big is refused before any decode)
            return Interrupted(NEEDS_REQUEST)
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
        delivery.claim_names(self._queue, job, folder)
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
        return self._finish(job, folder, sig, data, run.answer, run, "api", bound)

    def _finish(
        self,
        job: Job,
        folder: FolderSettings,
        sig: Signature,
        data: bytes,
        answer: uploads.Answer,
        run: _Run,
        source: str,
        bound: Any,
    ) -> Happening:
        """Make this folder's outputs, its own and each rendition's, from the original and
        the answer, write them tree by tree, mark the job done, then deal with the input.

        The input is dealt with only once every tree's outputs are written
        (SPEC §9); a write that fails in any tree is a ``WriteFailed`` naming
        that tree's outbox. If the input changed after it was read (a writer
        came back), it is neither deleted nor moved but queued again: its new
        content must not be lost, and it gets its own turn.
        """
        if run.answer is None:
            run.answer = answer
        trees = delivery.trees(folder)
        try:
            renders = imaging.render_all(
                data,
                answer.data,
                answer_is_matte=answer.matte,
                edges=folder.edges,
                finishings=[tree.finishing for tree in trees],
            )
        except imaging.UnusableResult as exc:
            if source != "api":
                raise  # a kept answer was checked when it came: this is a bug
            return ApiFailed(UnusableAnswer(f"unusable result: {exc}", 200))
        if renders[0].rotated_by_server:
            bound.info("job.rotated_by_server", note="outputs carry no orientation tag")
        if any(r.no_subject for r in renders):
            bound.info("finish.no_subject", note="crop found no subject: the image is kept whole")
        if not self._queue.holds(job):  # confirmed before anything is written
            raise LeaseLost(f"job {job.id} ({job.relpath}) is no longer held by this claim")
        written: list[str] = []
        try:
            run.during = "writing the outputs"
            for tree, rendered in zip(trees, renders, strict=True):
                run.folder = str(tree.outbox)
                written += delivery.write_tree(self._queue, job, folder, tree, rendered)
            self._queue.complete(job, written, _done_hooks(job, folder, written, run))
            run.folder, run.during = delivery.after_success_target(folder)
            delivery.after_success(self._queue, job, folder, sig, bound)
        except OSError as exc:
            return WriteFailed(exc, run.folder, run.during, charged=run.charged)
        return Finished(source, tuple(written))

    def _kept_answer(self, sha: str) -> uploads.Answer | None:
        """An answer for this content that serves the upload setting: kept in memory, or cached."""
        for kind in uploads.kinds_serving(self.config.upload):
            kept = self._kept.kept(uploads.kept_key(sha, kind))
            if kept is None:
                kept = self._cache.get(sha, kind)
            if kept is not None:
                return uploads.Answer(kept, kind)
        return None

    def _context(self, job: Job, happened: Happening | None = None) -> Context:
        ctx = self._unusable.context(job, self.config.max_attempts, self.config.settle_seconds)
        if isinstance(happened, ApiFailed):  # counted and read in one step (SPEC §5 outages)
            return replace(ctx, failures_before=self.outage.record(happened.error))
        if isinstance(happened, Finished) and happened.source == "api":
            self.outage.record(None)
        return ctx

    def _backoff(self, attempt: int) -> float:
        """Seconds before ``attempt`` (counted from 1), under the settings in force."""
        config = self.config
        return compute_backoff(attempt, config.retry_base_seconds, config.retry_max_seconds)


def _done_hooks(job: Job, folder: FolderSettings, written: list[str], run: _Run) -> list[HookEvent]:
    """The hooks recorded with the job's ``done`` (SPEC §10), one event id for them all."""
    job = replace(job, sha256=run.sha or job.sha256)
    return hook_events.done_hooks(job, folder, written, hook_events.new_event_id())
