"""Work that needs no request is settled as soon as its file is complete (SPEC §4, §5).

A local verdict, a cache hit or outputs already written cost no request: they
never wait behind the rate limit, the credit floor or an account's pause. The
dispatcher hands every file the ingest thread queues to a :class:`FreeLane`,
and every job whose verdict waits for its input to be quiet (``settle_in``).
The lane's thread looks at the file without claiming it
(``Worker.needs_no_request``: a job claimed and then lost in a crash would be
taken for a possible resend); only free work is taken by its path
(``claim_path``) and settled (``Worker.settle_free``: the one place that acts
stays the worker's ``Applier``). A file that needs a request waits its turn
in the queue like any other.

While a local fault holds (``output_unwritable``, ``queue_unavailable``) the
lane waits: the writes it would make are the ones failing.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Collection, Iterable

from bgsyncd.errors import BgsyncdError, QueueUnavailable
from bgsyncd.jobs.outcomes import Result
from bgsyncd.logs import get_logger
from bgsyncd.reasons import HOST_REASONS
from bgsyncd.storage.contract import Found, Job, JobStore

log = get_logger("bgsyncd.freelane")

# Files remembered for a look; beyond this a burst waits its turn in the queue.
MAX_WAITING = 20_000
BLOCKED_LOOK_SECONDS = 1.0


class FreeLane:
    """One thread settling the work that needs no request, file by file as it comes."""

    def __init__(
        self,
        queue: JobStore,
        settle: Callable[[Job], Result],
        lease_seconds: float,
        *,
        is_free: Callable[[str, str], bool],
        held: Callable[[], Collection[str]],
        on_settled: Callable[[Job, Result], None],
        on_unavailable: Callable[[QueueUnavailable], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue = queue
        self._settle = settle  # the worker's settle_free
        self._is_free = is_free  # the worker's look without a claim
        self._lease = lease_seconds
        self._held = held  # the pause reasons in force
        self._on_settled = on_settled
        self._on_unavailable = on_unavailable
        self._clock = clock
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, str, str]] = []  # (when, order, folder, relpath)
        self._order = 0
        self._busy = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="bgsyncd-freelane", daemon=True)

    def start(self) -> None:
        """Start the lane's thread."""
        self._thread.start()

    def alive(self) -> bool:
        """The lane's thread is running."""
        return self._thread.is_alive()

    @property
    def busy(self) -> int:
        """Jobs being settled right now (0 or 1)."""
        with self._cond:
            return self._busy

    def add(self, found: Iterable[Found]) -> None:
        """Files just queued: look at each now."""
        for f in found:
            self.later(f.folder, f.relpath, 0.0)

    def later(self, folder: str, relpath: str, seconds: float) -> None:
        """Look at the job of ``folder``/``relpath`` again in ``seconds``."""
        with self._cond:
            if len(self._due) >= MAX_WAITING:
                return  # the dispatcher takes it in its turn
            self._order += 1
            when = self._clock() + max(0.0, seconds)
            heapq.heappush(self._due, (when, self._order, folder, relpath))
            self._cond.notify_all()

    def stop(self, timeout: float) -> None:
        """Stop looking; wait up to ``timeout`` for the job being settled."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._next_due():
                    self._cond.wait(self._wait())
                if self._stopping:
                    return
                _, _, folder, relpath = heapq.heappop(self._due)
                self._busy = 1
            try:
                self._look(folder, relpath)
            finally:
                with self._cond:
                    self._busy = 0

    def _blocked(self) -> bool:
        return any(reason in HOST_REASONS for reason in self._held())

    def _next_due(self) -> bool:
        return bool(self._due) and self._due[0][0] <= self._clock() and not self._blocked()

    def _wait(self) -> float:
        if not self._due:
            return 60.0
        if self._blocked():
            return BLOCKED_LOOK_SECONDS
        return min(60.0, max(0.01, self._due[0][0] - self._clock()))

    def _look(self, folder: str, relpath: str) -> None:
        if not self._is_free(folder, relpath):
            return  # it needs a request: the dispatcher takes it in its turn
        try:
            job = self._queue.claim_path(folder, relpath, self._lease)
        except QueueUnavailable as exc:  # a pause; looked at again once the database answers
            self._on_unavailable(exc)
            self.later(folder, relpath, BLOCKED_LOOK_SECONDS)
            return
        except BgsyncdError:  # a busy database: the dispatcher takes the job in its turn
            log.warning("freelane.claim_failed", folder=folder, path=relpath, exc_info=True)
            return
        if job is None:
            return  # taken by the dispatcher, settled, or gone meanwhile
        try:
            result = self._settle(job)
        except QueueUnavailable as exc:
            # Its row cannot be updated: in flight in the database until the
            # daemon, seeing the database answer, gives it back (as the dispatcher's).
            self._on_unavailable(exc)
            return
        self._on_settled(job, result)
