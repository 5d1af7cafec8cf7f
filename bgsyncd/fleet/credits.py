"""The credit floor for a fleet: one balance and every host's requests in flight.

:class:`FleetCreditGuard` is a :class:`~bgsyncd.dispatch.credits.CreditGuard` whose
count lives in PostgreSQL, per account (a hash of the key): the balance the
last credit check of *any* host saw, less what every host spent since, and a
row per image request in flight on any host. A reservation is checked and
made under the account row's lock (``FOR UPDATE``), so with 13 credits and a
floor of 10 exactly three requests start, whatever the hosts.

A reservation dies with its host: it counts while its host's row (``hosts``,
renewed by the heartbeat) was seen within ``lease_seconds`` and still names
the run (``instance``) that made it. A host killed with requests in flight, or
started again, holds nothing after that.

When to check stays each host's own (at start, every interval, once at the
floor): the checks share the fleet's rate limit through the pacer anyway.

A settle the database cannot take (it is down) is kept in memory and applied
by the next transaction that succeeds; meanwhile the reservation still counts
as in flight, which errs on the safe side.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bgsyncd.dispatch.credits import CreditGuard, count_at_floor, has_room
from bgsyncd.errors import QueueUnavailable
from bgsyncd.storage.postgres.db import Connection, fleet_transaction
from bgsyncd.storage.postgres.store import NOW, PostgresStore

# A reservation counts while it is this run's, or its host's row was seen within
# the lease and names the run that made it. (The SQL text splices in only
# the engine's server clock expression, never input.)
_LIVE = f"""((r.host = %(host)s AND r.instance = %(instance)s)
    OR EXISTS (SELECT 1 FROM hosts h WHERE h.id = r.host AND h.instance = r.instance
               AND h.last_seen > {NOW} - %(lease)s))"""  # noqa: S608
_SQL_COUNT = (
    "SELECT available, expires_at, (SELECT COUNT(*) FROM credit_reservations r"  # noqa: S608
    f" WHERE r.account = %(account)s AND {_LIVE}) FROM credit_state WHERE account = %(account)s"
)
# Dropped only under the account row's lock: deleters never race (no deadlock).
_SQL_DROP_DEAD = f"DELETE FROM credit_reservations r WHERE r.account = %(account)s AND NOT {_LIVE}"  # noqa: S608


class FleetCreditGuard(CreditGuard):
    """The credit guard of one host of a fleet; the count is the fleet's (SPEC §8).

    ``instance`` is the token this run gave ``Hosts.join``.
    """

    def __init__(
        self,
        queue: PostgresStore,
        account: str,
        floor: int,
        check_interval: float,
        *,
        instance: str,
        lease_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(floor, check_interval, clock)
        self._queue = queue
        self._params = {
            "account": account,
            "host": queue.host_id,
            "instance": instance,
            "lease": lease_seconds,
        }
        self._mine: list[int] = []  # ids of this run's reservations
        self._unsettled: list[tuple[int, bool]] = []  # settles the database did not take yet
        self._db_lock = threading.Lock()  # guards the two lists; never held while waiting on I/O
        with fleet_transaction(queue) as conn:
            conn.execute(
                "INSERT INTO credit_state (account) VALUES (%s) ON CONFLICT DO NOTHING",
                (account,),
            )

    # -- the result of a credit check ---------------------------------------

    def update(self, available: int, expires_at: float | None) -> None:
        """Take the result of a credit check: the fleet's balance from now on."""
        with self._tx() as conn:
            conn.execute(
                f"UPDATE credit_state SET available = %s, expires_at = %s, checked_at = {NOW}"  # noqa: S608
                " WHERE account = %s",
                (available, expires_at, self._params["account"]),
            )
        super().update(available, expires_at)

    # -- requests ------------------------------------------------------------

    def try_reserve(self) -> bool:
        """Reserve one request if the fleet's count keeps the floor; atomic across hosts."""
        with self._lock, self._tx(lock=True) as conn:
            available, _, reserved = self._read(conn)
            if not has_room(available, reserved, self._floor):
                return False
            self._insert(conn)
            return True

    def reserve(self) -> None:
        """A request is starting: count it as in flight, fleet-wide."""
        with self._lock, self._tx(lock=True) as conn:
            self._insert(conn)

    def settle(self, charged: bool) -> None:
        """A request ended; ``charged`` (pass True when unknown) spends a fleet credit.

        Never raises for the database: a settle it cannot take waits in memory.
        """
        with self._db_lock:
            if not self._mine:
                raise RuntimeError("settle() without a matching reserve()")
            self._unsettled.append((self._mine.pop(), charged))
        try:
            with self._lock, self._tx(lock=True):
                pass  # the transaction applies the settle, with any left from before
        except QueueUnavailable:
            pass

    # -- read-only views -----------------------------------------------------

    @property
    def available(self) -> int | None:
        """The fleet's credit count, or None before any host's first check."""
        with self._tx() as conn:
            return self._read(conn)[0]

    @property
    def expires_at(self) -> float | None:
        """When the credits expire (POSIX time), if the API said."""
        with self._tx() as conn:
            return self._read(conn)[1]

    @property
    def in_flight(self) -> int:
        """Requests reserved and not yet settled, on every live host."""
        with self._tx() as conn:
            return self._read(conn)[2]

    # -- internals ----------------------------------------------------------

    def _room(self) -> bool:
        with self._tx() as conn:
            available, _, reserved = self._read(conn)
        return has_room(available, reserved, self._floor)

    def _at_floor(self) -> bool:
        with self._tx() as conn:
            available, _, reserved = self._read(conn)
        return available is not None and not has_room(available, reserved, self._floor)

    def _count_at_floor(self) -> bool:
        with self._tx() as conn:
            available = self._read(conn)[0]
        return count_at_floor(available, self._floor)

    @contextmanager
    def _tx(self, *, lock: bool = False) -> Iterator[Connection]:
        """A transaction that first applies settles left over; ``lock``: the account row's lock."""
        taken: list[tuple[int, bool]] = []
        try:
            with fleet_transaction(self._queue) as conn:
                if lock or self._unsettled:
                    conn.execute(
                        "SELECT 1 FROM credit_state WHERE account = %s FOR UPDATE",
                        (self._params["account"],),
                    )
                    conn.execute(_SQL_DROP_DEAD, self._params)
                    taken = self._apply_settles(conn)
                yield conn
        except BaseException:
            if taken:  # rolled back: try them again next time
                with self._db_lock:
                    self._unsettled[:0] = taken
            raise

    def _read(self, conn: Connection) -> tuple[int | None, float | None, int]:
        """The fleet's balance, expiry and live reservations."""
        row = conn.execute(_SQL_COUNT, self._params).fetchone()
        if row is None:
            return None, None, 0
        available = None if row[0] is None else int(row[0])
        return available, None if row[1] is None else float(row[1]), int(row[2])

    def _insert(self, conn: Connection) -> None:
        row = conn.execute(
            "INSERT INTO credit_reservations (account, host, instance, created_at)"  # noqa: S608
            f" VALUES (%(account)s, %(host)s, %(instance)s, {NOW}) RETURNING id",
            self._params,
        ).fetchone()
        assert row is not None
        with self._db_lock:
            self._mine.append(int(row[0]))

    def _apply_settles(self, conn: Connection) -> list[tuple[int, bool]]:
        """Apply the settles waiting in memory in this transaction (row lock held); return them."""
        with self._db_lock:
            pending, self._unsettled = self._unsettled, []
        if not pending:
            return pending
        try:
            available = self._read(conn)[0]
            for reservation, charged in pending:
                conn.execute("DELETE FROM credit_reservations WHERE id = %s", (reservation,))
                if charged and available is not None:
                    # "Reaches the floor": the one immediate re-check, as CreditGuard does.
                    if available - 1 >= self._floor > available - 2:
                        self._floor_recheck = True
                    available -= 1
            conn.execute(
                "UPDATE credit_state SET available = %s WHERE account = %s",
                (available, self._params["account"]),
            )
        except BaseException:
            with self._db_lock:
                self._unsettled[:0] = pending
            raise
        return pending
