"""What the worker threads remember between runs of a job, and share.

- :class:`KeptAnswers`: charged answers whose outputs could not be written yet
  (a full disk, a refused folder), by content: the retry or the resume after a
  pause costs no credit, even with the cache off or when the cache's own write
  failed.
- :class:`UnusableCount`: unusable answers per job (the second quarantines it)
  and in a row for the account (the third pauses dispatch). A job's count also
  survives a restart through its ``last_error`` (see
  :data:`bgsyncd.jobs.outcomes.UNUSABLE_PREFIX`).
- :class:`ContentLocks`: which content is being processed, so two names with
  the same bytes never both spend a credit.

Thread-safe; the decisions themselves stay pure (:mod:`bgsyncd.jobs.outcomes`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from bgsyncd.jobs.outcomes import UNUSABLE_PREFIX, Context, Outcome, Transition
from bgsyncd.storage.contract import Job

_FINAL = (Transition.DONE, Transition.QUARANTINE, Transition.FORGET)


def is_final(outcome: Outcome) -> bool:
    """The job ends with ``outcome``: what was remembered for it can go."""
    return outcome.transition in _FINAL


class UnusableCount:
    """Unusable answers: per job (the second quarantines it) and in a row for the
    account (the third pauses dispatch); with the job's attempts, what ``decide`` needs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_job: dict[int, int] = {}
        self._streak = 0

    def context(self, job: Job, max_attempts: int, settle_seconds: float) -> Context:
        """What ``decide`` needs to know about ``job`` besides what happened."""
        earlier = 1 if (job.last_error or "").startswith(UNUSABLE_PREFIX) else 0
        with self._lock:
            return Context(
                attempts=job.attempts,
                max_attempts=max_attempts,
                settle_seconds=settle_seconds,
                earlier_unusable=max(earlier, self._by_job.get(job.id, 0)),
                unusable_streak=self._streak,
            )

    def count(self, job: Job, outcome: Outcome) -> None:
        """Count an unusable answer, or end the account's streak on a usable one."""
        with self._lock:
            if outcome.unusable:
                self._streak += 1
                self._by_job[job.id] = self._by_job.get(job.id, 0) + 1
            elif outcome.usable:
                self._streak = 0
            if is_final(outcome):
                self._by_job.pop(job.id, None)


class KeptAnswers:
    """Charged answers whose outputs could not be written yet (a full disk, a refused
    folder, a lost lease), by content: the retry or the resume costs no credit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, bytes] = {}

    def keep(self, key: str, answer: bytes) -> None:
        """Keep a charged ``answer`` whose outputs wait for something outside the job."""
        with self._lock:
            self._kept[key] = answer

    def kept(self, key: str) -> bytes | None:
        """A charged answer for this content still waiting for its outputs, if any."""
        with self._lock:
            return self._kept.get(key)

    def after(self, key: str, answer: bytes, outcome: Outcome) -> None:
        """The job that got ``answer`` ended with ``outcome`` (dropped) or will run again (kept)."""
        with self._lock:
            if is_final(outcome):
                self._kept.pop(key, None)
            else:
                self._kept[key] = answer


class ContentLocks:
    """Which content is being processed, so two names with the same bytes never
    both spend a credit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: dict[str, threading.Event] = {}

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
