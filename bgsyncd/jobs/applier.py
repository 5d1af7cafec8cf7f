"""Carrying out a decided outcome: the one place an ``Outcome`` is acted on.

:func:`~bgsyncd.jobs.outcomes.decide` says what happened means (pure); the
:class:`Applier` does it for the worker: the queue transition, the move to
the quarantine, the metrics, the log line, a pause through the dispatcher's
hook, the hooks (SPEC §10) recorded with the quarantine. It returns the
:class:`~bgsyncd.jobs.outcomes.Result` the dispatcher reads.
A quarantine that cannot be written is decided anew and applied in turn.

Every queue transition is fenced (``storage.JobStore``): one refused because
this host no longer holds the job's claim raises
:class:`~bgsyncd.storage.contract.LeaseLost` to the worker, and a quarantine moves no
file unless the claim still holds first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from bgsyncd.config.schema import FolderSettings
from bgsyncd.files import moves
from bgsyncd.files.inputs import Signature, signature_of
from bgsyncd.hooks import events as hook_events
from bgsyncd.jobs.outcomes import (
    Changed,
    Context,
    Happening,
    Outcome,
    PauseHook,
    Result,
    Transition,
    Vanished,
    WriteFailed,
    decide,
)
from bgsyncd.ops.metrics import Recorder
from bgsyncd.storage.contract import Found, Job, LeaseLost, Store


class Applier:
    """Applies the worker's outcomes; safe to call from several threads."""

    def __init__(
        self,
        queue: Store,
        recorder: Recorder,
        clock: Callable[[], float],
        context: Callable[[Job], Context],
        backoff: Callable[[int], float],
    ) -> None:
        self._queue = queue
        self._recorder = recorder
        self._clock = clock
        # The worker's own, asked at each use: its settings are replaced on a reload.
        self._context = context  # a job's history, to decide a failed quarantine anew
        self._backoff = backoff  # seconds before a job's attempt number n

    def apply(
        self,
        job: Job,
        folder: FolderSettings | None,
        out: Outcome,
        bound: Any,
        judged: Signature | None,
        on_pause: PauseHook | None,
    ) -> Result:
        """Carry out ``out`` for ``job``; ``judged``: the version of the input that was read."""
        fields = dict(out.fields)
        if out.message and out.transition is not Transition.DONE:
            fields["error"] = out.message
        context = {k: v for k, v in fields.items() if k in ("location", "folder_path", "error")}
        if out.pause is not None and on_pause is not None:
            on_pause(out.pause, **context)  # paused before the job can be claimed again
        if out.transition is Transition.QUARANTINE and folder is not None:
            moved = self.quarantine(job, folder, out, judged)
            if moved is not None:
                # The quarantine itself could not be written: decided anew.
                again = decide(moved, self._context(job))
                if again.transition is Transition.QUARANTINE and again.reason != "output_refused":
                    # Neither the disk nor a swap: the job ends, the input stays.
                    note = f"{out.message}; could not move it to the quarantine: {again.message}"
                    again = replace(out, move=False, message=note)
                again = replace(again, charged=out.charged)
                result = self.apply(job, folder, again, bound, judged, on_pause)
                return replace(result, pause=result.pause or out.pause)
        elif out.transition is Transition.RETRY:
            delay = self._backoff(job.attempts + 1)
            self._queue.retry_later(job, self._clock() + delay, out.message, resend=out.resend)
            fields["delay"] = round(delay, 2)
        elif out.transition is Transition.DEFER:
            self._queue.defer(job, self._clock() + (out.wait or 0.0), out.message)
            fields["wait"] = round(out.wait or 0.0, 2)
        elif out.transition is Transition.RELEASE:
            self._queue.release(job, resend=out.resend)
        elif out.transition is Transition.FORGET:
            self._queue.forget(job)
        elif out.transition is Transition.REQUEUE and out.requeue_as is not None:
            self._queue.release(job)  # out of flight, so the new version may replace it
            self._queue.enqueue_many([Found(job.folder, job.relpath, *out.requeue_as)])
        if out.finished is not None:
            took = None if out.finished == "quarantined" else self._clock() - job.queued_at
            self._recorder.job_finished(job.folder, out.finished, took)
        if out.rate_limited:
            self._recorder.rate_limited()
        getattr(bound, out.level)(out.event, **_loggable(fields, out))
        return Result(
            out.transition,
            charged=out.charged,
            reason=out.reason if out.transition is Transition.QUARANTINE else out.pause,
            rate_limited=out.rate_limited,
            retry_after=out.wait if out.rate_limited else None,
            settle_in=out.wait if out.transition is Transition.DEFER else None,
            pause=out.pause,
            pause_context=context,
        )

    def quarantine(
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
            if not self._queue.holds(job):  # another host's job now: its file is not ours
                raise LeaseLost(f"job {job.id} ({job.relpath}) is no longer held by this claim")
            now = signature_of(folder.inbox, job.relpath)
            if now is None:
                # Gone, or a folder on its path was swapped for a symlink: touch nothing.
                return Vanished("quarantine")
            if judged is not None and now != judged:
                return Changed(*now)
            try:
                location = moves.quarantine_file(
                    folder.inbox, job.relpath, folder.quarantine, sidecar, judged or now
                )
            except moves.InputRewritten as exc:
                return Changed(*exc.signature)  # rewritten during the move: it stays
            except FileNotFoundError:
                return Vanished("quarantine")
            except OSError as exc:
                return WriteFailed(exc, str(folder.quarantine), "quarantine")
        hooks = hook_events.quarantine_hooks(
            job, folder, reason, message or "", location, hook_events.new_event_id()
        )
        self._queue.quarantine(job, reason, message, status, location, hooks)
        return None


def _loggable(fields: dict[str, object], out: Outcome) -> dict[str, object]:
    if out.transition is Transition.QUARANTINE:
        fields = {"reason": out.reason, "http_status": out.http_status, **fields}
    if out.pause is not None:
        fields["pause"] = out.pause
    return fields


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")
