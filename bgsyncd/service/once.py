"""``bgsyncd once``: when a run is over, and with which exit status (SPEC §3).

A run counts its own files: the jobs still open when it started plus every file
it queued while running. It waits out rate-limit waits, retries and pauses that
end within ``HORIZON`` seconds, and ends when each of its jobs is done,
quarantined, or waiting on a retry further away than that. :func:`decide` is a
pure function of a :class:`Snapshot`; :class:`OnceRun`, called from the
daemon's loop, takes the snapshots, shows them and acts on the verdict.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bgsyncd.logs import get_logger
from bgsyncd.reasons import lifted_by_a_credit_check
from bgsyncd.service.progress import Progress

if TYPE_CHECKING:  # the daemon's components; `once` only reads them
    from bgsyncd.dispatch.credits import CreditGuard
    from bgsyncd.dispatch.dispatcher import Dispatcher
    from bgsyncd.dispatch.pacer import Pacer
    from bgsyncd.storage.contract import Store

log = get_logger("bgsyncd.once")

HORIZON = 60.0

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_PAUSED = 3

OPEN_STATES = ("pending", "in_flight", "retry_wait")


@dataclass(frozen=True)
class Snapshot:
    """What the run looks like now."""

    open_jobs: int  # pending, in flight or waiting on a retry, in the configured folders
    in_flight: int
    intake_busy: bool  # files found but not yet in the queue (watcher, ingest)
    ready_in: float | None  # seconds until a job may be claimed (0: now); None: none waits
    rate_wait: float  # seconds until the rate limit allows the next request
    paused: str | None
    paused_for: float  # seconds since this pause began
    next_check_in: float  # seconds until the next credit check


@dataclass(frozen=True)
class Verdict:
    """Whether the run is over, its exit status, and what it waits for meanwhile."""

    over: bool
    exit_code: int = EXIT_OK
    waiting: str = ""


def decide(s: Snapshot) -> Verdict:
    """The verdict for one snapshot; never raises."""
    if s.paused is not None:
        if s.in_flight or s.intake_busy:
            return Verdict(False, waiting=f"paused: {s.paused}; finishing the files in hand")
        left = HORIZON - s.paused_for
        # A pause lifted by its own rule (a probe write every 30 s, the
        # database answering again) has no credit check to wait for (SPEC §5).
        lifts_in = s.next_check_in if lifted_by_a_credit_check(s.paused) else None
        if left <= 0 or (lifts_in is not None and lifts_in > left):
            return Verdict(True, EXIT_PAUSED, f"paused: {s.paused}")
        then = f"next credit check in {_secs(lifts_in)}" if lifts_in is not None else "retrying"
        return Verdict(False, waiting=f"paused: {s.paused}; {then}, giving up in {_secs(left)}")
    if s.intake_busy or s.in_flight:
        return Verdict(False, waiting=_rate(s) if s.ready_in == 0 else "")
    if s.open_jobs == 0:
        return Verdict(True)
    if s.ready_in is None:
        # Open jobs, none ready and none in flight here: one was claimed (or
        # given back) between the looks, or another host of a fleet holds it.
        return Verdict(False)
    if s.ready_in <= 0:
        return Verdict(False, waiting=_rate(s))
    if s.ready_in > HORIZON:
        return Verdict(True)  # what is left waits on retries further away: listed at the end
    return Verdict(False, waiting=f"waiting for a retry in {_secs(s.ready_in)}")


def _rate(s: Snapshot) -> str:
    return f"rate limit: next request in {_secs(s.rate_wait)}" if s.rate_wait > 0 else ""


def _secs(seconds: float) -> str:
    return f"{max(0, math.ceil(seconds))} s"


class RunCount:
    """This run's files: open at start plus queued since; finished = total - still open."""

    def __init__(self, open_at_start: int) -> None:
        self._lock = threading.Lock()  # the ingest thread adds, the main loop reads
        self._total = open_at_start
        self._finished = 0

    @property
    def total(self) -> int:
        """This run's files so far."""
        with self._lock:
            return self._total

    @property
    def finished(self) -> int:
        """This run's files finished, as last updated."""
        with self._lock:
            return self._finished

    def queued(self, n: int) -> None:
        """``n`` files were queued (new, or changed since their last run)."""
        with self._lock:
            self._total += n

    def update(self, open_now: int) -> int:
        """The files finished, given the jobs open now; never goes backwards."""
        with self._lock:
            self._finished = max(self._finished, min(self._total, self._total - open_now))
            return self._finished


def open_jobs(counts: Mapping[str, Mapping[str, int]], folders: Collection[str]) -> int:
    """Jobs not yet done or quarantined in ``folders``."""
    return sum(
        n
        for folder, per in counts.items()
        if folder in folders
        for state, n in per.items()
        if state in OPEN_STATES
    )


class OnceRun:
    """One ``bgsyncd once``: its count, its bar, and when it is over."""

    def __init__(
        self,
        queue: Store,
        dispatcher: Dispatcher,
        pacer: Pacer,
        credits: CreditGuard,
        folders: Callable[[], Collection[str]],
        intake_busy: Callable[[], bool],
    ) -> None:
        self.queue = queue
        self.dispatcher = dispatcher
        self.pacer = pacer
        self.credits = credits
        self._folders = folders
        self._intake_busy = intake_busy
        # `once` counts its own files: those still open now, and what it queues.
        self._run = RunCount(open_jobs(queue.counts(), folders()))
        self.exit_code = EXIT_OK
        self._paused_since: float | None = None
        self._progress = Progress.for_stderr(True)

    def queued(self, n: int) -> None:
        """``n`` files entered the queue during the run."""
        self._run.queued(n)

    def step(self) -> bool:
        """Show where ``once`` is; True when it is over (its exit status is set)."""
        progress = self._progress
        folders = self._folders()
        still_open = open_jobs(self.queue.counts(), folders)
        finished = self._run.update(still_open)
        verdict = decide(self._snapshot(still_open, folders))
        if not verdict.over:
            progress.show(finished, self._run.total, verdict.waiting)
            return False
        self.exit_code = verdict.exit_code
        leftovers = self._once_leftovers()
        ending = verdict.waiting
        if leftovers:
            ending = "; ".join(
                filter(None, [ending, f"{len(leftovers)} wait on a retry over a minute away:"])
            )
        progress.finish(finished, self._run.total, ending, leftovers)
        if verdict.exit_code != EXIT_OK:
            log.warning("once.paused", reason=self.dispatcher.paused)
        return True

    def interrupted(self) -> None:
        """Stopped before the run was over: a signal, or a crash."""
        self.exit_code = EXIT_FAILURE
        self._progress.finish(self._run.finished, self._run.total, "interrupted", [])

    def _snapshot(self, still_open: int, folders: Collection[str]) -> Snapshot:
        paused = self.dispatcher.paused
        now = time.monotonic()
        if paused is None:
            self._paused_since = None
        elif self._paused_since is None:
            self._paused_since = now
        ready_at = self.queue.next_ready_at(folders)
        return Snapshot(
            open_jobs=still_open,
            in_flight=self.dispatcher.in_flight,
            intake_busy=self._intake_busy(),
            ready_in=None if ready_at is None else max(0.0, ready_at - time.time()),
            rate_wait=self.pacer.delay(),
            paused=paused,
            paused_for=0.0 if self._paused_since is None else now - self._paused_since,
            next_check_in=self.credits.seconds_until_check(),
        )

    def _once_leftovers(self) -> list[str]:
        """The files ``once`` leaves waiting on a retry, for its summary."""
        folders = self._folders()
        out = []
        for job in self.queue.retry_waiting():
            if job.folder not in folders:
                continue
            when = job.next_attempt_at or time.time()
            out.append(
                f"{job.folder}/{job.relpath}: retry in {max(0, round(when - time.time()))} s "
                f"(attempt {job.attempts}; {job.last_error or 'no error recorded'})"
            )
        return out
