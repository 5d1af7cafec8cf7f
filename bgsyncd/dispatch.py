"""Taking jobs from the queue at the account's limits.

One dispatcher thread decides *when* a job may start: not while dispatch is
paused, not past ``max_in_flight``, not before the pacer allows a request, not
when the credits could go below the floor. Worker threads do the rest. Every
wait is a timed wait on one condition variable, woken by new work, finished
jobs and signals, so an idle dispatcher costs nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from bgsyncd.client import Client
from bgsyncd.credits import CreditGuard
from bgsyncd.errors import AccountError, ApiError, BgsyncdError, Stopped
from bgsyncd.logs import get_logger
from bgsyncd.metrics import Recorder
from bgsyncd.pacer import Pacer
from bgsyncd.queue import Job, Queue
from bgsyncd.worker import Kind, Result, Worker

log = get_logger("bgsyncd.dispatch")

CREDIT_FLOOR = "credit_floor"
CREDITS_EXPIRED = "credits_expired"
# After a failed credit check (API down), try again this soon rather than waiting
# a whole check interval; an idle queue is looked at this often for work added by
# another process (`bgsyncd retry`).
CHECK_RETRY_SECONDS = 30.0
IDLE_LOOK_SECONDS = 5.0


class Dispatcher:
    """Claims jobs and runs them on a pool of ``max_in_flight`` threads."""

    def __init__(
        self,
        queue: Queue,
        worker: Worker,
        pacer: Pacer,
        credits: CreditGuard,
        client: Callable[[], Client],
        recorder: Recorder,
        *,
        max_in_flight: int,
        lease_seconds: float,
        on_state_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._worker = worker
        self._pacer = pacer
        self._credits = credits
        self._client = client
        self._recorder = recorder
        self._max_in_flight = max_in_flight
        self._lease = lease_seconds
        self._on_state_change = on_state_change
        self._clock = clock
        self._cond = threading.Condition()
        self._in_flight: dict[int, Job] = {}
        self._paused: str | None = None
        self._stopping = False
        self._check_now = True
        self._kicked = False
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="bgsyncd-worker")
        self._thread = threading.Thread(target=self._run, name="bgsyncd-dispatch", daemon=True)
        self.idle_drained = threading.Event()

    # -- control, from other threads -------------------------------------------------

    def start(self) -> None:
        """Start the dispatcher thread."""
        self._thread.start()

    def wake(self) -> None:
        """Something changed (new work, a signal): look again now."""
        with self._cond:
            self._kick_locked()

    def _kick_locked(self) -> None:
        # The flag closes the race between deciding to wait and waiting: a
        # wake-up that lands while the dispatcher is mid-step is not lost.
        self._kicked = True
        self._cond.notify_all()

    def recheck_credits(self) -> None:
        """Check credits at once (SIGHUP); a successful check lifts any pause."""
        with self._cond:
            self._check_now = True
            self._kick_locked()

    @property
    def paused(self) -> str | None:
        """The pause reason, or None while dispatching."""
        return self._paused

    @property
    def in_flight(self) -> int:
        """Jobs being processed right now."""
        with self._cond:
            return len(self._in_flight)

    def alive(self) -> bool:
        """The dispatcher thread is running."""
        return self._thread.is_alive()

    def stop(self, timeout: float) -> list[Job]:
        """Stop claiming, wait up to ``timeout`` for jobs in flight; return the rest."""
        with self._cond:
            self._stopping = True
            self._kick_locked()
        # Closing the pacer first makes every wait for a rate-limit slot give up
        # (jobs not yet sent go back to the queue, a credit check is dropped):
        # nothing new is sent once stopping, and a full window does not hold up
        # the drain. Requests already sent are not affected.
        self._pacer.close()
        self._thread.join(timeout=5.0)
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._in_flight and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            left = list(self._in_flight.values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for job in left:
            # Its request may still be charging: the next send is a possible resend.
            self._queue.release(job.id, resend=True)
        return left

    # -- the loop --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                self._kicked = False
            try:
                wait = self._step()
            except (BgsyncdError, OSError):
                # A database or disk fault: try again soon. Anything else is a
                # bug; it ends the thread and the daemon's supervisor exits 1.
                log.exception("dispatch.error")
                wait = 1.0
            if wait > 0:
                with self._cond:
                    if not self._stopping and not self._kicked:
                        self._cond.wait(wait)

    def _step(self) -> float:
        """Start at most one job; return how long to wait before the next step."""
        if self._credit_check_due():
            self._check_credits()
        if self._paused is not None:
            return self._until_next_check()
        with self._cond:
            busy = len(self._in_flight)
        if busy >= self._max_in_flight:
            return 60.0  # woken when a job finishes
        if self._expired():
            # Every image request would be refused (403): no request spent on
            # learning it again. A credit check showing a later expiry resumes.
            self._pause(CREDITS_EXPIRED)
            return self._until_next_check()
        if not self._credits.can_start():
            if busy:
                return 60.0  # one in flight may fail and give its credit back
            if self._credits.available is not None:
                self._pause(CREDIT_FLOOR)
            return self._until_next_check()
        delay = self._pacer.delay()
        if delay > 0:
            return delay
        ready_at = self._queue.next_ready_at(self._worker.config.folders.keys())
        if ready_at is None:
            self.idle_drained.set()
            return min(IDLE_LOOK_SECONDS, self._until_next_check())
        now = self._clock()
        if ready_at > now:
            return min(ready_at - now, self._until_next_check())
        if not self._credits.try_reserve():
            return 0.0
        try:
            job = self._queue.claim(self._lease, self._worker.config.folders.keys())
        except Exception:
            self._credits.settle(charged=False)  # the reservation must not leak
            raise
        if job is None:
            # What is pending belongs to folders no longer configured: look again later.
            self._credits.settle(charged=False)
            return IDLE_LOOK_SECONDS
        self.idle_drained.clear()
        with self._cond:
            self._in_flight[job.id] = job
        self._pool.submit(self._run_job, job)
        return 0.0

    def _run_job(self, job: Job) -> None:
        result = Result(Kind.RELEASED)
        try:
            result = self._worker.process(job)
        except Exception:
            # Not put straight back: the dispatcher would claim it again at once.
            log.exception("job.error", folder=job.folder, path=job.relpath)
            self._queue.retry_later(job.id, self._clock() + CHECK_RETRY_SECONDS, "internal error")
        finally:
            self._credits.settle(result.charged)
            with self._cond:
                self._in_flight.pop(job.id, None)
                if result.kind is Kind.PAUSED and result.reason:
                    self._pause_locked(result.reason)
                elif result.kind is Kind.RATE_LIMITED:
                    self._pacer.note_rate_limited(result.retry_after)
                self._kick_locked()
            self._on_state_change()

    # -- credits and pauses ----------------------------------------------------------

    def _credit_check_due(self) -> bool:
        return self._check_now or self._credits.check_due()

    def _until_next_check(self) -> float:
        return max(0.05, self._credits.seconds_until_check())

    def _check_credits(self) -> None:
        self._check_now = False
        try:
            credits = self._client().available_credits()
        except Stopped:
            return
        except AccountError as exc:
            self._credits.note_check_failed()
            self._pause(exc.reason)
            return
        except ApiError as exc:
            self._credits.note_check_failed(retry_in=CHECK_RETRY_SECONDS)
            log.warning("credits.check_failed", error=exc.message, status=exc.status)
            return
        expires = credits.expires_at.timestamp() if credits.expires_at else None
        self._credits.update(credits.available, expires)
        log.info("credits.checked", available=credits.available, floor=self._credits.floor)
        if self._expired():
            self._pause(CREDITS_EXPIRED)
        elif self._credits.can_start() or self._credits.in_flight:
            self._resume()
        else:
            self._pause(CREDIT_FLOOR)

    def _expired(self) -> bool:
        """The last credit check gave an expiry that has passed (by our clock)."""
        expires = self._credits.expires_at
        return expires is not None and expires <= self._clock()

    def _pause(self, reason: str) -> None:
        with self._cond:
            self._pause_locked(reason)

    def _pause_locked(self, reason: str) -> None:
        if self._paused == reason:
            return
        self._paused = reason
        self._recorder.paused(reason)
        log.warning("dispatch.paused", reason=reason)
        self._on_state_change()

    def _resume(self) -> None:
        with self._cond:
            if self._paused is None:
                return
            reason, self._paused = self._paused, None
        self._recorder.paused(None)
        log.info("dispatch.resumed", after=reason)
        self._on_state_change()
