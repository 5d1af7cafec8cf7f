"""The fleet's claim on content in flight (``pg_cache.PostgresResultCache.fetching``, SPEC §8).

Real PostgreSQL, hosts as ``pgfleet.Hosts`` rows: a host fetching some
content holds a claim the others wait on; the claim is void once its host
stops beating for the lease, and the wait is bounded. One host's file cache
claims nothing (its threads wait on the worker's own lock).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bgsyncd.fleet.hosts import Hosts
from bgsyncd.storage.cache import ResultCache
from bgsyncd.storage.postgres.cache import PostgresResultCache
from bgsyncd.storage.postgres.store import PostgresStore

SHA = hashlib.sha256(b"same content").hexdigest()
MB = 1024 * 1024


@pytest.fixture
def host(pg_dsn: str) -> Iterator[Callable[..., tuple[PostgresResultCache, Hosts]]]:
    """A host of the fleet: its queue, its row in ``hosts`` (joined) and its shared cache."""
    queues: list[PostgresStore] = []

    def make(
        name: str, *, lease: float = 1.0, max_wait: float = 60.0, max_bytes: int = MB
    ) -> tuple[PostgresResultCache, Hosts]:
        queue = PostgresStore(pg_dsn, name)
        queues.append(queue)
        hosts = Hosts(queue, lease)
        hosts.join(["f"], f"{name}-life")
        cache = PostgresResultCache(
            queue, max_bytes, instance=f"{name}-life", lease_seconds=lease,
            max_wait_seconds=max_wait,
        )  # fmt: skip
        return cache, hosts

    yield make
    for queue in queues:
        queue.close()


def _enter_in_thread(cache: PostgresResultCache) -> tuple[threading.Thread, list[float]]:
    """Enter ``cache.fetching(SHA)`` in a thread; the list gets the monotonic time it did."""
    entered: list[float] = []

    def run() -> None:
        with cache.fetching(SHA):
            entered.append(time.monotonic())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, entered


def test_a_second_host_waits_while_the_first_fetches_and_goes_on_when_it_is_done(
    host: Callable[..., tuple[PostgresResultCache, Hosts]],
) -> None:
    a, a_hosts = host("a", lease=5.0)
    b, _ = host("b", lease=5.0)
    with a.fetching(SHA):
        thread, entered = _enter_in_thread(b)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # a beats on: b keeps waiting
            a_hosts.heartbeat(1)
            assert not entered
            time.sleep(0.1)
        a.put(SHA, b"\x89PNG\r\n\x1a\n" + b"IEND\xaeB`\x82", "proxy.matte")
        released = time.monotonic()
    thread.join(10)
    assert entered and entered[0] - released < 2.0
    assert b.get(SHA, "proxy.matte") is not None  # the answer b waited for


def test_a_claim_of_a_host_that_stopped_beating_is_void_after_its_lease(
    host: Callable[..., tuple[PostgresResultCache, Hosts]],
) -> None:
    lease = 1.0
    a, _ = host("a", lease=lease)
    b, _ = host("b", lease=lease)
    with a.fetching(SHA):  # a "freezes" here: no heartbeat after joining
        started = time.monotonic()
        thread, entered = _enter_in_thread(b)
        thread.join(10)
        assert entered, "b never got the claim"
        assert entered[0] - started <= lease + 2.0


def test_a_claim_held_too_long_by_a_live_host_is_taken_after_the_bound(
    host: Callable[..., tuple[PostgresResultCache, Hosts]],
) -> None:
    a, a_hosts = host("a", lease=30.0, max_wait=1.0)
    b, _ = host("b", lease=30.0, max_wait=1.0)
    with a.fetching(SHA):
        a_hosts.heartbeat(1)
        started = time.monotonic()
        thread, entered = _enter_in_thread(b)
        thread.join(10)
        assert entered and entered[0] - started <= 1.0 + 2.0


def test_a_host_restarted_takes_back_its_own_claim_at_once(
    host: Callable[..., tuple[PostgresResultCache, Hosts]],
) -> None:
    a, _ = host("a", lease=30.0)
    claim = a.fetching(SHA)
    claim.__enter__()  # a dies holding it (never released)
    again, _ = host("a", lease=30.0)  # the same host_id, its next life
    started = time.monotonic()
    with again.fetching(SHA):
        assert time.monotonic() - started < 1.0
    claim.__exit__(None, None, None)


def test_a_disabled_cache_and_one_hosts_file_cache_claim_nothing(
    host: Callable[..., tuple[PostgresResultCache, Hosts]], tmp_path: Path
) -> None:
    a, a_hosts = host("a", lease=30.0)
    off, _ = host("b", lease=30.0, max_bytes=0)
    files = ResultCache(tmp_path / "cache", MB)
    with a.fetching(SHA):
        a_hosts.heartbeat(1)
        started = time.monotonic()
        with off.fetching(SHA), files.fetching(SHA), files.fetching(SHA):
            assert time.monotonic() - started < 1.0
