"""The pacer beside a request log that decides: the fleet's, shared by every host.

A ``storage.SharedRequestLog`` checks and records a start in one step (on
PostgreSQL: one transaction under the account's lock, on the server's clock);
the pacer only asks it and waits what it says, within bounds (:func:`refusal_wait`),
and keeps a :class:`NoLog` in place of the log it would otherwise read.
"""

from __future__ import annotations

import math

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
