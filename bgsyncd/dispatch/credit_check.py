"""One credit check, and what its answer means for dispatch (SPEC §5).

The dispatcher runs a check at start, every ``check_interval_seconds``, at the
floor, on SIGHUP, and as the ``api_unreachable`` probe. It goes through the
pacer like any request (the client's gate) and costs no credit. An answer
updates the credit guard and lifts what a check answered normally lifts (then
the floor and the expiry decide); a 401/402/403 or a redirect pauses for its
reason; a failure (5xx, timeout, connection, malformed) counts in the
account's streak (:mod:`bgsyncd.api.outage`): no connection, or the third in a
row, pauses ``api_unreachable``, and a probe that fails backs off.
"""

from __future__ import annotations

from collections.abc import Callable

from bgsyncd.api.client import Client
from bgsyncd.api.outage import Outage, pauses
from bgsyncd.dispatch.credits import CreditGuard
from bgsyncd.errors import AccountError, ApiError, Stopped, TransientError
from bgsyncd.logs import get_logger
from bgsyncd.reasons import API_UNREACHABLE, CREDIT_FLOOR, CREDITS_EXPIRED, Lift

log = get_logger("bgsyncd.dispatch")

# After a failed credit check that pauses nothing, try again this soon rather
# than waiting a whole check interval.
CHECK_RETRY_SECONDS = 30.0


class CreditCheck:
    """Runs credit checks for the dispatcher and acts on their answers through its hooks."""

    def __init__(
        self,
        client: Callable[[], Client],
        credits: CreditGuard,
        outage: Outage,
        *,
        held: Callable[[], tuple[str, ...]],
        raise_pause: Callable[..., None],
        lift_on: Callable[[Lift], None],
        clock: Callable[[], float],
    ) -> None:
        self._client = client
        self._credits = credits
        self._outage = outage
        self._held = held
        self._raise = raise_pause
        self._lift_on = lift_on
        self._clock = clock

    def run(self) -> None:
        """Ask for the balance and act on the answer; ``QueueUnavailable`` propagates."""
        try:
            credits = self._client().available_credits()
        except Stopped:
            return
        except AccountError as exc:
            self._credits.note_check_failed()
            location = getattr(exc, "location", None)
            self._raise(exc.reason, **({"location": location} if location else {}))
            return
        except ApiError as exc:
            log.warning("credits.check_failed", error=exc.message, status=exc.status)
            self._failed(exc)
            return
        expires = credits.expires_at.timestamp() if credits.expires_at else None
        self._credits.update(credits.available, expires)
        log.info("credits.checked", available=credits.available, floor=self._credits.floor)
        self._lift_on(Lift.CREDITS_ANSWERED)
        if self.expired():
            self._raise(CREDITS_EXPIRED)
        elif self._credits.can_start() or self._credits.in_flight:
            self._lift_on(Lift.CREDITS_ABOVE_FLOOR)
        else:
            self._raise(CREDIT_FLOOR)

    def _failed(self, exc: ApiError) -> None:
        if not isinstance(exc, TransientError):  # a 429: the API answers; ask again soon
            self._credits.note_check_failed(retry_in=CHECK_RETRY_SECONDS)
            return
        before = self._outage.check_failed()
        if API_UNREACHABLE in self._held():  # the probe failed: the next one backs off
            self.schedule_probe()
        elif pauses(exc, before):
            self._raise(API_UNREACHABLE, error=exc.message)  # which schedules the probe
        else:
            self._credits.note_check_failed(retry_in=CHECK_RETRY_SECONDS)

    def schedule_probe(self) -> None:
        """``api_unreachable`` holds: the next credit check is its probe, backing off."""
        self._credits.note_check_failed(retry_in=self._outage.next_probe())

    def expired(self) -> bool:
        """The last credit check gave an expiry that has passed (by our clock)."""
        expires = self._credits.expires_at
        return expires is not None and expires <= self._clock()
