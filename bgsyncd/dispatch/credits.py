"""The credit floor and the local credit count.

One image request takes one credit. No request starts that could take the
credits below the floor, counting the requests in flight: with 13 credits and a
floor of 10 exactly 3 start; with a floor of 0 every credit can be used.

Between credit checks the count is kept locally: ``reserve()`` when a request
starts, ``settle(charged)`` when it ends. An outcome we cannot know (read
timeout, dropped connection) is settled as charged, so the local count errs
low and the floor holds.

When to check (``check_due``): at start, every ``check_interval`` seconds, and
once, at once, when the local count (decremented per charged request) reaches
the floor, in case the account was topped up. That one re-check is not
repeated while the count stays at the floor, so a paused daemon does not spend
its rate limit asking.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def has_room(available: int | None, in_flight: int, floor: int) -> bool:
    """The floor rule: one more start leaves ``floor`` credits once all in flight are charged."""
    return available is not None and available - in_flight - 1 >= floor


def count_at_floor(available: int | None, floor: int) -> bool:
    """The count itself (requests in flight aside) allows no start: it "reaches the floor"."""
    return available is not None and available - 1 < floor


class CreditGuard:
    """Decides whether an image request may start, given the credit floor.

    Thread-safe: the dispatcher and the workers share one instance.
    """

    def __init__(
        self, floor: int, check_interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if floor < 0:
            raise ValueError(f"floor must be >= 0, got {floor}")
        if check_interval <= 0:
            raise ValueError(f"check_interval must be > 0, got {check_interval}")
        self._floor = floor
        self._check_interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._available: int | None = None
        self._expires_at: float | None = None
        self._in_flight = 0
        self._last_checked: float | None = None
        # Time of the last check attempt (success or failure) and when the
        # next one is due after it; a failure may ask for a sooner retry.
        self._last_attempt: float | None = None
        self._next_after = check_interval
        # True once the local count reached the floor and no check has
        # happened since: the single immediate re-check.
        self._floor_recheck = False

    # -- the result of a credit check ---------------------------------------

    def update(self, available: int, expires_at: float | None) -> None:
        """Take the result of a credit check (``expires_at``: POSIX time or None)."""
        with self._lock:
            now = self._clock()
            self._available = available
            self._expires_at = expires_at
            self._last_checked = now
            self._last_attempt = now
            self._next_after = self._check_interval
            self._floor_recheck = False

    def note_check_failed(self, retry_in: float | None = None) -> None:
        """Record a failed credit check; the next is due after ``retry_in`` seconds.

        Without ``retry_in`` it waits ``check_interval``. Either way a failed
        check also counts as the one re-check at the floor, so failures never
        loop.
        """
        with self._lock:
            self._last_attempt = self._clock()
            self._next_after = self._check_interval if retry_in is None else max(0.0, retry_in)
            self._floor_recheck = False

    def check_due(self) -> bool:
        """True when a credit check should run now."""
        with self._lock:
            if self._last_attempt is None:
                return True
            if self._clock() - self._last_attempt >= self._next_after:
                return True
            return self._floor_recheck and self._at_floor()

    def seconds_until_check(self) -> float:
        """How long until ``check_due()`` turns True by time alone (0.0 if due)."""
        with self._lock:
            if self._last_attempt is None:
                return 0.0
            return max(0.0, self._last_attempt + self._next_after - self._clock())

    # -- requests ------------------------------------------------------------

    def can_start(self) -> bool:
        """True iff credits are known and one more request keeps them >= floor."""
        with self._lock:
            return self._room()

    def try_reserve(self) -> bool:
        """``can_start()`` and ``reserve()`` in one step, so two threads cannot both pass."""
        with self._lock:
            if not self._room():
                return False
            self._in_flight += 1
            return True

    def reserve(self) -> None:
        """A request is starting: count it as in flight."""
        with self._lock:
            self._in_flight += 1

    def settle(self, charged: bool) -> None:
        """A request ended; ``charged`` (pass True when unknown) spends a credit."""
        with self._lock:
            if self._in_flight == 0:
                raise RuntimeError("settle() without a matching reserve()")
            self._in_flight -= 1
            if charged and self._available is not None:
                before = self._count_at_floor()
                self._available -= 1
                if not before and self._count_at_floor():
                    self._floor_recheck = True

    def set_floor(self, floor: int) -> None:
        """Apply a new floor (configuration reload)."""
        if floor < 0:
            raise ValueError(f"floor must be >= 0, got {floor}")
        with self._lock:
            before = self._count_at_floor()
            self._floor = floor
            if not before and self._count_at_floor():
                self._floor_recheck = True

    def set_check_interval(self, check_interval: float) -> None:
        """Apply a new check interval (configuration reload)."""
        if check_interval <= 0:
            raise ValueError(f"check_interval must be > 0, got {check_interval}")
        with self._lock:
            if self._next_after == self._check_interval:
                self._next_after = check_interval
            self._check_interval = check_interval

    # -- read-only views -----------------------------------------------------

    @property
    def available(self) -> int | None:
        """The local credit count, or None before the first check."""
        with self._lock:
            return self._available

    @property
    def expires_at(self) -> float | None:
        """When the credits expire (POSIX time), if the API said."""
        with self._lock:
            return self._expires_at

    @property
    def floor(self) -> int:
        """The credit floor."""
        with self._lock:
            return self._floor

    @property
    def in_flight(self) -> int:
        """Requests reserved and not yet settled."""
        with self._lock:
            return self._in_flight

    @property
    def last_checked(self) -> float | None:
        """Clock time of the last successful check, or None."""
        with self._lock:
            return self._last_checked

    # -- internals (call with the lock held) ---------------------------------

    def _room(self) -> bool:
        return has_room(self._available, self._in_flight, self._floor)

    def _at_floor(self) -> bool:
        return self._available is not None and not self._room()

    def _count_at_floor(self) -> bool:
        # What "reaches the floor" means for the immediate re-check.
        return count_at_floor(self._available, self._floor)
