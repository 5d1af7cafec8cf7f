"""The credit guard: the floor, the local count and when to check."""

from __future__ import annotations

import threading

import pytest

from bgsyncd.dispatch.credits import CreditGuard
from tests.support.helpers import FakeClock, at_floor


def start_all(guard: CreditGuard) -> int:
    """Reserve as many requests as the guard allows; return how many."""
    n = 0
    while guard.can_start():
        guard.reserve()
        n += 1
        assert n < 1000, "the guard never stops"
    return n


def test_unknown_credits_allow_nothing() -> None:
    guard = CreditGuard(0, 600.0, clock=FakeClock())
    assert guard.available is None
    assert not guard.can_start()
    assert not guard.try_reserve()
    assert not at_floor(guard)  # not the floor: we just don't know yet


def test_thirteen_credits_floor_ten_processes_exactly_three() -> None:
    guard = CreditGuard(10, 600.0, clock=FakeClock())
    guard.update(13, None)
    assert start_all(guard) == 3
    assert guard.in_flight == 3
    assert at_floor(guard)
    for _ in range(3):
        guard.settle(charged=True)
    assert guard.available == 10
    assert guard.in_flight == 0
    assert not guard.can_start()
    assert start_all(guard) == 0


def test_floor_zero_uses_every_credit() -> None:
    guard = CreditGuard(0, 600.0, clock=FakeClock())
    guard.update(3, None)
    assert start_all(guard) == 3
    for _ in range(3):
        guard.settle(charged=True)
    assert guard.available == 0
    assert not guard.can_start()
    assert at_floor(guard)


def test_uncharged_request_gives_its_credit_back() -> None:
    guard = CreditGuard(10, 600.0, clock=FakeClock())
    guard.update(13, None)
    assert start_all(guard) == 3
    guard.settle(charged=False)  # e.g. a 500: nothing spent
    assert guard.available == 13
    assert guard.can_start()
    guard.settle(charged=True)  # outcome unknown: counted as spent
    assert guard.available == 12
    assert start_all(guard) == 1


def test_settle_without_reserve_is_an_error() -> None:
    guard = CreditGuard(0, 600.0, clock=FakeClock())
    guard.update(5, None)
    with pytest.raises(RuntimeError):
        guard.settle(charged=True)
    assert guard.available == 5


def test_try_reserve_admits_exactly_three_across_threads() -> None:
    guard = CreditGuard(10, 600.0, clock=FakeClock())
    guard.update(13, None)
    barrier = threading.Barrier(16)
    results: list[bool] = []
    lock = threading.Lock()

    def contend() -> None:
        barrier.wait(timeout=5.0)
        ok = guard.try_reserve()
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=contend) for _ in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=5.0)
    assert len(results) == 16
    assert results.count(True) == 3
    assert guard.in_flight == 3


def test_check_due_at_start_and_every_interval() -> None:
    clock = FakeClock()
    guard = CreditGuard(0, 600.0, clock=clock)
    assert guard.check_due()  # never checked
    guard.update(50, 1_900_000_000.0)
    assert guard.last_checked == clock.t
    assert guard.expires_at == 1_900_000_000.0
    assert not guard.check_due()
    clock.advance(599.0)
    assert not guard.check_due()
    clock.advance(1.0)
    assert guard.check_due()
    guard.update(50, None)
    assert not guard.check_due()


def test_reaching_the_floor_triggers_exactly_one_recheck() -> None:
    clock = FakeClock()
    guard = CreditGuard(10, 600.0, clock=clock)
    guard.update(12, None)
    assert start_all(guard) == 2
    guard.settle(charged=True)
    assert not guard.check_due()  # in flight, local count not yet at the floor
    guard.settle(charged=True)
    assert guard.available == 10
    assert guard.check_due()  # reached the floor: check at once
    assert guard.check_due()  # asking again does not consume it; a check does
    clock.advance(1.0)
    guard.update(10, None)  # no top-up
    # Still at the floor, but a check happened since: wait for the interval.
    for _ in range(100):
        assert not guard.check_due()
    clock.advance(599.0)
    assert not guard.check_due()
    clock.advance(1.0)
    assert guard.check_due()


def test_a_check_that_reports_the_floor_does_not_recheck_at_once() -> None:
    guard = CreditGuard(10, 600.0, clock=FakeClock())
    guard.update(10, None)
    assert at_floor(guard)
    assert not guard.check_due()


def test_failed_checks_do_not_hammer() -> None:
    clock = FakeClock()
    guard = CreditGuard(10, 600.0, clock=clock)
    guard.note_check_failed()  # the very first check failed
    assert not guard.check_due()
    clock.advance(600.0)
    assert guard.check_due()
    guard.note_check_failed(retry_in=5.0)  # the caller may ask for a sooner retry
    clock.advance(4.0)
    assert not guard.check_due()
    clock.advance(1.0)
    assert guard.check_due()
    guard.update(11, None)
    guard.reserve()
    guard.settle(charged=True)  # reaches the floor
    assert guard.check_due()
    guard.note_check_failed()  # the re-check failed: no loop of re-checks
    assert not guard.check_due()
    clock.advance(600.0)
    assert guard.check_due()


def test_a_top_up_allows_starts_again() -> None:
    guard = CreditGuard(10, 600.0, clock=FakeClock())
    guard.update(10, None)
    assert not guard.can_start()
    assert at_floor(guard)
    guard.update(15, None)
    assert guard.can_start()
    assert not at_floor(guard)
    assert start_all(guard) == 5


def test_update_while_in_flight_counts_them() -> None:
    guard = CreditGuard(0, 600.0, clock=FakeClock())
    guard.update(5, None)
    assert start_all(guard) == 5
    guard.update(5, None)  # the API has not charged them yet
    assert not guard.can_start()
    assert guard.in_flight == 5


def test_set_floor() -> None:
    clock = FakeClock()
    guard = CreditGuard(0, 600.0, clock=clock)
    guard.update(20, None)
    assert not guard.check_due()
    guard.set_floor(25)
    assert guard.floor == 25
    assert not guard.can_start()
    assert guard.check_due()  # the count is at the new floor: one re-check
    guard.update(20, None)
    assert not guard.check_due()
    guard.set_floor(5)
    assert start_all(guard) == 15
    with pytest.raises(ValueError):
        guard.set_floor(-1)


def test_set_check_interval() -> None:
    clock = FakeClock()
    guard = CreditGuard(0, 600.0, clock=clock)
    guard.update(20, None)
    guard.set_check_interval(60.0)
    clock.advance(59.0)
    assert not guard.check_due()
    clock.advance(1.0)
    assert guard.check_due()


@pytest.mark.parametrize(("floor", "interval"), [(-1, 600.0), (0, 0.0)])
def test_invalid_settings_are_refused(floor: int, interval: float) -> None:
    with pytest.raises(ValueError):
        CreditGuard(floor, interval)
