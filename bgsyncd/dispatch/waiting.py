"""What dispatch waits for before the next request, and how long (SPEC §5 "Waiting is visible").

:func:`waiting_for` is pure: from the pause, the next credit check, the next
job ready and the rate limit's delay, the reason (``rate_limit``, ``retry``,
``paused`` or None) and the seconds. ``status --json`` shows it as
``"waiting": {"reason", "seconds"}``, the gauge
``bgsyncd_dispatch_next_request_seconds`` as a number (0 when a request may
start now). The daemon publishes the time it ends (:func:`encode`), so a
``status`` read later counts down without asking the daemon.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from bgsyncd.reasons import lifted_by_a_credit_check

RATE_LIMIT = "rate_limit"
RETRY = "retry"
PAUSED = "paused"


@dataclass(frozen=True)
class Waiting:
    """Why no request starts now (None: nothing holds one back) and for how many seconds."""

    reason: str | None = None
    seconds: float | None = None  # None: not known (a pause lifted by its own rule), or no work

    def as_json(self) -> dict[str, object]:
        """The ``waiting`` object of ``status --json``."""
        seconds = None if self.seconds is None else round(self.seconds, 1)
        return {"reason": self.reason, "seconds": seconds}

    @property
    def gauge(self) -> float:
        """Seconds until the next request may start: 0 now, NaN while not known."""
        if self.reason is None:
            return 0.0
        return math.nan if self.seconds is None else self.seconds


def waiting_for(
    *,
    paused: str | None,
    check_in: float,
    ready_at: float | None,
    now: float,
    rate_wait: float,
) -> Waiting:
    """The wait, given the pause, the next credit check, the next job ready and the pacer.

    ``check_in`` counts only for a pause a credit check may lift (the others
    are lifted by their own rule, at no known time); ``ready_at``: when a job
    may be claimed (now or earlier: one is pending), None when there is none.
    """
    if paused is not None:
        return Waiting(PAUSED, max(0.0, check_in) if lifted_by_a_credit_check(paused) else None)
    if ready_at is None:
        return Waiting()
    ready_in = max(0.0, ready_at - now)
    rate_wait = max(0.0, rate_wait)
    if ready_in > 0 and ready_in >= rate_wait:
        return Waiting(RETRY, ready_in)
    if rate_wait > 0:
        return Waiting(RATE_LIMIT, rate_wait)
    return Waiting()


def encode(w: Waiting, now: float) -> str:
    """``w`` for the database: the reason and the wall-clock time its wait ends."""
    until = None if w.seconds is None else round(now + w.seconds, 1)
    return json.dumps({"reason": w.reason, "until": until})


def decode(text: str | None, now: float) -> Waiting:
    """What :func:`encode` wrote, as seen at ``now``; no wait when unreadable."""
    try:
        data = json.loads(text or "{}")
        until = data.get("until")
        seconds = None if until is None else max(0.0, float(until) - now)
        reason = data.get("reason")
        return Waiting(reason if isinstance(reason, str) else None, seconds)
    except (ValueError, TypeError, AttributeError):
        return Waiting()


def describe(waiting: dict[str, object]) -> str:
    """The ``waiting`` object of ``status --json`` as ``status`` prints it."""
    reason, seconds = waiting.get("reason"), waiting.get("seconds")
    if reason is None:
        return "no"
    text = str(reason).replace("_", " ")
    return text if not isinstance(seconds, (int, float)) else f"{text}, {seconds:.0f} s"
