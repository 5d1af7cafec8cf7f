"""Why dispatch is paused: a set of reasons, each lifted by its own rule (SPEC §5).

Several reasons can hold at once (a full outbox while the credits are at the
floor); lifting one leaves the others in force, and dispatch resumes only when
the set is empty. ``first`` is the reason raised first among those that hold:
what ``status`` and the ``paused`` field show.

The set itself is not thread-safe: its owner (the dispatcher) holds a lock.

In a fleet (SPEC §8) every reason but ``output_unwritable`` and
``queue_unavailable`` holds for all hosts: :class:`Pauses` keeps the host's set
and mirrors the fleet's reasons in a :class:`PauseStore` (the database, per
account). A raise or a lift is written through at once; what other hosts did
is picked up by :meth:`Pauses.poll`, one cheap query every few seconds.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Collection
from typing import Protocol

from bgsyncd.errors import BgsyncdError
from bgsyncd.reasons import (
    QUEUE_UNAVAILABLE,
    REASONS,
    Lift,
    is_fleet_reason,
    lifted_by,
)

# How often a host of a fleet looks at the fleet's pause reasons.
POLL_SECONDS = 2.0


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


class PauseStore(Protocol):
    """Where a fleet's pause reasons are kept (one account)."""

    def hold(self, reason: str) -> None:
        """Hold ``reason`` for the fleet (kept with its first raise time if held already)."""

    def release(self, reasons: Collection[str]) -> None:
        """Stop holding each of ``reasons`` (those not held are ignored)."""

    def held(self) -> list[str]:
        """Every reason the fleet holds, first raised first."""


class Pauses:
    """The pause reasons of one host, with the fleet's mirrored in ``store`` (if any).

    Thread-safe. The store is never called with the lock held (it may be slow
    or down). Writes the store could not take are kept, in order, and replayed
    before the next poll reads, so a raise seen while the database was down
    still reaches the fleet, and a lift still lifts it: a poll never undoes
    this host's own decision. A poll whose read raced with a raise or lift on
    this host is not applied (the next one is).
    """

    def __init__(
        self,
        store: PauseStore | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._store = store
        self._clock = clock
        self._poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._replaying = threading.Lock()  # one writer at a time keeps the store's order ours
        self._set = PauseSet()
        self._unwritten: list[tuple[bool, tuple[str, ...]]] = []  # (hold?, reasons), in order
        self._changes = 0  # bumped by every local raise or lift
        self._last_poll: float | None = None

    def raise_(self, reason: str) -> bool:
        """Hold ``reason`` (and the fleet's too, if it is one); True if new on this host."""
        with self._lock:
            added = self._set.add(reason)
            self._changes += 1
        if is_fleet_reason(reason):
            self._write(True, (reason,))
        return added

    def remove(self, reason: str) -> bool:
        """Stop holding ``reason`` (its own rule decided so); True if it was held here."""
        with self._lock:
            removed = self._set.remove(reason)
            self._changes += 1
        if is_fleet_reason(reason):
            self._write(False, (reason,))
        return removed

    def lift(self, event: Lift) -> list[str]:
        """Lift every reason ``event`` lifts, here and fleet-wide; return those lifted here."""
        with self._lock:
            gone = self._set.lift(event)
            self._changes += 1
        fleet = tuple(r for r in REASONS if is_fleet_reason(r) and event in lifted_by(r))
        self._write(False, fleet)
        return gone

    def seconds_until_poll(self) -> float:
        """How long until :meth:`poll` would look at the fleet.

        inf without a store, and while ``queue_unavailable`` holds: the store is
        that database, and lifting that reason (it answers again) polls at once.
        """
        if self._store is None:
            return float("inf")
        with self._lock:
            if QUEUE_UNAVAILABLE in self._set:
                return float("inf")
            if self._last_poll is None:
                return 0.0
            return max(0.0, self._last_poll + self._poll_seconds - self._clock())

    def poll(self) -> tuple[list[str], list[str]]:
        """If due, take the fleet's reasons: return (raised here, lifted here) by other hosts."""
        if self._store is None or self.seconds_until_poll() > 0.0:
            return [], []
        with self._lock:
            self._last_poll = self._clock()
            changes = self._changes
        try:
            self._replay()
            fleet = self._store.held()
        except BgsyncdError:  # the database is down: keep what we hold; queue_unavailable tells
            return [], []
        with self._lock:
            if changes != self._changes:
                return [], []
            added = [r for r in fleet if is_fleet_reason(r) and self._set.add(r)]
            gone = [r for r in self._set.held if is_fleet_reason(r) and r not in fleet]
            for reason in gone:
                self._set.remove(reason)
            return added, gone

    @property
    def first(self) -> str | None:
        """The reason raised first among those held here, or None when dispatching."""
        with self._lock:
            return self._set.first

    @property
    def held(self) -> tuple[str, ...]:
        """Every reason held here, first raised first."""
        with self._lock:
            return self._set.held

    def __contains__(self, reason: object) -> bool:
        with self._lock:
            return reason in self._set

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._set)

    def _write(self, hold: bool, reasons: tuple[str, ...]) -> None:
        if self._store is None or not reasons:
            return
        with self._lock:
            self._unwritten.append((hold, reasons))
        with contextlib.suppress(BgsyncdError):  # kept: the next poll writes it
            self._replay()

    def _replay(self) -> None:
        """Write what the store has not taken yet, oldest first; raise if it still cannot."""
        assert self._store is not None
        with self._replaying:
            self._replay_locked(self._store)

    def _replay_locked(self, store: PauseStore) -> None:
        while True:
            with self._lock:
                if not self._unwritten:
                    return
                hold, reasons = self._unwritten[0]
            if hold:
                store.hold(reasons[0])
            else:
                store.release(reasons)
            with self._lock:
                self._unwritten.pop(0)
