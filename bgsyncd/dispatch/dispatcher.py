"""Taking jobs from the queue at the account's limits.

One dispatcher thread decides *when* a job may start: not while dispatch is
paused, not past ``max_in_flight``, not before the pacer allows a request, not
when the credits could go below the floor; worker threads do the rest. Every
wait is a timed wait on one condition variable, woken by new work, finished
jobs and signals (an idle dispatcher costs nothing), and none is longer than
``MAX_WAIT_SECONDS`` whatever a pacer or a clock says (a Retry-After of ten
years, ``inf``, ``nan``): ``Condition.wait`` never gets a timeout it cannot take.

Pauses are a set (:mod:`bgsyncd.dispatch.pauses`), each reason lifted by its own rule;
dispatch resumes when none holds. Other components raise and lift theirs with
:meth:`Dispatcher.raise_pause` and :meth:`Dispatcher.lift_pause`.

In a fleet (SPEC §8) it gets :class:`~bgsyncd.dispatch.pauses.Pauses` on the fleet's store, a
pacer on the fleet's request log and a ``FleetCreditGuard`` (the fleet's reasons, limit
and floor), and looks at the fleet's pause reasons every few seconds.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from bgsyncd.api.client import Client
from bgsyncd.dispatch.credit_check import CHECK_RETRY_SECONDS, CreditCheck
from bgsyncd.dispatch.credits import CreditGuard
from bgsyncd.dispatch.free_lane import FreeLane
from bgsyncd.dispatch.pacer import Pacer
from bgsyncd.dispatch.pauses import Pauses
from bgsyncd.dispatch.waiting import Waiting, waiting_for
from bgsyncd.errors import BgsyncdError, QueueUnavailable
from bgsyncd.jobs.outcomes import Result, Transition
from bgsyncd.jobs.worker import Worker
from bgsyncd.logs import get_logger
from bgsyncd.ops.metrics import Recorder
from bgsyncd.reasons import API_UNREACHABLE, CREDIT_FLOOR, CREDITS_EXPIRED, QUEUE_UNAVAILABLE, Lift
from bgsyncd.storage.contract import Job, LeaseLost, Store

log = get_logger("bgsyncd.dispatch")

# An idle queue is looked at this often for work added by another process
# (`bgsyncd retry`); a job that crashed its worker is tried again after
# CHECK_RETRY_SECONDS.
IDLE_LOOK_SECONDS = 5.0
# The longest the dispatcher ever sleeps without looking again.
MAX_WAIT_SECONDS = 60.0


def clamp_wait(seconds: float) -> float:
    """``seconds`` as a timeout every ``wait()`` accepts: within [0, MAX_WAIT_SECONDS].

    ``nan`` and negative values are 0 (look again now); ``inf`` and anything
    huge (``1e12`` overflows ``time_t`` in ``Condition.wait``) are the maximum.
    """
    if math.isnan(seconds) or seconds <= 0.0:
        return 0.0
    return min(seconds, MAX_WAIT_SECONDS)


class Dispatcher:
    """Claims jobs and runs them on a pool of ``max_in_flight`` threads."""

    def __init__(
        self,
        queue: Store,
        worker: Worker,
        pacer: Pacer,
        credits: CreditGuard,
        client: Callable[[], Client],
        recorder: Recorder,
        *,
        max_in_flight: int,
        lease_seconds: float,
        on_state_change: Callable[[], None] = lambda: None,
        on_pause: Callable[[str, Mapping[str, object]], None] = lambda reason, context: None,
        clock: Callable[[], float] = time.time,
        pauses: Pauses | None = None,
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
        self._on_pause = on_pause  # told of every raise, held already or not (the probe)
        self._clock = clock
        self._cond = threading.Condition()
        self._in_flight: dict[int, Job] = {}
        self._pauses = pauses if pauses is not None else Pauses()
        self._stopping = False
        self._check_now = True
        self._kicked = False
        self._ready_at: float | None = None  # when a job may be claimed, as last seen
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="bgsyncd-worker")
        self._checks = CreditCheck(
            client,
            credits,
            worker.outage,
            held=lambda: self._pauses.held,
            raise_pause=self.raise_pause,
            lift_on=self._lift_on,
            clock=clock,
        )
        self.free = FreeLane(
            queue,
            lambda job: worker.settle_free(job, on_pause=self.raise_pause),
            lease_seconds,
            is_free=worker.needs_no_request,
            held=lambda: self._pauses.held,
            on_settled=self._settled,
            on_unavailable=lambda exc: self.raise_pause(QUEUE_UNAVAILABLE, error=str(exc)),
        )
        self._thread = threading.Thread(target=self._run, name="bgsyncd-dispatch", daemon=True)
        self.idle_drained = threading.Event()

    # -- control, from other threads -------------------------------------------------

    def start(self) -> None:
        """Start the dispatcher thread and the free lane's."""
        self._thread.start()
        self.free.start()

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
        """SIGHUP: lift the reasons a signal lifts and check credits at once.

        The check runs before any job starts, so a key still refused or an
        account still empty pauses again without an image request spent on it.
        """
        self._lift_on(Lift.SIGHUP)
        with self._cond:
            self._check_now = True
            self._kick_locked()

    def raise_pause(self, reason: str, **context: object) -> None:
        """Pause dispatch for ``reason`` (logged once, with ``context``) until it is lifted."""
        self._on_pause(reason, context)
        if not self._pauses.raise_(reason):
            return
        if reason == API_UNREACHABLE:
            self._checks.schedule_probe()
        with self._cond:
            self._kick_locked()
        self._recorder.paused(self._pauses.first)
        log.warning("dispatch.paused", reason=reason, **context)
        self._on_state_change()

    def lift_pause(self, reason: str) -> None:
        """Lift ``reason`` (its own rule decided so); dispatch resumes if none is left."""
        if not self._pauses.remove(reason):
            return
        with self._cond:
            self._kick_locked()
        self._after_lift([reason])

    @property
    def paused(self) -> str | None:
        """The first raised of the pause reasons in force, or None while dispatching."""
        return self._pauses.first

    @property
    def pauses(self) -> tuple[str, ...]:
        """Every pause reason in force, first raised first."""
        return self._pauses.held

    @property
    def in_flight(self) -> int:
        """Jobs being processed right now."""
        with self._cond:
            return len(self._in_flight) + self.free.busy

    def alive(self) -> bool:
        """The dispatcher thread (and the free lane's) is running."""
        return self._thread.is_alive() and self.free.alive()

    def waiting(self) -> Waiting:
        """What the next request waits for, and how long (SPEC §5 "Waiting is visible")."""
        paused = self.paused
        return waiting_for(
            paused=paused,
            check_in=self._credits.seconds_until_check(),
            ready_at=None if paused else self._ready_at,  # as the dispatcher last saw it
            now=self._clock(),
            rate_wait=self._pacer.delay(),
        )

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
        self.free.stop(timeout=5.0)
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._in_flight and time.monotonic() < deadline:
                self._cond.wait(clamp_wait(deadline - time.monotonic()))
            left = list(self._in_flight.values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for job in left:
            # Its request may still be charging: the next send is a possible resend.
            try:
                self._queue.release(job, resend=True)
            except LeaseLost:
                continue  # another host took it over meanwhile: not ours to give back
            except QueueUnavailable:
                break  # still in flight in the database: the next start recovers them
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
            except QueueUnavailable as exc:  # the daemon lifts it when the database answers
                self.raise_pause(QUEUE_UNAVAILABLE, error=str(exc))
                wait = 1.0
            except (BgsyncdError, OSError):
                # A database or disk fault: try again soon. Anything else is a
                # bug; it ends the thread and the daemon's supervisor exits 1.
                log.exception("dispatch.error")
                wait = 1.0
            # A fleet's pauses are looked at every few seconds, whatever else we wait for.
            wait = clamp_wait(min(wait, self._pauses.seconds_until_poll()))
            if wait > 0:
                with self._cond:
                    if not self._stopping and not self._kicked:
                        self._cond.wait(wait)

    def _step(self) -> float:
        """Start at most one job; return how long to wait before the next step."""
        self._poll_fleet_pauses()
        if self._credit_check_due():
            self._check_credits()
        if self.paused is not None:
            return self._until_next_check()
        ready_at = self._queue.next_ready_at(self._worker.config.folders.keys())
        self._ready_at = ready_at  # for waiting(): asked by other threads
        with self._cond:
            busy = len(self._in_flight)
        if busy >= self._max_in_flight:
            return 60.0  # woken when a job finishes
        if self._checks.expired():
            # Every image request would be refused (403): no request spent on
            # learning it again. A credit check showing a later expiry resumes.
            self.raise_pause(CREDITS_EXPIRED)
            return self._until_next_check()
        if not self._credits.can_start():
            if busy:
                return 60.0  # one in flight may fail and give its credit back
            if self._credits.in_flight:
                return IDLE_LOOK_SECONDS  # so may another host's (not woken by its end)
            if self._credits.available is not None:
                self.raise_pause(CREDIT_FLOOR)
            return self._until_next_check()
        delay = self._pacer.delay()
        if delay > 0:
            return delay
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
        if job is None or self._pauses.first is not None:
            # Pending work of folders no longer configured (look again later), or a pause
            # raised by another job's outcome while this one was claimed (give it back).
            if job is not None:
                self._queue.release(job)
            self._credits.settle(charged=False)
            return IDLE_LOOK_SECONDS if job is None else self._until_next_check()
        self.idle_drained.clear()
        with self._cond:
            self._in_flight[job.id] = job
        self._pool.submit(self._run_job, job)
        return 0.0

    def _run_job(self, job: Job) -> None:
        result = Result(Transition.RELEASE)
        try:
            result = self._worker.process(job, on_pause=self.raise_pause)
        except QueueUnavailable as exc:
            # Its row cannot be updated now: it stays in flight in the database
            # until the daemon, seeing the database answer, gives it back.
            self.raise_pause(QUEUE_UNAVAILABLE, error=str(exc))
        except Exception:
            # Not put straight back: the dispatcher would claim it again at once.
            log.exception("job.error", folder=job.folder, path=job.relpath)
            try:
                self._queue.retry_later(job, self._clock() + CHECK_RETRY_SECONDS, "internal error")
            except LeaseLost:
                log.warning("job.lease_lost", folder=job.folder, path=job.relpath, job=job.id)
            except BgsyncdError as exc:
                # Never lost in the pool's future: the job stays in flight in the
                # database, and the pause gives it back once a write passes again.
                self.raise_pause(QUEUE_UNAVAILABLE, error=str(exc))
        finally:
            self._credits.settle(result.charged)
            with self._cond:
                self._in_flight.pop(job.id, None)
                if result.rate_limited:
                    self._pacer.note_rate_limited(result.retry_after)
                self._kick_locked()
            self._settled(job, result)

    def _settled(self, job: Job, result: Result) -> None:
        """A job's run ended (either lane): its pause, a verdict waiting to settle, publish."""
        if result.pause is not None:
            self.raise_pause(result.pause, **result.pause_context)
        if result.settle_in is not None:
            self.free.later(job.folder, job.relpath, result.settle_in)
        self.wake()  # a job given back by the free lane may be sent now
        self._on_state_change()

    # -- credits and pauses ----------------------------------------------------------

    def _credit_check_due(self) -> bool:
        return self._check_now or self._credits.check_due()

    def _until_next_check(self) -> float:
        return max(0.05, self._credits.seconds_until_check())

    def _check_credits(self) -> None:
        self._check_now = False
        try:
            self._checks.run()
        except QueueUnavailable:  # the fleet's rate limit cannot be asked: check when it can
            self._check_now = True
            raise

    def _lift_on(self, event: Lift) -> None:
        gone = self._pauses.lift(event)
        if gone:
            with self._cond:
                self._kick_locked()
            self._after_lift(gone)

    def _poll_fleet_pauses(self) -> None:
        """Take the pause reasons other hosts of the fleet raised or lifted (when due)."""
        added, gone = self._pauses.poll()
        for reason in added:
            if reason == API_UNREACHABLE:  # this host probes too
                self._checks.schedule_probe()
            self._recorder.paused(self._pauses.first)
            log.warning("dispatch.paused", reason=reason, by="fleet")
            self._on_state_change()
        if gone:
            self._after_lift(gone)

    def _after_lift(self, gone: list[str]) -> None:
        first = self._pauses.first
        held = self._pauses.held
        self._recorder.paused(first)
        for reason in gone:
            if held:
                log.info("dispatch.pause_lifted", reason=reason, still_paused=list(held))
            else:
                log.info("dispatch.resumed", after=reason)
        self._on_state_change()
