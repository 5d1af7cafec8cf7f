"""A request log for pacer tests: start times in memory, nothing survives the process."""

from __future__ import annotations

import threading


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
