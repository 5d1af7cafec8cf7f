"""The daemon's state, published: to metrics, to systemd and to the database.

The main loop asks :meth:`Publisher.refresh_if_due` on every turn. A refresh
reads the queue's counts and the credit guard and publishes them: job counts
and credits to metrics, a status line to systemd (``STATUS=``), the pause and
the credits and what the next request waits for to the database for
``bgsyncd status``, each only when it changed.
An idle daemon asks its database nothing: a refresh is due when something
changed (``dirty``: files queued, a job's state, a pause), after a credit
check, or every ``REFRESH_SECONDS`` while open jobs are ageing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from bgsyncd.dispatch.credits import CreditGuard
from bgsyncd.dispatch.status import (
    STATE_CREDITS,
    STATE_PAUSED,
    STATE_PAUSED_SINCE,
    STATE_WAITING,
)
from bgsyncd.dispatch.waiting import Waiting, encode
from bgsyncd.ops.metrics import Recorder
from bgsyncd.ops.notify import Notifier
from bgsyncd.storage.contract import STATES, Store

REFRESH_SECONDS = 5.0


class Publisher:
    """Publishes queue counts, credits and the pause; ``dirty`` asks for the next refresh."""

    def __init__(
        self,
        queue: Store,
        credits: CreditGuard,
        metrics: Recorder,
        notifier: Notifier,
        paused: Callable[[], str | None],
        *,
        ageing: bool = True,
        waiting: Callable[[], Waiting] = Waiting,
    ) -> None:
        self._queue = queue
        self._credits = credits
        self._metrics = metrics
        self._notifier = notifier
        self._paused = paused
        self._ageing = ageing  # `once` publishes no age that moves by itself
        self._waiting = waiting  # what the next request waits for (SPEC §5)
        self.dirty = threading.Event()
        self._published: dict[str, str | None] = {}
        self._published_check: float | None = None
        self._last_refresh = 0.0
        self._open_jobs = False

    def due(self) -> bool:
        """Something changed, or open jobs are ageing; an idle daemon asks nothing."""
        if self.dirty.is_set() or self._credits.last_checked != self._published_check:
            return True
        age_moves = self._open_jobs and self._ageing
        return age_moves and time.monotonic() - self._last_refresh >= REFRESH_SECONDS

    def refresh_if_due(self) -> None:
        """Refresh when :meth:`due`."""
        if self.due():
            self.dirty.clear()
            self.refresh()

    def refresh(self) -> None:
        """Publish queue counts to metrics, systemd and the database."""
        self._last_refresh = time.monotonic()
        self._published_check = self._credits.last_checked
        counts = self._queue.counts()
        totals = dict.fromkeys(STATES, 0)
        for per in counts.values():
            for state, n in per.items():
                totals[state] += n
        oldest = self._queue.oldest_pending_queued_at()
        self._open_jobs = oldest is not None
        age = max(0.0, time.time() - oldest) if oldest is not None else None
        self._metrics.jobs(totals, age)
        paused = self._paused()
        available = self._credits.available
        if available is not None:
            # The local count moves with every success, not only at a check.
            self._metrics.credits(available, self._credits.expires_at)
        if paused != self._published.get(STATE_PAUSED, ""):
            # When this pause began, for the status page (a restart keeps a held pause's time).
            since = None if paused is None else str(round(time.time(), 3))
            if paused is None or self._queue.get_state(STATE_PAUSED) != paused:
                self._publish(STATE_PAUSED_SINCE, since)
        self._publish(STATE_PAUSED, paused)
        waiting = self._waiting()
        self._metrics.next_request(waiting.gauge)
        self._publish(STATE_WAITING, encode(waiting, time.time()))
        self._publish(STATE_CREDITS, None if available is None else str(available))
        status = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in totals.items() if n)
        status = (status or "idle") + (f"; paused: {paused}" if paused else "")
        if status != self._published.get("status"):
            self._published["status"] = status
            self._notifier.status(status)

    def _publish(self, key: str, value: str | None) -> None:
        """Write daemon state for `bgsyncd status`, only when it changed."""
        if key in self._published and self._published[key] == value:
            return
        self._queue.set_state(key, value)
        self._published[key] = value
