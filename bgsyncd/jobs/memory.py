"""What the worker threads remember between runs of a job, and share.

- Charged results whose outputs could not be written yet (a full disk, a
  refused folder), by content: the retry or the resume after a pause costs no
  credit, even with the cache off or when the cache's own write failed.
- Unusable answers: per job (the second quarantines it) and in a row for the
  account (the third pauses dispatch). A job's count also survives a restart
  through its ``last_error`` (see :data:`bgsyncd.jobs.outcomes.UNUSABLE_PREFIX`).
- Which content is being processed, so two names with the same bytes never
  both spend a credit.

Thread-safe; the decisions themselves stay pure (:mod:`bgsyncd.jobs.outcomes`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from bgsyncd.jobs.outcomes import UNUSABLE_PREFIX, Context, Outcome, Transition
from bgsyncd.storage.contract import Job

_FINAL = (Transition.DONE, Transition.QUARANTINE, Transition.FORGET)


class History:
    """The state the worker's decisions need across runs and threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: dict[str, threading.Event] = {}
        self._kept: dict[str, bytes] = {}
        self._unusable_by_job: dict[int, int] = {}
        self._unusable_streak = 0

    def context(self, job: Job, max_attempts: int, settle_seconds: float) -> Context:
        """What ``decide`` needs to know about ``job`` besides what happened."""
        earlier = 1 if (job.last_error or "").startswith(UNUSABLE_PREFIX) else 0
        with self._lock:
            return Context(
                attempts=job.attempts,
                max_attempts=max_attempts,
                settle_seconds=settle_seconds,
                earlier_unusable=max(earlier, self._unusable_by_job.get(job.id, 0)),
                unusable_streak=self._unusable_streak,
            )

    def remember(self, job: Job, outcome: Outcome, sha: str | None, result: bytes | None) -> None:
        """Count an unusable answer (or end the streak); keep ``result`` while it is not written."""
        final = outcome.transition in _FINAL
        with self._lock:
            if outcome.unusable:
                self._unusable_streak += 1
                self._unusable_by_job[job.id] = self._unusable_by_job.get(job.id, 0) + 1
            elif outcome.usable:
                self._unusable_streak = 0
            if final:
                self._unusable_by_job.pop(job.id, None)
            if sha is not None:
                if final:
                    self._kept.pop(sha, None)
                elif result is not None:
                    self._kept[sha] = result

    def keep(self, sha: str, result: bytes) -> None:
        """Keep a charged ``result`` whose outputs wait for something outside the job."""
        with self._lock:
            self._kept[sha] = result

    def kept(self, sha: str) -> bytes | None:
        """A charged result for this content still waiting for its outputs, if any."""
        with self._lock:
            return self._kept.get(sha)

    @contextlib.contextmanager
    def same_content(self, sha: str) -> Iterator[None]:
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
