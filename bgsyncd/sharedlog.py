"""What a pacer needs of a request log that decides: the fleet's, shared by every host.

A :class:`SharedRequestLog` checks and records a start in one step (on
PostgreSQL: one transaction under the account's lock, on the server's clock);
the pacer only asks it and waits what it says, within bounds (:func:`refusal_wait`).
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

LONGEST_WAIT = 60.0
"""No wait a pacer computes or is told is longer: it looks again after this."""
# A shared log's refusal without a usable delay (nan) is asked again this soon.
NAN_RETRY = 0.1
# Nor sooner than this after any refusal: asking is a database round trip.
SHORTEST_REFUSAL_WAIT = 0.005


@runtime_checkable
class SharedRequestLog(Protocol):
    """A request log that decides: the fleet's, shared by every host on one account."""

    def try_start(self, limit: int, window: float, margin: float) -> float:
        """Record a start now if the window has room and return 0.0; else the seconds to wait."""


class NoLog:
    """The :class:`RequestLog` of a pacer whose shared log decides: never read."""

    def record(self, t: float) -> None:
        """Nothing to store: the shared log recorded the start."""

    def since(self, t: float) -> list[float]:
        """Nothing stored."""
        return []


def refusal_wait(given: float) -> float:
    """The wait a refusal asked for, as one ``Condition.wait`` takes.

    ``nan`` (a refusal without a usable delay) looks again soon; ``inf`` or a
    value past ``LONGEST_WAIT`` waits that long, then asks again.
    """
    if math.isnan(given):
        return NAN_RETRY
    return min(max(given, SHORTEST_REFUSAL_WAIT), LONGEST_WAIT)
