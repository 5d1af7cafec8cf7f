"""An outage is not the file's fault: the account's failures in a row, and the probe (SPEC §5).

5xx answers, timeouts, connection errors and malformed responses are counted
for the whole account, whatever the files: any answer the API gives (a result,
a verdict on a file or the account, a 429) ends the streak. The rules, pure:

- no connection at all (refused, DNS, TLS, no route: :class:`~bgsyncd.errors.Unreachable`),
  or the third such failure in a row, pauses dispatch with ``api_unreachable``;
  the job goes back to pending, no attempt counted;
- a failure right after another one is not counted either (the API is not
  "otherwise answering"): the job goes back to pending and is sent again;
- only a failure that follows an answer counts an attempt.

While ``api_unreachable`` holds, a credit check (no credit spent, paced like
any request) probes ``PROBE_FIRST_SECONDS`` after the pause, then backing off
to ``PROBE_MAX_SECONDS``; the back-off starts again once an image request is
answered. :class:`Outage` keeps the count and the back-off, and nothing else:
the credit guard's clock schedules the probe.
"""

from __future__ import annotations

import threading

from bgsyncd.errors import ApiError, TransientError, Unreachable, UnusableAnswer

STREAK_LIMIT = 3
PROBE_FIRST_SECONDS = 30.0
PROBE_MAX_SECONDS = 300.0


def is_failure(error: ApiError) -> bool:
    """A failure the account's streak counts: 5xx, timeout, connection, malformed (not a 200)."""
    return isinstance(error, TransientError) and not isinstance(error, UnusableAnswer)


def pauses(error: ApiError, failures_before: int) -> bool:
    """``error`` pauses dispatch (``api_unreachable``): no connection, or the third in a row."""
    return isinstance(error, Unreachable) or failures_before + 1 >= STREAK_LIMIT


def probe_interval(failed_probes: int) -> float:
    """Seconds before the next probe after ``failed_probes`` probes (or pauses) in a row."""
    return min(PROBE_MAX_SECONDS, PROBE_FIRST_SECONDS * 2.0 ** min(failed_probes, 16))


class Outage:
    """The account's failures in a row and the probe's back-off; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streak = 0
        self._probes = 0  # probes scheduled since an image request was last answered

    @property
    def streak(self) -> int:
        """Failures in a row for the account, with no answer between them."""
        with self._lock:
            return self._streak

    def record(self, error: ApiError | None) -> int:
        """An image request ended (``error`` None: answered); return the failures before it.

        Counted and read in one step, so requests failing together see each other.
        """
        with self._lock:
            before = self._streak
            if error is not None and is_failure(error):
                self._streak += 1
            else:
                self._streak = 0
                self._probes = 0
            return before

    def check_failed(self) -> int:
        """A credit check failed (5xx, timeout, connection...); return the failures before it."""
        with self._lock:
            before = self._streak
            self._streak += 1
            return before

    def next_probe(self) -> float:
        """``api_unreachable`` was raised, or a probe failed: seconds until the next probe."""
        with self._lock:
            seconds = probe_interval(self._probes)
            self._probes += 1
            return seconds
