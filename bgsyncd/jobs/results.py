"""What became of a job, as the dispatcher sees it: a ``Result`` of one ``Kind``.

The worker returns a :class:`Result` for every job it processes (see
:mod:`bgsyncd.jobs.applier`, which makes it from the decided ``Outcome``); the
dispatcher reads what it means for the account from it: a credit spent, a
pause, a 429's wait.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bgsyncd.jobs.outcomes import Transition


class Kind(enum.Enum):
    """What became of a job, as far as the dispatcher cares."""

    DONE = "done"  # outputs written (from the API or the cache)
    QUARANTINED = "quarantined"
    RETRY = "retry"  # failed, retried later (an attempt counted, or waiting to settle)
    VANISHED = "vanished"  # the input disappeared before it was processed
    PAUSED = "paused"  # account-wide or disk problem: the job went back to the queue
    RATE_LIMITED = "rate_limited"  # 429: the job went back to the queue
    RELEASED = "released"  # shutting down: the job went back to the queue


KINDS = {
    Transition.DONE: Kind.DONE,
    Transition.QUARANTINE: Kind.QUARANTINED,
    Transition.RETRY: Kind.RETRY,
    Transition.DEFER: Kind.RETRY,
    Transition.RELEASE: Kind.RELEASED,
    Transition.FORGET: Kind.VANISHED,
    Transition.REQUEUE: Kind.RELEASED,
}
# Called with a pause reason (and context) before the job returns to the queue.
PauseHook = Callable[..., None]


@dataclass(frozen=True)
class Result:
    """The outcome of one job; ``charged`` when a credit was (or may have been) spent."""

    kind: Kind
    charged: bool = False
    reason: str | None = None
    retry_after: float | None = None
    settle_in: float | None = None  # a local verdict, final once the input is quiet this long
    pause: str | None = None  # dispatch pauses for this reason
    pause_context: Mapping[str, object] = field(default_factory=dict)  # logged with the pause
