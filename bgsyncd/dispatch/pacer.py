"""The sliding-log rate limit: never more than ``limit`` request starts in any window.

A token bucket with a burst lets up to about twice the limit through one window;
only a log of start times keeps "never more than N in any window" (PITFALLS).
The log is persisted through a ``storage.RequestLog`` (SQLite in the daemon) so
starts made before a restart still count.

The window is widened by ``margin`` seconds when deciding, to absorb clock and
network skew between us and the API's own counter.

Every decision uses one rule: a start at ``t`` is in the window at ``now`` iff
``t + window + margin > now``. ``delay()`` is computed from the same
expression, so "delay is 0" and "there is room" never disagree by a rounding
error.

With a ``storage.SharedRequestLog`` (the fleet's, on PostgreSQL) the database
decides every start instead: it checks and records in one transaction on its
own clock, so hosts whose clocks disagree still share one window. Memory then
keeps only this host's starts and the delay the database last gave: they may
hold a start back (and tell the dispatcher when to look again), never grant
one. A database that cannot answer starts nothing (QueueUnavailable).

No wait the pacer computes can be unbounded: a 429's block is capped at
``RETRY_AFTER_WINDOWS`` windows, and a blocked :meth:`Pacer.acquire` wakes at
least every ``LONGEST_WAIT`` seconds to look again, so no value, however wrong,
reaches ``Condition.wait`` as a timeout it cannot take (OverflowError).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

from bgsyncd.errors import BgsyncdError, QueueUnavailable, Stopped
from bgsyncd.storage.contract import RequestLog, SharedRequestLog

RETRY_AFTER_WINDOWS = 10
"""A 429's Retry-After blocks starts for at most this many windows (SPEC §5)."""


# -- beside a request log that decides (the fleet's, shared by every host) -----
# The pacer only asks it and waits what it says, within bounds (refusal_wait),
# and keeps a NoLog in place of the log it would otherwise read.

LONGEST_WAIT = 60.0
"""No wait a pacer computes or is told is longer: it looks again after this."""
# A shared log's refusal without a usable delay (nan) is asked again this soon.
NAN_RETRY = 0.1
# Nor sooner than this after any refusal: asking is a database round trip.
SHORTEST_REFUSAL_WAIT = 0.005


class NoLog:
    """The ``storage.RequestLog`` of a pacer whose shared log decides: never read."""

    def record(self, t: float) -> None:
        """Nothing to store: the shared log recorded the start."""

    def since(self, t: float) -> list[float]:
        """Nothing stored."""
        return []

    def close(self) -> None:
        """Nothing to close."""


def refusal_wait(given: float) -> float:
    """The wait a refusal asked for, as one ``Condition.wait`` takes.

    ``nan`` (a refusal without a usable delay) looks again soon; ``inf`` or a
    value past ``LONGEST_WAIT`` waits that long, then asks again.
    """
    if math.isnan(given):
        return NAN_RETRY
    return min(max(given, SHORTEST_REFUSAL_WAIT), LONGEST_WAIT)


class Pacer:
    """Gate every API request so no ``window`` sees more than ``limit`` starts.

    Thread-safe: worker threads and the dispatcher share one instance. Time is
    injected: ``clock`` reads it, and a blocked :meth:`acquire` lets it pass with
    ``wait(condition, timeout)``, which waits on the pacer's condition (its lock
    released) for at most ``timeout`` seconds; a test's wait advances a fake clock.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        log: RequestLog | SharedRequestLog,
        clock: Callable[[], float] = time.time,
        margin: float = 0.25,
        wait: Callable[[threading.Condition, float], object] = threading.Condition.wait,
    ) -> None:
        _validate(limit, window)
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self._limit = limit
        self._window = window
        self._margin = margin
        # A log we read and decide on, or one that decides (then never read).
        self._shared: SharedRequestLog | None = None
        self._log: RequestLog
        if isinstance(log, SharedRequestLog):
            self._shared, self._log = log, NoLog()
        else:
            self._log = log
        self._clock = clock
        self._wait = wait
        self._cond = threading.Condition()
        self._closed = False
        # A 429 blocks every start until this time; the length is kept so a
        # clock that jumps backwards cannot stretch the block (see _normalise).
        self._blocked_until: float | None = None
        self._block_length = 0.0
        self._starts: deque[float] = deque()
        # Logged starts "in the future" (the clock went back): when each was first seen.
        self._first_seen: dict[float, float] = {}
        # Starts this instance recorded (raw times), to tell them from other
        # processes' starts when the shared log is read again.
        self._own: Counter[float] = Counter()
        # Shared log only: one thread asks the database at a time, and after a
        # refusal none asks again before the delay it gave (a hint, bounded
        # like a 429's block against a clock that jumps back).
        self._asking = False
        self._not_before: float | None = None
        self._hint_length = 0.0
        if self._shared is None:
            now = clock()
            self._load(self._log.since(now - self._span()), now)

    # -- public ------------------------------------------------------------

    @property
    def limit(self) -> int:
        """Requests allowed per window."""
        return self._limit

    @property
    def window(self) -> float:
        """The window length in seconds (without the margin)."""
        return self._window

    def delay(self) -> float:
        """Seconds until a start would be allowed; 0.0 means now.

        With a shared log this is this host's best guess (its own starts, the
        last delay the database gave, a 429): the database may still say no.
        """
        with self._cond:
            return self._delay(self._clock())

    def in_window(self) -> int:
        """Request starts in the current window (the status page's "requests in the window").

        With a shared log: the fleet's, as the database has them.
        """
        if self._shared is not None:
            return len(self._shared.since(self._clock() - self._window))
        with self._cond:
            now = self._clock()
            self._normalise(now)
            return sum(1 for t in self._starts if t > now - self._window)

    def acquire(self) -> float:
        """Block until a start is allowed, record it and return its time.

        Raises :class:`~bgsyncd.errors.Stopped` once :meth:`close` was called, and
        :class:`~bgsyncd.errors.QueueUnavailable` when a shared log cannot answer
        (fail closed: no request starts).
        """
        if self._shared is not None:
            return self._ask_shared(self._shared)
        with self._cond:
            while True:
                if self._closed:
                    raise Stopped("pacer closed")
                now = self._clock()
                wait = self._delay(now)
                if wait <= 0.0:
                    wait = self._delay_after_sync(now)
                if wait <= 0.0 and self._record_confirmed(now):
                    return now
                # Re-check after waking: another thread may have taken the slot,
                # a 429 may have come in, or we were closed. After standing back
                # from a race with another process wait is 0: just look again.
                self._wait(self._cond, min(wait, LONGEST_WAIT))

    def note_rate_limited(self, retry_after: float | None) -> None:
        """After a 429: allow no start for ``retry_after`` seconds.

        The block is capped at ``RETRY_AFTER_WINDOWS`` windows (a Retry-After of ten
        years must not stop the daemon). Without a usable Retry-After (None, negative,
        NaN) the API's own log is full by its count, whatever ours says; any request
        it counted began before now, so it has left the window by
        ``now + window + margin``.
        """
        with self._cond:
            now = self._clock()
            length = self._block_for(retry_after)
            until = now + length
            if self._blocked_until is None or until > self._blocked_until:
                self._blocked_until = until
                self._block_length = length
            self._cond.notify_all()

    def reconfigure(self, limit: int, window: float) -> None:
        """Apply a new limit and window (configuration reload)."""
        _validate(limit, window)
        with self._cond:
            old_span = self._span()
            self._limit = limit
            self._window = window
            if self._span() > old_span and self._shared is None:
                # Starts older than the old window were dropped from memory;
                # the log still has them and they may count in the longer one.
                now = self._clock()
                self._load(self._log.since(now - self._span()), now, own_included=True)
            self._cond.notify_all()

    def close(self) -> None:
        """Make blocked and future :meth:`acquire` calls raise Stopped."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- the shared log ------------------------------------------------------

    def _ask_shared(self, shared: SharedRequestLog) -> float:
        """Let the shared log decide: block until it grants a start, return its time."""
        with self._cond:
            while True:
                if self._closed:
                    raise Stopped("pacer closed")
                asked_at = self._clock()
                wait = self._delay(asked_at)
                if wait <= 0.0 and not self._asking:
                    given = self._ask_unlocked(shared)
                    if self._closed:  # recorded but never made: the safe side
                        raise Stopped("pacer closed")
                    if given <= 0.0:
                        # Memory keeps the time we asked, never later than the
                        # database's: the local guess stays below its count.
                        self._starts.append(asked_at)
                        return asked_at
                    self._hint_length = refusal_wait(given)
                    self._not_before = self._clock() + self._hint_length
                    continue
                # Another thread is asking (woken when it is done), or the guess says wait.
                self._wait(self._cond, min(wait, LONGEST_WAIT) if wait > 0 else LONGEST_WAIT)

    def _ask_unlocked(self, shared: SharedRequestLog) -> float:
        """Ask the database with our lock released (it may take a while), one thread at a time."""
        self._asking = True
        limit, window, margin = self._limit, self._window, self._margin
        self._cond.release()
        try:
            return shared.try_start(limit, window, margin)
        except (Stopped, QueueUnavailable):
            raise
        except BgsyncdError as exc:  # the database cannot answer: no request starts
            raise QueueUnavailable(str(exc)) from None
        finally:
            self._cond.acquire()
            self._asking = False
            self._cond.notify_all()

    # -- internals (call with the lock held) --------------------------------

    def _span(self) -> float:
        return self._window + self._margin

    def _block_for(self, retry_after: float | None) -> float:
        if retry_after is None or math.isnan(retry_after) or retry_after < 0:
            return self._span()
        return min(float(retry_after), RETRY_AFTER_WINDOWS * self._window)

    def _load(self, times: list[float], now: float, *, own_included: bool = False) -> None:
        """Merge logged starts into memory without counting any twice.

        ``times`` may hold starts loaded before. Unless ``own_included``
        (the whole log, read again), it holds only other processes' starts
        (the caller took ``_own`` away), so at each time memory keeps our own
        starts plus the most foreign ones seen: two processes may record the
        same time.
        """
        # Starts "in the future" mean the clock went back since they were
        # recorded: count them as starting when first seen, which keeps them in
        # the window for at least a full window of real time. Only when first
        # seen: the log hands them back at every read until the clock passes
        # them, and counting them as starting now each time would hold every
        # start back until then.
        for t in [t for t in self._first_seen if t + self._span() <= now]:
            del self._first_seen[t]

        def seen(t: float) -> float:
            return t if t <= now else self._first_seen.setdefault(t, now)

        merged = Counter(min(t, now) for t in self._starts)
        own = Counter() if own_included else Counter(seen(t) for t in self._own.elements())
        for t, n in Counter(seen(t) for t in times).items():
            merged[t] = max(merged[t], own[t] + n)
        self._starts = deque(sorted(merged.elements()))
        self._normalise(now)

    def _normalise(self, now: float) -> None:
        """Drop starts that left the window; clamp times from a clock that went back."""
        span = self._span()
        starts = self._starts
        while starts and starts[0] + span <= now:
            starts.popleft()
        # The deque is sorted, so any future starts are at the right end.
        # Clamping them to now keeps it sorted.
        clamped = 0
        while starts and starts[-1] > now:
            starts.pop()
            clamped += 1
        starts.extend([now] * clamped)
        if self._blocked_until is not None:
            if self._blocked_until <= now:
                self._blocked_until = None
            elif self._blocked_until - now > self._block_length:
                self._blocked_until = now + self._block_length
        if self._not_before is not None:
            if self._not_before <= now:
                self._not_before = None
            elif self._not_before - now > self._hint_length:
                self._not_before = now + self._hint_length

    def _delay(self, now: float) -> float:
        self._normalise(now)
        wait = 0.0
        if self._blocked_until is not None:
            wait = self._blocked_until - now
        if self._not_before is not None:
            wait = max(wait, self._not_before - now)
        excess = len(self._starts) - self._limit
        if excess >= 0:
            # Room comes when the (excess + 1)-th oldest start leaves.
            wait = max(wait, self._starts[excess] + self._span() - now)
        return max(wait, 0.0)

    def _delay_after_sync(self, now: float) -> float:
        """The delay once starts logged by other processes are merged in.

        Another process on the same log (``bgsyncd credits`` beside the daemon,
        later other hosts) records its starts there; read them just before
        granting a start, which happens at most ``limit`` times a window.
        """
        foreign = Counter(self._log.since(now - self._span())) - self._own
        if foreign:
            self._load(list(foreign.elements()), now)
        return self._delay(now)

    def _record_confirmed(self, now: float) -> bool:
        """Record a start at ``now``; True if it is ours to make.

        Two processes on one log (the daemon and ``bgsyncd credits``) wake at
        the same instant when a slot frees, and each may read the log before
        the other writes: both would start. So each reads the log again after
        its own write. Of any set of racers the last to read sees every write
        and stands back, its start recorded but never made, which only errs
        on the safe side. A racer's clock reading may be a little after ours:
        merged into memory, it counts as starting now, like any start "in
        the future" (see ``_load``).
        """
        self._record(now)
        foreign = Counter(self._log.since(now - self._span())) - self._own
        if foreign:
            self._load(list(foreign.elements()), now)
        self._normalise(now)
        return len(self._starts) <= self._limit

    def _record(self, now: float) -> None:
        # Memory first: if the log write fails the start still counts here,
        # and the caller sees the error and sends nothing (safe side).
        self._starts.append(now)
        span = self._span()
        for t in [t for t in self._own if t + span < now]:
            del self._own[t]
        self._own[now] += 1
        self._log.record(now)


def _validate(limit: int, window: float) -> None:
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if window <= 0:
        raise ValueError(f"window must be > 0, got {window}")
