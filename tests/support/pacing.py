"""For pacer tests: a request log in memory, and waits that record (and may fake) time."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tests.support.helpers import FakeClock

MAX_FAKE_WAITS = 2_000


class MemoryRequestLog:
    """A ``storage.RequestLog`` held in memory."""

    def __init__(self) -> None:
        self._times: list[float] = []
        self._lock = threading.Lock()

    def record(self, t: float) -> None:
        """Store one request start time."""
        with self._lock:
            self._times.append(t)

    def since(self, t: float) -> list[float]:
        """Return the stored start times later than ``t``, oldest first."""
        with self._lock:
            return sorted(x for x in self._times if x > t)

    def close(self) -> None:
        """Nothing to close."""


class Waits:
    """A pacer's ``wait`` (see ``Pacer``) that records every timeout it is given.

    Given a FakeClock nothing sleeps: each wait advances the clock by its whole
    timeout, as a wait nothing cut short lasts, so ``acquire()`` returns the very
    time its start became allowed. ``while_waiting`` runs at the start of each
    such wait with the pacer's lock released, as another thread would run then.
    Without a clock it waits on the condition for real.
    """

    def __init__(
        self, clock: FakeClock | None = None, while_waiting: Callable[[], object] | None = None
    ) -> None:
        self.clock = clock
        self.while_waiting = while_waiting
        self.timeouts: list[float] = []

    def __call__(self, cond: threading.Condition, timeout: float) -> None:
        self.timeouts.append(timeout)
        if self.clock is None:
            cond.wait(timeout)
            return
        # A pacer that never finds room would otherwise spin here for ever.
        assert len(self.timeouts) <= MAX_FAKE_WAITS, "acquire never found room on fake time"
        cond.release()
        try:
            if self.while_waiting is not None:
                self.while_waiting()
            self.clock.advance(timeout)
        finally:
            cond.acquire()
