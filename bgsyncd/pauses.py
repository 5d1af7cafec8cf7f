"""Why dispatch is paused: a set of reasons, each lifted by its own rule (SPEC §5).

Several reasons can hold at once (a full outbox while the credits are at the
floor); lifting one leaves the others in force, and dispatch resumes only when
the set is empty. ``first`` is the reason raised first among those that hold:
what ``status`` and the ``paused`` field show.

Which event lifts which reason:

=========================  ================================================
reason                     lifted by
=========================  ================================================
invalid_api_key,           a credit check above the floor, or SIGHUP
insufficient_credits,
credits_expired,
credit_floor
api_malformed,             a credit check answered normally, or SIGHUP
unexpected_redirect
output_unwritable          its probe write succeeding (nothing else)
queue_unavailable          the database answering again (nothing else)
=========================  ================================================

The set itself is not thread-safe: its owner (the dispatcher) holds a lock.
"""

from __future__ import annotations

import enum

INVALID_API_KEY = "invalid_api_key"
INSUFFICIENT_CREDITS = "insufficient_credits"
CREDITS_EXPIRED = "credits_expired"
CREDIT_FLOOR = "credit_floor"
API_MALFORMED = "api_malformed"
UNEXPECTED_REDIRECT = "unexpected_redirect"
OUTPUT_UNWRITABLE = "output_unwritable"
QUEUE_UNAVAILABLE = "queue_unavailable"

# Every reason bgsyncd raises, in the order the metrics list them.
REASONS = (
    CREDIT_FLOOR,
    INVALID_API_KEY,
    INSUFFICIENT_CREDITS,
    CREDITS_EXPIRED,
    API_MALFORMED,
    UNEXPECTED_REDIRECT,
    OUTPUT_UNWRITABLE,
    QUEUE_UNAVAILABLE,
)


class Lift(enum.Enum):
    """An event that may lift some pause reasons."""

    CREDITS_ABOVE_FLOOR = "credits_above_floor"  # a credit check with room above the floor
    CREDITS_ANSWERED = "credits_answered"  # a credit check answered normally, at any balance
    SIGHUP = "sighup"
    PROBE = "probe"  # a probe write where an output could not be written succeeded
    DATABASE = "database"  # the queue database answers again


_SIGNAL_OR_CHECK = frozenset({Lift.CREDITS_ABOVE_FLOOR, Lift.SIGHUP})
_LIFTED_BY: dict[str, frozenset[Lift]] = {
    INVALID_API_KEY: _SIGNAL_OR_CHECK,
    INSUFFICIENT_CREDITS: _SIGNAL_OR_CHECK,
    CREDITS_EXPIRED: _SIGNAL_OR_CHECK,
    CREDIT_FLOOR: _SIGNAL_OR_CHECK,
    # Above the floor implies answered normally.
    API_MALFORMED: frozenset({Lift.CREDITS_ANSWERED, Lift.CREDITS_ABOVE_FLOOR, Lift.SIGHUP}),
    UNEXPECTED_REDIRECT: frozenset({Lift.CREDITS_ANSWERED, Lift.CREDITS_ABOVE_FLOOR, Lift.SIGHUP}),
    OUTPUT_UNWRITABLE: frozenset({Lift.PROBE}),
    QUEUE_UNAVAILABLE: frozenset({Lift.DATABASE}),
}


def lifted_by(reason: str) -> frozenset[Lift]:
    """The events that lift ``reason``; an account reason not named above lifts like one."""
    return _LIFTED_BY.get(reason, _SIGNAL_OR_CHECK)


class PauseSet:
    """The pause reasons in force, in the order they were raised."""

    def __init__(self) -> None:
        self._held: dict[str, None] = {}  # a dict keeps insertion order: first raised first

    def add(self, reason: str) -> bool:
        """Hold ``reason``; True if it was not held already."""
        if reason in self._held:
            return False
        self._held[reason] = None
        return True

    def remove(self, reason: str) -> bool:
        """Stop holding ``reason``; True if it was held."""
        if reason not in self._held:
            return False
        del self._held[reason]
        return True

    def lift(self, event: Lift) -> list[str]:
        """Remove every reason ``event`` lifts; return those removed, in raised order."""
        gone = [r for r in self._held if event in lifted_by(r)]
        for reason in gone:
            del self._held[reason]
        return gone

    @property
    def first(self) -> str | None:
        """The reason raised first among those held, or None when dispatching."""
        return next(iter(self._held), None)

    @property
    def held(self) -> tuple[str, ...]:
        """Every reason held, first raised first."""
        return tuple(self._held)

    def __contains__(self, reason: object) -> bool:
        return reason in self._held

    def __bool__(self) -> bool:
        return bool(self._held)
