"""One rate limit, one credit floor and one pause for a fleet, on a real PostgreSQL (SPEC §8).

Each "host" here is its own :class:`PostgresStore` (its own connection pool and
``host_id``) on one throwaway database; threads stand for the hosts' workers.
The database is the referee: the request log it kept, the reservations it
counted, the pause reasons it holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bgsyncd.api.client import Client
from bgsyncd.dispatch.dispatcher import Dispatcher
from bgsyncd.dispatch.pacer import Pacer
from bgsyncd.dispatch.pauses import Pauses
from bgsyncd.emulator import Emulator
from bgsyncd.errors import HostConflict, QueueUnavailable
from bgsyncd.fleet.credits import FleetCreditGuard
from bgsyncd.fleet.hosts import Hosts
from bgsyncd.fleet.pauses import FleetPauseStore
from bgsyncd.ops.metrics import Recorder
from bgsyncd.reasons import (
    API_UNREACHABLE,
    CREDIT_FLOOR,
    INVALID_API_KEY,
    OUTPUT_UNWRITABLE,
    QUEUE_UNAVAILABLE,
    UNEXPECTED_REDIRECT,
    Lift,
)
from bgsyncd.storage.contract import Found
from bgsyncd.storage.postgres.request_log import PostgresRequestLog, account_id
from bgsyncd.storage.postgres.store import PostgresStore
from bgsyncd.storage.sqlite.store import SqliteStore
from tests.support.daemons import TEST_KEY
from tests.support.fleet import peak
from tests.support.helpers import FakeClock, at_floor, product_image, wait_until
from tests.support.pacing import Waits
from tests.support.workers import WorkerFactory

ACCOUNT = account_id("fleet-test-key")


@pytest.fixture
def host(pg_dsn: str) -> Iterator[Any]:
    """``host(name)``: a host of the fleet (its own pool), joined with a heartbeat row."""
    opened: list[PostgresStore] = []

    def make(name: str, lease: float = 60.0) -> PostgresStore:
        queue = PostgresStore(pg_dsn, host_id=name)
        opened.append(queue)
        Hosts(queue, lease_seconds=lease).join(["a"], instance=f"{name}-run")
        return queue

    yield make
    for queue in opened:
        queue.close()


# -- one rate limit ------------------------------------------------------------------------


def test_pacers_of_three_hosts_never_start_more_than_the_limit_in_any_window(host: Any) -> None:
    limit, window, margin = 4, 1.5, 0.05
    pacers = [
        Pacer(limit, window, PostgresRequestLog(host(f"h{i}"), ACCOUNT), margin=margin)
        for i in range(3)
    ]
    granted: dict[int, list[float]] = {i: [] for i in range(3)}
    lock = threading.Lock()
    deadline = time.monotonic() + 5.0

    def worker(i: int) -> None:
        while time.monotonic() < deadline:
            t = pacers[i].acquire()
            with lock:
                granted[i].append(t)

    # Two worker threads per host, as max_in_flight would have.
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for p in pacers:
        p.close()
    recorded = PostgresRequestLog(host("referee"), ACCOUNT).since(0.0)
    total = sum(len(g) for g in granted.values())
    assert len(recorded) == total  # every start granted was recorded, none more
    assert peak(recorded, window) <= limit
    # The fleet used its limit: 5 s is over three windows, less one window of slack.
    assert total >= limit * 3
    # No host starved.
    assert all(len(g) >= 2 for g in granted.values()), {i: len(g) for i, g in granted.items()}


def test_a_host_waits_while_another_fills_the_window(host: Any) -> None:
    window = 1.0
    first_waits, second_waits = Waits(), Waits()
    first = Pacer(2, window, PostgresRequestLog(host("h1"), ACCOUNT), margin=0.0, wait=first_waits)
    second = Pacer(
        2, window, PostgresRequestLog(host("h2"), ACCOUNT), margin=0.0, wait=second_waits
    )
    first.acquire()
    first.acquire()
    assert first_waits.timeouts == []  # both started at once
    begun = time.monotonic()
    second.acquire()  # waits the delay the database gave, then asks again
    assert time.monotonic() - begun >= window * 0.5
    # The database said no, though this host started nothing.
    assert second_waits.timeouts and 0.0 < second_waits.timeouts[0] <= window
    assert peak(PostgresRequestLog(host("referee"), ACCOUNT).since(0.0), window - 0.01) <= 2


# -- one credit floor ----------------------------------------------------------------------


def guard_of(
    queue: PostgresStore, floor: int = 10, lease: float = 60.0, **kw: Any
) -> FleetCreditGuard:
    return FleetCreditGuard(
        queue, ACCOUNT, floor, 600.0, instance=f"{queue.host_id}-run", lease_seconds=lease, **kw
    )


def test_thirteen_credits_floor_ten_three_hosts_start_exactly_three(host: Any) -> None:
    guards = [guard_of(host(f"h{i}")) for i in range(3)]
    guards[0].update(13, None)
    # Every host sees the one balance, though only the first checked.
    assert [g.available for g in guards] == [13, 13, 13]
    won: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(9)

    def race(i: int) -> None:
        barrier.wait()
        for _ in range(3):
            if guards[i].try_reserve():
                with lock:
                    won.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(3) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 3
    assert all(not g.can_start() for g in guards)
    assert all(g.in_flight == 3 for g in guards)  # the fleet's requests in flight
    for i in won:
        guards[i].settle(charged=True)
    assert [g.available for g in guards] == [10, 10, 10]
    assert all(at_floor(g) and g.in_flight == 0 for g in guards)


def test_an_uncharged_request_gives_its_credit_back_to_the_fleet(host: Any) -> None:
    a, b = guard_of(host("a")), guard_of(host("b"))
    a.update(11, 2_000_000_000.0)
    assert a.try_reserve()
    assert not b.try_reserve()
    a.settle(charged=False)
    assert b.try_reserve()
    assert b.expires_at == 2_000_000_000.0


def test_a_silent_hosts_reservations_die_with_it(host: Any) -> None:
    lease = 1.0
    dead_q, live_q = host("dead", lease), host("live", lease)
    dead, live = guard_of(dead_q, lease=lease), guard_of(live_q, lease=lease)
    live_hosts = Hosts(live_q, lease_seconds=lease)
    dead.update(13, None)
    assert dead.try_reserve() and dead.try_reserve() and dead.try_reserve()
    assert not live.try_reserve()
    # "dead" stops (kill -9): no more heartbeats. "live" keeps its own.

    def live_can_start() -> bool:
        live_hosts.heartbeat(0)
        return live.can_start()

    wait_until(live_can_start, timeout=10.0, what="the dead host's reservations released")
    assert live.in_flight == 0
    assert live.try_reserve()


def test_a_restarted_host_does_not_count_its_previous_lifes_reservations(host: Any) -> None:
    lease = 1.0
    queue = host("h1", lease)
    before = guard_of(queue, lease=lease)
    before.update(13, None)
    assert before.try_reserve() and before.try_reserve() and before.try_reserve()
    # kill -9, and the daemon starts again as the same host, once its old row is
    # stale (join refuses a live one): a new instance token.
    wait_until(
        lambda: _joined(Hosts(queue, lease_seconds=lease), "h1-second-run"),
        what="the restarted host joins",
    )
    after = FleetCreditGuard(
        queue, ACCOUNT, 10, 600.0, instance="h1-second-run", lease_seconds=lease
    )
    assert after.in_flight == 0
    assert after.try_reserve()


def test_a_settle_the_database_cannot_take_waits_in_memory(host: Any, pg_server: Any) -> None:
    queue = host("h1")
    guard = guard_of(queue)
    guard.update(13, None)
    assert guard.try_reserve()
    pg_server.stop()
    try:
        guard.settle(charged=True)  # no exception: the worker's finally must not fail
    finally:
        pg_server.start()

    def settled() -> bool:
        try:
            return guard.available == 12 and guard.in_flight == 0
        except QueueUnavailable:
            return False  # the pool is still reconnecting

    wait_until(settled, timeout=60, what="the settle applied once the database answers")


def _joined(hosts: Hosts, instance: str) -> bool:
    try:
        hosts.join(["a"], instance=instance)
    except HostConflict:
        return False
    return True


def test_the_check_schedule_stays_the_hosts_own(host: Any) -> None:
    clock = FakeClock()
    a, b = guard_of(host("a"), clock=clock), guard_of(host("b"), clock=clock)
    assert a.check_due() and b.check_due()  # at start, each host checks
    a.update(20, None)
    assert not a.check_due()
    clock.advance(600.0)
    assert a.check_due()


# -- one pause -----------------------------------------------------------------------------


def pauses_of(queue: PostgresStore, clock: FakeClock) -> Pauses:
    return Pauses(FleetPauseStore(queue, ACCOUNT), clock=clock, poll_seconds=2.0)


def test_an_account_pause_on_one_host_pauses_every_host(host: Any) -> None:
    clock = FakeClock()
    a, b = pauses_of(host("a"), clock), pauses_of(host("b"), clock)
    assert b.poll() == ([], [])  # at start: due at once, nothing held
    assert a.raise_(INVALID_API_KEY)
    assert b.seconds_until_poll() == 2.0
    assert b.poll() == ([], [])  # not due yet: no query, no change
    assert b.first is None
    clock.advance(2.0)
    assert b.seconds_until_poll() == 0.0
    assert b.poll() == ([INVALID_API_KEY], [])
    assert b.first == INVALID_API_KEY


def test_a_credit_check_above_the_floor_on_any_host_lifts_the_fleet(host: Any) -> None:
    clock = FakeClock()
    a, b = pauses_of(host("a"), clock), pauses_of(host("b"), clock)
    a.raise_(CREDIT_FLOOR)
    a.raise_(UNEXPECTED_REDIRECT)
    clock.advance(2.0)
    b.poll()
    assert b.held == (CREDIT_FLOOR, UNEXPECTED_REDIRECT)
    assert b.lift(Lift.CREDITS_ABOVE_FLOOR) == [CREDIT_FLOOR, UNEXPECTED_REDIRECT]
    clock.advance(2.0)
    assert a.poll() == ([], [CREDIT_FLOOR, UNEXPECTED_REDIRECT])
    assert not a


def test_sighup_on_one_host_lifts_what_another_raised_before_it_polled(host: Any) -> None:
    clock = FakeClock()
    a, b = pauses_of(host("a"), clock), pauses_of(host("b"), clock)
    a.raise_(INVALID_API_KEY)
    b.lift(Lift.SIGHUP)  # b had not seen it yet: the fleet's reason is lifted all the same
    clock.advance(2.0)
    a.poll()
    assert a.first is None


def test_each_reason_is_still_lifted_by_its_own_rule_across_the_fleet(host: Any) -> None:
    clock = FakeClock()
    a, b = pauses_of(host("a"), clock), pauses_of(host("b"), clock)
    a.raise_(INVALID_API_KEY)
    a.raise_(UNEXPECTED_REDIRECT)
    b.lift(Lift.CREDITS_ANSWERED)  # answered, but not above the floor
    clock.advance(2.0)
    assert a.poll() == ([], [UNEXPECTED_REDIRECT])
    assert a.held == (INVALID_API_KEY,)


def test_api_unreachable_holds_for_the_fleet_and_a_check_answered_anywhere_lifts_it(
    host: Any,
) -> None:
    clock = FakeClock()
    a, b = pauses_of(host("a"), clock), pauses_of(host("b"), clock)
    a.raise_(API_UNREACHABLE)
    clock.advance(2.0)
    assert b.poll() == ([API_UNREACHABLE], [])
    b.lift(Lift.CREDITS_ANSWERED)  # b's probe was answered normally
    clock.advance(2.0)
    assert a.poll() == ([], [API_UNREACHABLE])
    assert not a and not b


def test_host_local_reasons_stay_on_their_host(host: Any) -> None:
    clock = FakeClock()
    a, b = pauses_of(host("a"), clock), pauses_of(host("b"), clock)
    a.raise_(OUTPUT_UNWRITABLE)
    a.raise_(QUEUE_UNAVAILABLE)
    clock.advance(2.0)
    assert b.poll() == ([], [])
    assert not b
    # Nor does the fleet's state, polled, lift them on their host.
    assert a.poll() == ([], [])
    assert a.held == (OUTPUT_UNWRITABLE, QUEUE_UNAVAILABLE)


def test_a_host_without_its_database_does_not_poll_until_it_answers(host: Any) -> None:
    clock = FakeClock()
    a, b = pauses_of(host("a"), clock), pauses_of(host("b"), clock)
    b.raise_(QUEUE_UNAVAILABLE)
    a.raise_(INVALID_API_KEY)
    clock.advance(2.0)
    assert b.seconds_until_poll() == float("inf")
    assert b.poll() == ([], [])  # no query to wait on: the daemon lifts the reason first
    b.remove(QUEUE_UNAVAILABLE)
    assert b.seconds_until_poll() == 0.0
    assert b.poll() == ([INVALID_API_KEY], [])


def test_a_raise_while_the_database_was_down_reaches_the_fleet_later(
    host: Any, pg_server: Any
) -> None:
    clock = FakeClock()
    a_q = host("a")
    a, b = pauses_of(a_q, clock), pauses_of(host("b"), clock)
    pg_server.stop()
    try:
        assert a.raise_(INVALID_API_KEY)  # held here at once, the fleet told later
        clock.advance(2.0)
        assert a.poll() == ([], [])  # the database cannot answer: nothing changes
        assert a.first == INVALID_API_KEY
    finally:
        pg_server.start()

    def replayed() -> bool:
        # Each try is a due poll: the first ones may still meet the pool reconnecting.
        clock.advance(2.0)
        return a.poll() == ([], []) and _stored(a_q) == [INVALID_API_KEY]

    # The pool reconnects within moments; the poll writes the raise, then reads it back.
    wait_until(replayed, timeout=60, interval=0.2, what="the raise to reach the database")
    assert a.first == INVALID_API_KEY
    clock.advance(2.0)
    assert b.poll() == ([INVALID_API_KEY], [])


def _stored(queue: PostgresStore) -> list[str] | None:
    try:
        return FleetPauseStore(queue, ACCOUNT).held()
    except QueueUnavailable:
        return None


# -- two dispatchers of one fleet, in process, against one emulator --------------------------


@pytest.fixture
def fleet(
    tmp_path: Path, emulator: Emulator, host: Any, worker_factory: WorkerFactory
) -> Iterator[Any]:
    """``fleet(name, floor)``: a host's Dispatcher on the fleet's limit, credits and pauses.

    The jobs stay in each host's own SQLite queue (the shared job queue is not
    this file's subject); everything the account shares is in PostgreSQL.
    """
    made: list[Dispatcher] = []
    clients: list[Client] = []

    def make(name: str, floor: int = 0) -> tuple[Dispatcher, SqliteStore, Path]:
        root = tmp_path / name
        (root / "inbox").mkdir(parents=True)
        pg = host(name)
        queue = SqliteStore(root / "q.sqlite3")
        pacer = Pacer(1000, 60.0, PostgresRequestLog(pg, ACCOUNT))
        client = Client(emulator.url, TEST_KEY, 10, gate=pacer.acquire)
        clients.append(client)
        d = Dispatcher(
            queue,
            worker_factory(root, emulator, queue),
            pacer,
            guard_of(pg, floor),
            lambda: client,
            Recorder(),
            max_in_flight=2,
            lease_seconds=60,
            pauses=Pauses(FleetPauseStore(pg, ACCOUNT), poll_seconds=0.5),
        )
        made.append(d)
        d.start()
        return d, queue, root

    yield make
    for d in made:
        d.stop(5)
    for client in clients:
        client.close()


def enqueue(root: Path, queue: SqliteStore, name: str) -> None:
    src = root / "inbox" / name
    src.write_bytes(product_image(30, 20, "PNG"))
    st = src.stat()
    queue.enqueue_many([Found("f", name, st.st_size, st.st_mtime_ns, st.st_ino)])


def test_a_key_refused_on_one_host_pauses_both_and_sighup_on_the_other_resumes_both(
    fleet: Any, emulator: Emulator
) -> None:
    (a, a_queue, a_root), (b, _, _) = fleet("a"), fleet("b")
    wait_until(lambda: emulator.credits and len(emulator.requests()) >= 2, what="both checked")
    emulator.configure(keys=["a-key-that-is-not-ours"])
    enqueue(a_root, a_queue, "x.png")
    wait_until(lambda: a.paused == INVALID_API_KEY, what="a pauses on its 401")
    wait_until(lambda: b.paused == INVALID_API_KEY, timeout=5, what="b pauses, told by the fleet")
    assert [r.status for r in emulator.requests()].count(401) == 1  # b asked nothing
    emulator.configure(keys=[TEST_KEY])
    b.recheck_credits()  # SIGHUP on b alone
    wait_until(lambda: b.paused is None, what="b resumes")
    wait_until(lambda: a.paused is None, timeout=5, what="a resumes, told by the fleet")
    wait_until(lambda: a_queue.counts()["f"]["done"] == 1, what="a's job done")


def test_thirteen_credits_floor_ten_two_dispatchers_send_exactly_three_images(
    fleet: Any, emulator: Emulator
) -> None:
    emulator.configure(credits=13)
    hosts = [fleet("a", floor=10), fleet("b", floor=10)]
    for d, queue, root in hosts:
        for i in range(3):
            enqueue(root, queue, f"{i}.png")
        d.wake()
    wait_until(
        lambda: all(d.paused == CREDIT_FLOOR for d, _, _ in hosts),
        timeout=20,
        what="both paused at the floor",
    )
    images = [r for r in emulator.requests() if r.path != "/available-credit"]
    assert len(images) == 3
    assert emulator.credits == 10
    done = sum(q.counts()["f"]["done"] for _, q, _ in hosts)
    assert done == 3
