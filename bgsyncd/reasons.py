"""The pause reasons: their names, which hold for a whole fleet, and which event lifts each
(SPEC §5). Names only: the pauses themselves are dispatch's (``dispatch.pauses``); jobs and
ops name the reasons too, so the names sit below them all.

Which event lifts which reason:

=========================  ================================================
reason                     lifted by
=========================  ================================================
invalid_api_key,           a credit check above the floor, or SIGHUP
insufficient_credits,
credits_expired,
credit_floor
api_malformed,             a credit check answered normally, or SIGHUP
unexpected_redirect,       (``api_unreachable``: the credit check is its probe,
api_unreachable            every 30 s backing off to 5 min; see ``outage``)
output_unwritable          its probe write succeeding (nothing else)
queue_unavailable          the database answering again (nothing else)
=========================  ================================================
"""

from __future__ import annotations

import enum

INVALID_API_KEY = "invalid_api_key"
INSUFFICIENT_CREDITS = "insufficient_credits"
CREDITS_EXPIRED = "credits_expired"
CREDIT_FLOOR = "credit_floor"
API_MALFORMED = "api_malformed"
UNEXPECTED_REDIRECT = "unexpected_redirect"
API_UNREACHABLE = "api_unreachable"
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
    API_UNREACHABLE,
    OUTPUT_UNWRITABLE,
    QUEUE_UNAVAILABLE,
)


# A host's own trouble, never the fleet's.
HOST_REASONS = frozenset({OUTPUT_UNWRITABLE, QUEUE_UNAVAILABLE})


def is_fleet_reason(reason: str) -> bool:
    """True when ``reason`` holds for every host of a fleet, not just the one that saw it."""
    return reason not in HOST_REASONS


class Lift(enum.Enum):
    """An event that may lift some pause reasons."""

    CREDITS_ABOVE_FLOOR = "credits_above_floor"  # a credit check with room above the floor
    CREDITS_ANSWERED = "credits_answered"  # a credit check answered normally, at any balance
    SIGHUP = "sighup"
    PROBE = "probe"  # a probe write where an output could not be written succeeded
    DATABASE = "database"  # the queue database answers again


_SIGNAL_OR_CHECK = frozenset({Lift.CREDITS_ABOVE_FLOOR, Lift.SIGHUP})
_ANSWERED = frozenset({Lift.CREDITS_ANSWERED, Lift.CREDITS_ABOVE_FLOOR, Lift.SIGHUP})
_LIFTED_BY: dict[str, frozenset[Lift]] = {
    INVALID_API_KEY: _SIGNAL_OR_CHECK,
    INSUFFICIENT_CREDITS: _SIGNAL_OR_CHECK,
    CREDITS_EXPIRED: _SIGNAL_OR_CHECK,
    CREDIT_FLOOR: _SIGNAL_OR_CHECK,
    # Above the floor implies answered normally.
    API_MALFORMED: _ANSWERED,
    UNEXPECTED_REDIRECT: _ANSWERED,
    API_UNREACHABLE: _ANSWERED,
    OUTPUT_UNWRITABLE: frozenset({Lift.PROBE}),
    QUEUE_UNAVAILABLE: frozenset({Lift.DATABASE}),
}


def lifted_by(reason: str) -> frozenset[Lift]:
    """The events that lift ``reason``; an account reason not named above lifts like one."""
    return _LIFTED_BY.get(reason, _SIGNAL_OR_CHECK)


def lifted_by_a_credit_check(reason: str) -> bool:
    """True when a credit check may lift ``reason``; False for a pause lifted by
    its own rule (a probe write, the database answering again)."""
    return bool(lifted_by(reason) & {Lift.CREDITS_ABOVE_FLOOR, Lift.CREDITS_ANSWERED})
