"""The fleet's shared pieces on a real PostgreSQL: one rate limit, hosts and leases."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from functools import partial

import pytest

from bgsyncd.errors import HostConflict
from bgsyncd.fleet.hosts import Hosts
from bgsyncd.storage.contract import Found
from bgsyncd.storage.postgres.request_log import PostgresRequestLog, account_id
from bgsyncd.storage.postgres.store import PostgresStore
from tests.support.helpers import wait_until


def _later_than(queue: PostgresStore, t: float) -> bool:
    return queue.now() > t


@pytest.fixture
def hosts_of(pg_dsn: str) -> Iterator[Callable[[str], PostgresStore]]:
    opened: list[PostgresStore] = []

    def make(host_id: str) -> PostgresStore:
        queue = PostgresStore(pg_dsn, host_id=host_id)
        opened.append(queue)
        return queue

    yield make
    for queue in opened:
        queue.close()


def test_three_hosts_never_start_more_than_the_limit_in_one_window(
    hosts_of: Callable[[str], PostgresStore],
) -> None:
    account = account_id("k")
    logs = [PostgresRequestLog(hosts_of(f"h{i}"), account) for i in range(3)]
    started: list[float] = []
    lock = threading.Lock()

    def hammer(log: PostgresRequestLog) -> None:
        for _ in range(10):
            if log.try_start(limit=5, window=30.0, margin=0.25) == 0.0:
                with lock:
                    started.append(1.0)

    threads = [threading.Thread(target=hammer, args=(log,)) for log in logs for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(started) == 5
    wait = logs[0].try_start(limit=5, window=30.0, margin=0.25)
    assert 25.0 < wait <= 30.25
    assert len(logs[1].since(0.0)) == 5


def test_accounts_do_not_share_a_window(hosts_of: Callable[[str], PostgresStore]) -> None:
    queue = hosts_of("h")
    a, b = PostgresRequestLog(queue, account_id("a")), PostgresRequestLog(queue, account_id("b"))
    assert a.try_start(1, 60.0, 0.0) == 0.0
    assert a.try_start(1, 60.0, 0.0) > 0
    assert b.try_start(1, 60.0, 0.0) == 0.0


def test_a_second_live_daemon_with_the_same_host_id_is_refused(
    hosts_of: Callable[[str], PostgresStore],
) -> None:
    first = Hosts(hosts_of("studio-1"), lease_seconds=60)
    first.join(["a"], instance="run-1")
    first.join(["a"], instance="run-1")  # the same daemon again: fine
    with pytest.raises(HostConflict, match="studio-1"):
        Hosts(hosts_of("studio-1"), lease_seconds=60).join(["a"], instance="run-2")
    [listed] = first.listed()
    assert (listed.id, listed.folders, listed.in_flight) == ("studio-1", ("a",), 0)
    assert first.alive() == 1


def test_a_silent_hosts_claims_are_taken_over_and_it_can_no_longer_write(
    hosts_of: Callable[[str], PostgresStore],
) -> None:
    dead_q, live_q = hosts_of("dead"), hosts_of("live")
    dead, live = Hosts(dead_q, lease_seconds=0.5), Hosts(live_q, lease_seconds=0.5)
    dead.join(["shared"], "x")
    live.join(["shared"], "y")
    dead_q.enqueue_many([Found("shared", "a.jpg", 1, 1, 1)])
    job = dead_q.claim(0.5)
    assert job is not None and dead.holds(job.id)
    assert live.take_over_expired(["shared"]) == 0  # the lease still runs
    wait_until(lambda: live.take_over_expired(["shared"]) == 1, 10, what="lease expiry")
    assert not dead.holds(job.id)
    again = live_q.claim(60)
    assert again is not None and again.id == job.id and again.resend
    assert live.holds(job.id) and not dead.holds(job.id)


def test_a_heartbeat_renews_the_leases_of_a_running_host(
    hosts_of: Callable[[str], PostgresStore],
) -> None:
    queue = hosts_of("busy")
    hosts = Hosts(queue, lease_seconds=1.0)
    hosts.join(["f"], "x")
    queue.enqueue_many([Found("f", "a.jpg", 1, 1, 1)])
    job = queue.claim(1.0)
    assert job is not None
    start = queue.now()
    while queue.now() < start + 2.5:  # well past two leases, renewed all along
        hosts.heartbeat(in_flight=1)
        assert hosts.take_over_expired(["f"]) == 0
        beat = queue.now()
        wait_until(partial(_later_than, queue, beat + 0.3), 5, what="server time to pass")
    assert hosts.holds(job.id)
    assert hosts.listed()[0].in_flight == 1
