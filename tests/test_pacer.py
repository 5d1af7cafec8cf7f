"""The sliding-log pacer: never more than ``limit`` starts in any window."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable

import pytest

from bgsyncd.errors import QueueUnavailable, Stopped
from bgsyncd.pacer import Pacer
from bgsyncd.queue import QueueError
from tests.helpers import FakeClock, wait_until
from tests.pacing import MemoryRequestLog


def max_in_window(times: list[float], length: float, closed: bool) -> int:
    """Most starts in any interval [s, s + length] (or [s, s + length) when not closed)."""
    times = sorted(times)
    best = 0
    for i, s in enumerate(times):
        n = sum(1 for t in times[i:] if (t <= s + length if closed else t < s + length))
        best = max(best, n)
    return best


def test_max_in_window_helper_sees_a_violation() -> None:
    # The property tests below depend on this check being able to fail.
    assert max_in_window([0.0, 1.0, 2.0, 60.0], 60.0, closed=True) == 4
    assert max_in_window([0.0, 1.0, 2.0, 60.0], 60.0, closed=False) == 3


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("limit", "window", "margin"), [(7, 60.0, 0.25), (3, 10.0, 0.0)])
def test_never_more_than_limit_in_any_window(
    seed: int, limit: int, window: float, margin: float
) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    pacer = Pacer(limit, window, MemoryRequestLog(), clock=clock, margin=margin)
    span = window + margin
    accepted: list[float] = []
    for _ in range(600):
        # Mix random gaps with steps of exactly delay(): the boundary is
        # where an off-by-one would let one start too many through.
        if rng.random() < 0.3:
            clock.advance(pacer.delay())
        else:
            clock.advance(rng.expovariate(limit / window * 1.5))
        now = clock.t
        in_window = sum(1 for t in accepted if t + span > now)
        expected_delay = pacer.delay()
        if pacer.try_acquire():
            assert expected_delay == 0.0
            accepted.append(now)
        else:
            # Refused only when the window really is full (liveness).
            assert expected_delay > 0.0
            assert in_window >= limit
        assert pacer.recent_count() == sum(1 for t in accepted if t + span > now)
    assert len(accepted) > 3 * limit
    assert max_in_window(accepted, span, closed=False) <= limit
    if margin > 0:
        assert max_in_window(accepted, window, closed=True) <= limit


def test_backwards_clock_never_lets_more_through_in_real_time() -> None:
    rng = random.Random(42)
    real = 0.0
    offset = 0.0
    clock = FakeClock(1000.0)
    pacer = Pacer(3, 10.0, MemoryRequestLog(), clock=clock, margin=0.0)
    accepted_real: list[float] = []
    for i in range(400):
        real += rng.uniform(0.0, 3.0)
        if i % 37 == 0:
            offset -= rng.uniform(1.0, 30.0)  # NTP steps the clock back
        clock.t = 1000.0 + real + offset
        if pacer.try_acquire():
            accepted_real.append(real)
    assert len(accepted_real) > 30
    assert max_in_window(accepted_real, 10.0, closed=False) <= 3


def test_delay_is_exact() -> None:
    clock = FakeClock(1000.0)
    pacer = Pacer(3, 60.0, MemoryRequestLog(), clock=clock, margin=0.25)
    assert pacer.delay() == 0.0
    for _ in range(3):
        assert pacer.try_acquire()
        clock.advance(10.0)
    # starts at 1000, 1010, 1020; now 1030
    assert pacer.recent_count() == 3
    assert pacer.delay() == 30.25
    assert not pacer.try_acquire()
    clock.advance(30.0)
    assert pacer.delay() == 0.25
    assert not pacer.try_acquire()
    clock.advance(0.25)
    assert pacer.delay() == 0.0
    assert pacer.try_acquire()
    # now 1060.25 with starts 1010, 1020, 1060.25: the next room is when 1010 leaves
    assert pacer.delay() == 10.0


def test_delay_counts_every_start_beyond_the_limit() -> None:
    # After a reconfigure to a lower limit, two starts must leave, not one.
    clock = FakeClock(1000.0)
    pacer = Pacer(3, 60.0, MemoryRequestLog(), clock=clock, margin=0.0)
    for _ in range(3):
        assert pacer.try_acquire()
        clock.advance(1.0)
    pacer.reconfigure(2, 60.0)  # starts 1000, 1001, 1002; now 1003
    assert pacer.delay() == 58.0
    clock.advance(57.0)
    assert not pacer.try_acquire()
    clock.advance(1.0)
    assert pacer.try_acquire()


def test_margin_widens_the_window() -> None:
    clock = FakeClock(1000.0)
    pacer = Pacer(1, 60.0, MemoryRequestLog(), clock=clock, margin=0.5)
    assert pacer.try_acquire()
    clock.advance(60.0)
    assert not pacer.try_acquire()
    clock.advance(0.4)
    assert not pacer.try_acquire()
    clock.advance(0.1)
    assert pacer.try_acquire()


def test_zero_margin_allows_at_exactly_one_window() -> None:
    clock = FakeClock(1000.0)
    pacer = Pacer(1, 60.0, MemoryRequestLog(), clock=clock, margin=0.0)
    assert pacer.try_acquire()
    clock.advance(59.5)
    assert not pacer.try_acquire()
    clock.advance(0.5)
    assert pacer.try_acquire()


def test_restart_counts_starts_from_the_previous_run() -> None:
    log = MemoryRequestLog()
    clock = FakeClock(1000.0)
    first = Pacer(3, 60.0, log, clock=clock)
    for _ in range(3):
        assert first.try_acquire()
        clock.advance(1.0)
    # The daemon restarts right after a full window.
    second = Pacer(3, 60.0, log, clock=clock)
    assert second.recent_count() == 3
    assert not second.try_acquire()
    assert second.delay() == 1000.0 + 60.25 - 1003.0
    clock.t = 1060.0
    assert not second.try_acquire()
    clock.t = 1060.25
    assert second.try_acquire()
    assert not second.try_acquire()


def test_restart_ignores_starts_older_than_the_window() -> None:
    log = MemoryRequestLog()
    for t in (900.0, 930.0, 939.75):
        log.record(t)
    clock = FakeClock(1000.0)
    pacer = Pacer(3, 60.0, log, clock=clock)
    # 939.75 + 60.25 == 1000: just left the window
    assert pacer.recent_count() == 0
    assert pacer.try_acquire()


def test_restart_after_the_clock_went_back_counts_future_starts() -> None:
    log = MemoryRequestLog()
    for t in (2000.0, 2001.0):
        log.record(t)
    clock = FakeClock(1000.0)
    pacer = Pacer(2, 60.0, log, clock=clock, margin=0.0)
    assert pacer.recent_count() == 2
    assert not pacer.try_acquire()
    # Counted as starting now: a full window, not a thousand seconds.
    assert pacer.delay() == 60.0


def test_clock_going_back_keeps_the_window_full_and_bounded() -> None:
    clock = FakeClock(1000.0)
    pacer = Pacer(3, 60.0, MemoryRequestLog(), clock=clock, margin=0.0)
    for _ in range(3):
        assert pacer.try_acquire()
    clock.t = 900.0
    assert not pacer.try_acquire()
    assert pacer.recent_count() == 3
    assert pacer.delay() == 60.0
    clock.advance(59.0)
    assert not pacer.try_acquire()
    clock.advance(1.0)
    assert pacer.try_acquire()


def test_rate_limited_with_retry_after() -> None:
    clock = FakeClock(1000.0)
    pacer = Pacer(7, 60.0, MemoryRequestLog(), clock=clock)
    pacer.note_rate_limited(5.0)
    assert pacer.delay() == 5.0
    assert not pacer.try_acquire()
    pacer.note_rate_limited(2.0)  # a shorter block does not shorten the longer one
    assert pacer.delay() == 5.0
    clock.advance(4.5)
    assert pacer.delay() == 0.5
    assert not pacer.try_acquire()
    clock.advance(0.5)
    assert pacer.try_acquire()
    assert pacer.delay() == 0.0


def test_rate_limited_without_retry_after_waits_a_full_window() -> None:
    clock = FakeClock(1000.0)
    pacer = Pacer(7, 60.0, MemoryRequestLog(), clock=clock, margin=0.25)
    assert pacer.try_acquire()  # our log is far from full; the API disagrees
    clock.advance(10.0)
    pacer.note_rate_limited(None)
    assert pacer.delay() == 60.25
    clock.advance(60.0)
    assert not pacer.try_acquire()
    clock.advance(0.25)
    assert pacer.try_acquire()


def test_rate_limit_block_survives_a_backwards_clock_but_stays_bounded() -> None:
    clock = FakeClock(1000.0)
    pacer = Pacer(7, 60.0, MemoryRequestLog(), clock=clock)
    pacer.note_rate_limited(10.0)
    clock.t = 500.0
    assert pacer.delay() == 10.0
    clock.advance(9.0)
    assert not pacer.try_acquire()
    clock.advance(1.0)
    assert pacer.try_acquire()


def test_reconfigure_longer_window_reloads_from_the_log() -> None:
    log = MemoryRequestLog()
    clock = FakeClock(1000.0)
    pacer = Pacer(3, 60.0, log, clock=clock, margin=0.0)
    for _ in range(3):
        assert pacer.try_acquire()
        clock.advance(1.0)
    clock.t = 1070.0
    assert pacer.recent_count() == 0
    pacer.reconfigure(3, 120.0)
    assert pacer.recent_count() == 3
    assert not pacer.try_acquire()
    assert pacer.delay() == 50.0
    assert (pacer.limit, pacer.window) == (3, 120.0)


def test_reconfigure_does_not_count_a_start_twice() -> None:
    clock = FakeClock(1000.0)
    pacer = Pacer(3, 60.0, MemoryRequestLog(), clock=clock, margin=0.0)
    assert pacer.try_acquire()
    assert pacer.try_acquire()
    clock.advance(10.0)
    pacer.reconfigure(3, 120.0)
    assert pacer.recent_count() == 2
    assert pacer.try_acquire()
    assert not pacer.try_acquire()


def test_starts_are_written_to_the_log() -> None:
    log = MemoryRequestLog()
    clock = FakeClock(1000.0)
    pacer = Pacer(2, 60.0, log, clock=clock)
    assert pacer.try_acquire()
    clock.advance(1.0)
    assert pacer.acquire() == 1001.0
    assert not pacer.try_acquire()
    assert log.since(0.0) == [1000.0, 1001.0]
    assert log.since(1000.0) == [1001.0]


def test_a_failing_log_still_counts_the_start() -> None:
    class BrokenLog(MemoryRequestLog):
        def record(self, t: float) -> None:
            raise OSError("disk full")

    pacer = Pacer(1, 60.0, BrokenLog(), clock=FakeClock())
    with pytest.raises(OSError):
        pacer.try_acquire()
    assert pacer.recent_count() == 1
    assert pacer.delay() > 0.0


@pytest.mark.parametrize(
    ("limit", "window", "margin"), [(0, 60.0, 0.25), (1, 0.0, 0.25), (1, 60.0, -1.0)]
)
def test_invalid_settings_are_refused(limit: int, window: float, margin: float) -> None:
    with pytest.raises(ValueError):
        Pacer(limit, window, MemoryRequestLog(), clock=FakeClock(), margin=margin)


def test_acquire_in_threads_with_a_real_clock() -> None:
    limit, window, margin = 3, 0.3, 0.02
    log = MemoryRequestLog()
    pacer = Pacer(limit, window, log, clock=time.monotonic, margin=margin)
    times: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                t = pacer.acquire()
                with lock:
                    times.append(t)
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=10.0)
    assert not any(th.is_alive() for th in threads)
    assert not errors
    assert len(times) == 12
    assert sorted(times) == log.since(0.0)
    assert max_in_window(times, window, closed=True) <= limit
    # Paced, but not starved: four windows' worth, each just over a window apart.
    assert max(times) - min(times) >= 3 * (window + margin)
    assert max(times) - min(times) < 3.0


def test_close_wakes_a_blocked_acquire() -> None:
    clock = FakeClock(1000.0)
    pacer = Pacer(1, 60.0, MemoryRequestLog(), clock=clock)
    assert pacer.acquire() == 1000.0
    outcome: list[object] = []

    def blocked() -> None:
        try:
            outcome.append(pacer.acquire())
        except Stopped as exc:
            outcome.append(exc)

    calls_before = clock.calls
    th = threading.Thread(target=blocked)
    th.start()
    # Once acquire() has read the clock it holds the lock until it waits, so
    # close() below can only run while the thread is blocked in the wait.
    wait_until(lambda: clock.calls > calls_before, timeout=5.0, what="acquire to read the clock")
    pacer.close()
    th.join(timeout=5.0)
    assert not th.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], Stopped)
    with pytest.raises(Stopped):
        pacer.acquire()
    assert not pacer.try_acquire()


def test_rate_limit_note_wakes_and_redelays_a_waiter() -> None:
    # A waiter woken by note_rate_limited re-checks and keeps waiting.
    clock = FakeClock(1000.0)
    pacer = Pacer(1, 60.0, MemoryRequestLog(), clock=clock)
    assert pacer.try_acquire()
    done = threading.Event()

    def waiter() -> None:
        with contextlib.suppress(Stopped):
            pacer.acquire()
        done.set()

    th = threading.Thread(target=waiter)
    calls_before = clock.calls
    th.start()
    wait_until(lambda: clock.calls > calls_before, timeout=5.0, what="acquire to wait")
    calls_before = clock.calls
    clock.advance(60.25)  # the window frees...
    pacer.note_rate_limited(30.0)  # ...but a 429 arrives and wakes the waiter
    wait_until(lambda: clock.calls > calls_before + 1, timeout=5.0, what="waiter to re-check")
    assert not done.is_set()
    assert pacer.recent_count() == 0
    pacer.close()
    th.join(timeout=5.0)
    assert done.is_set()


def test_starts_of_another_process_on_the_same_log_count() -> None:
    # `bgsyncd credits` beside the daemon: two pacers, one shared log.
    clock = FakeClock(1000.0)
    log = MemoryRequestLog()
    daemon = Pacer(3, 60.0, log, clock=clock, margin=0.0)
    other = Pacer(3, 60.0, log, clock=clock, margin=0.0)
    assert daemon.try_acquire()
    clock.advance(1.0)
    assert other.try_acquire()
    clock.advance(1.0)
    assert daemon.try_acquire()
    clock.advance(1.0)
    assert not daemon.try_acquire()  # the other process's start fills the window
    assert not other.try_acquire()
    clock.advance(57.0)  # the first start (t=1000) leaves the window
    assert daemon.try_acquire()
    assert not other.try_acquire()


class RacingLog(MemoryRequestLog):
    """A shared log that runs ``before_record`` once, just before the next write.

    It puts another process's whole check-and-record between our read of the
    log and our write: the race two processes run when a slot frees for both.
    """

    def __init__(self) -> None:
        super().__init__()
        self.before_record: Callable[[], None] | None = None

    def record(self, t: float) -> None:
        hook, self.before_record = self.before_record, None
        if hook is not None:
            hook()
        super().record(t)


def test_two_processes_racing_for_the_last_slot_make_one_start() -> None:
    clock = FakeClock(1000.0)
    log = RacingLog()
    daemon = Pacer(2, 60.0, log, clock=clock, margin=0.0)
    other = Pacer(2, 60.0, log, clock=clock, margin=0.0)
    assert daemon.try_acquire()
    clock.advance(1.0)
    granted: list[bool] = []
    # The daemon has read the log (one start: room) when the other process
    # checks and records its own start.
    log.before_record = lambda: granted.append(other.try_acquire())
    granted.append(daemon.try_acquire())
    assert granted == [True, False], "the later reader stands back"
    assert daemon.delay() > 0.0 and other.delay() > 0.0
    assert len(log.since(0.0)) == 3  # the stood-back start still counts (safe side)
    clock.advance(59.5)  # the first start has left; the stood-back one has not
    assert not daemon.try_acquire()
    clock.advance(1.0)
    assert daemon.try_acquire()


def test_acquire_stands_back_and_waits_after_losing_a_race() -> None:
    clock = FakeClock(1000.0)
    log = RacingLog()
    daemon = Pacer(1, 60.0, log, clock=clock, margin=0.0)
    other = Pacer(1, 60.0, log, clock=clock, margin=0.0)

    def other_starts() -> None:
        other.acquire()

    log.before_record = other_starts
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(daemon.acquire())
        except Stopped as exc:
            outcome.append(exc)

    th = threading.Thread(target=run)
    th.start()
    wait_until(lambda: daemon.delay() == 60.0, 5.0, what="daemon stood back")
    assert not outcome, "acquire returned after losing the race"
    daemon.close()
    th.join(5.0)
    assert len(outcome) == 1 and isinstance(outcome[0], Stopped)
    assert len(log.since(0.0)) == 2


# -- hostile Retry-After values (issue 9 item 4) ---------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (315360000.0, 600.0),  # ten years: capped at 10 windows
        (1e12, 600.0),
        (float("inf"), 600.0),
        (1e308, 600.0),
        (599.5, 599.5),
        (0.25, 0.25),
        (0.0, 0.0),
        (-5.0, 60.25),  # unusable: wait until the window frees
        (float("nan"), 60.25),
        (None, 60.25),
    ],
)
def test_retry_after_is_capped_at_ten_windows(retry_after: float | None, expected: float) -> None:
    clock = FakeClock(1000.0)
    pacer = Pacer(7, 60.0, MemoryRequestLog(), clock=clock, margin=0.25)
    pacer.note_rate_limited(retry_after)
    assert pacer.delay() == expected
    clock.advance(expected)
    assert pacer.try_acquire()


def test_the_cap_follows_a_reloaded_window() -> None:
    clock = FakeClock(1000.0)
    pacer = Pacer(7, 60.0, MemoryRequestLog(), clock=clock)
    pacer.reconfigure(7, 5.0)
    pacer.note_rate_limited(1e12)
    assert pacer.delay() == 50.0


@pytest.mark.parametrize("retry_after", [1e12, 315360000.0, float("inf")])
def test_acquire_after_a_huge_retry_after_waits_without_overflowing(retry_after: float) -> None:
    # Before the cap, 1e12 reached Condition.wait as a timeout: OverflowError, and the
    # dispatch thread died. Now the waiter just waits, and close() still wakes it.
    clock = FakeClock(1000.0)
    pacer = Pacer(7, 60.0, MemoryRequestLog(), clock=clock)
    pacer.note_rate_limited(retry_after)
    outcome: list[BaseException] = []

    def acquire() -> None:
        try:
            pacer.acquire()
        except BaseException as exc:  # whatever it is, the test reports it
            outcome.append(exc)

    waiter = threading.Thread(target=acquire, daemon=True)
    waiter.start()
    waiter.join(0.3)  # an overflow would have ended it at once
    assert waiter.is_alive(), outcome
    pacer.close()
    waiter.join(5)
    assert not waiter.is_alive()
    assert [type(e) for e in outcome] == [Stopped]


def test_a_wait_longer_than_a_condition_can_take_is_cut_into_pieces() -> None:
    # Whatever the pacer computes (here a full window of 1e11 s, beyond
    # threading.TIMEOUT_MAX), a blocked acquire waits in pieces and never overflows.
    assert threading.TIMEOUT_MAX < 1e11
    clock = FakeClock(1000.0)
    pacer = Pacer(1, 1e11, MemoryRequestLog(), clock=clock)
    assert pacer.try_acquire()
    assert pacer.delay() > threading.TIMEOUT_MAX
    outcome: list[BaseException] = []

    def acquire() -> None:
        try:
            pacer.acquire()
        except BaseException as exc:  # whatever it is, the test reports it
            outcome.append(exc)

    waiter = threading.Thread(target=acquire, daemon=True)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive(), outcome
    pacer.close()
    waiter.join(5)
    assert [type(e) for e in outcome] == [Stopped]


# -- a shared log decides (the fleet's; on PostgreSQL in tests/test_fleet_dispatch.py) ----


class ScriptedSharedLog:
    """A shared log whose answers the test gives: what no real database would say (nan, inf)."""

    def __init__(self, *answers: float) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[int, float, float]] = []

    def try_start(self, limit: int, window: float, margin: float) -> float:
        self.asked.append((limit, window, margin))
        return self.answers.pop(0) if self.answers else 0.0

    def since(self, t: float) -> list[float]:
        return []  # the pacer never reads a log that decides


class DownSharedLog:
    def try_start(self, limit: int, window: float, margin: float) -> float:
        raise QueueError("PostgreSQL queue: connection refused")

    def since(self, t: float) -> list[float]:
        raise QueueError("PostgreSQL queue: connection refused")


def test_a_shared_log_decides_even_when_memory_has_room() -> None:
    clock = FakeClock(1000.0)
    log = ScriptedSharedLog(7.5, 0.0)
    pacer = Pacer(5, 60.0, log, clock=clock, margin=0.25)
    assert not pacer.try_acquire()  # this host started nothing, but the fleet is full
    assert log.asked == [(5, 60.0, 0.25)]
    assert pacer.delay() == 7.5  # the delay the database gave, for the dispatcher
    assert not pacer.try_acquire()  # and it is not asked again before then
    assert len(log.asked) == 1
    clock.advance(7.5)
    assert pacer.try_acquire()
    assert pacer.recent_count() == 1


def test_a_429_blocks_without_asking_the_shared_log() -> None:
    clock = FakeClock(1000.0)
    log = ScriptedSharedLog()
    pacer = Pacer(5, 60.0, log, clock=clock)
    pacer.note_rate_limited(4.0)
    assert not pacer.try_acquire()
    assert log.asked == []
    clock.advance(4.0)
    assert pacer.try_acquire()


def test_a_reload_reaches_the_shared_log() -> None:
    log = ScriptedSharedLog()
    pacer = Pacer(5, 60.0, log, clock=FakeClock(), margin=0.25)
    pacer.reconfigure(9, 30.0)
    assert pacer.try_acquire()
    assert log.asked == [(9, 30.0, 0.25)]


@pytest.mark.parametrize("answer", [float("nan"), float("inf"), 1e12, 1e-9])
def test_an_absurd_delay_from_the_shared_log_is_clamped(answer: float) -> None:
    clock = FakeClock(1000.0)
    pacer = Pacer(5, 60.0, ScriptedSharedLog(answer), clock=clock)
    assert not pacer.try_acquire()
    assert 0.0 < pacer.delay() <= 60.0
    log = ScriptedSharedLog(*[answer] * 1000)
    pacer = Pacer(5, 60.0, log)
    outcome: list[BaseException] = []

    def acquire() -> None:
        try:
            pacer.acquire()
        except BaseException as exc:  # whatever it is, the test reports it
            outcome.append(exc)

    waiter = threading.Thread(target=acquire, daemon=True)
    waiter.start()
    waiter.join(0.3)  # an overflow would have ended it at once
    assert waiter.is_alive(), outcome
    pacer.close()
    waiter.join(5)
    assert [type(e) for e in outcome] == [Stopped]
    assert len(log.asked) < 100  # it waited between asking, even for 1e-9


def test_a_shared_log_that_cannot_answer_starts_nothing() -> None:
    pacer = Pacer(5, 60.0, DownSharedLog())
    with pytest.raises(QueueUnavailable, match="connection refused"):
        pacer.acquire()
    with pytest.raises(QueueUnavailable):
        pacer.try_acquire()
    assert pacer.recent_count() == 0


def test_threads_ask_the_shared_log_one_at_a_time() -> None:
    inside = 0
    most = 0
    lock = threading.Lock()

    class SlowLog:
        def try_start(self, limit: int, window: float, margin: float) -> float:
            nonlocal inside, most
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.01)
            with lock:
                inside -= 1
            return 0.0

        def since(self, t: float) -> list[float]:
            return []

    pacer = Pacer(100, 60.0, SlowLog())
    threads = [threading.Thread(target=pacer.acquire) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most == 1
    assert pacer.recent_count() == 8
