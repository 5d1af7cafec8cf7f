"""The sliding-log pacer: never more than ``limit`` starts in any window."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable

import pytest

from bgsyncd.dispatch.pacer import LONGEST_WAIT, Pacer
from bgsyncd.errors import QueueUnavailable, Stopped
from bgsyncd.storage.contract import QueueError
from tests.support.helpers import FakeClock, wait_until
from tests.support.pacing import MemoryRequestLog, Waits


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


def fake_time_pacer(
    limit: int,
    window: float,
    log: MemoryRequestLog | None = None,
    margin: float = 0.25,
    clock: FakeClock | None = None,
) -> tuple[Pacer, FakeClock]:
    """A pacer on fake time: a blocked ``acquire()`` advances the clock instead of sleeping."""
    clock = FakeClock(1000.0) if clock is None else clock
    log = MemoryRequestLog() if log is None else log
    return Pacer(limit, window, log, clock=clock, margin=margin, wait=Waits(clock)), clock


def room_at(starts: list[float], limit: int, span: float, now: float) -> float:
    """The first time at or after ``now`` with room for a start, given ``starts``."""
    in_window = sorted(t for t in starts if t + span > now)
    excess = len(in_window) - limit
    return now if excess < 0 else in_window[excess] + span


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("limit", "window", "margin"), [(7, 60.0, 0.25), (3, 10.0, 0.0)])
def test_never_more_than_limit_in_any_window(
    seed: int, limit: int, window: float, margin: float
) -> None:
    rng = random.Random(seed)
    log = MemoryRequestLog()
    pacer, clock = fake_time_pacer(limit, window, log, margin=margin)
    span = window + margin
    started: list[float] = []
    for _ in range(600):
        # Mix random gaps with steps of exactly delay(): the boundary is
        # where an off-by-one would let one start too many through.
        if rng.random() < 0.3:
            clock.advance(pacer.delay())
        else:
            clock.advance(rng.expovariate(limit / window * 1.5))
        now = clock.t
        room = room_at(started, limit, span, now)
        assert pacer.delay() == room - now
        if rng.random() < 0.7:
            # No sooner (never more than the limit), no later (liveness): at once
            # when there is room, else when the window frees.
            assert pacer.acquire() == room
            started.append(room)
    assert log.since(0.0) == started
    assert max_in_window(started, span, closed=False) <= limit
    if margin > 0:
        assert max_in_window(started, window, closed=True) <= limit


def test_backwards_clock_never_lets_more_through_in_real_time() -> None:
    # Times are whole 1/1024ths of a second, so every sum is exact and the
    # real time read back from the clock is the real time.
    rng = random.Random(42)
    pacer, clock = fake_time_pacer(3, 10.0, margin=0.0)
    offset = 0.0
    started_real: list[float] = []
    for i in range(400):
        clock.advance(rng.randrange(3 * 1024) / 1024)
        if i % 37 == 0:
            step = rng.randrange(1024, 30 * 1024) / 1024  # NTP steps the clock back
            clock.advance(-step)
            offset -= step
        # A blocked acquire lets real time pass on the clock, as a real wait would.
        started_real.append(pacer.acquire() - 1000.0 - offset)
    assert max_in_window(started_real, 10.0, closed=False) <= 3


def test_delay_is_exact() -> None:
    clock = FakeClock(1000.0)
    waits = Waits(clock)
    pacer = Pacer(3, 60.0, MemoryRequestLog(), clock=clock, margin=0.25, wait=waits)
    assert pacer.delay() == 0.0
    for t in (1000.0, 1010.0, 1020.0):
        assert pacer.acquire() == t
        clock.advance(10.0)
    assert waits.timeouts == []
    # starts at 1000, 1010, 1020; now 1030
    assert pacer.delay() == 30.25
    clock.advance(30.0)
    assert pacer.delay() == 0.25
    assert pacer.acquire() == 1060.25
    assert waits.timeouts == [0.25]
    # now 1060.25 with starts 1010, 1020, 1060.25: the next room is when 1010 leaves
    assert pacer.delay() == 10.0


def test_delay_counts_every_start_beyond_the_limit() -> None:
    # After a reconfigure to a lower limit, two starts must leave, not one.
    pacer, clock = fake_time_pacer(3, 60.0, margin=0.0)
    for t in (1000.0, 1001.0, 1002.0):
        assert pacer.acquire() == t
        clock.advance(1.0)
    pacer.reconfigure(2, 60.0)  # starts 1000, 1001, 1002; now 1003
    assert pacer.delay() == 58.0
    clock.advance(57.0)
    assert pacer.delay() == 1.0
    assert pacer.acquire() == 1061.0


@pytest.mark.parametrize("margin", [0.5, 0.0])
def test_the_margin_widens_the_window(margin: float) -> None:
    # With no margin a start is allowed at exactly one window.
    pacer, clock = fake_time_pacer(1, 60.0, margin=margin)
    assert pacer.acquire() == 1000.0
    for early in (0.5, 0.1):
        clock.t = 1060.0 + margin - early
        assert pacer.delay() > 0.0
    assert pacer.acquire() == 1060.0 + margin


def test_restart_counts_starts_from_the_previous_run() -> None:
    log = MemoryRequestLog()
    first, clock = fake_time_pacer(3, 60.0, log)
    for t in (1000.0, 1001.0, 1002.0):
        assert first.acquire() == t
        clock.advance(1.0)
    # The daemon restarts right after a full window.
    second, _ = fake_time_pacer(3, 60.0, log, clock=clock)
    assert second.delay() == 1000.0 + 60.25 - 1003.0  # three starts, the oldest at 1000
    clock.t = 1060.0
    assert second.delay() == 0.25
    assert second.acquire() == 1060.25
    assert second.delay() == 1.0  # the start at 1001 still counts


def test_restart_ignores_starts_older_than_the_window() -> None:
    log = MemoryRequestLog()
    for t in (900.0, 930.0, 939.75):
        log.record(t)
    pacer, _ = fake_time_pacer(3, 60.0, log)
    # 939.75 + 60.25 == 1000: just left the window, so three starts at once
    assert [pacer.acquire() for _ in range(3)] == [1000.0] * 3
    assert pacer.delay() == 60.25


def test_restart_after_the_clock_went_back_counts_future_starts() -> None:
    log = MemoryRequestLog()
    for t in (2000.0, 2001.0):
        log.record(t)
    pacer, _ = fake_time_pacer(2, 60.0, log, margin=0.0)
    # Both count, as starting now: a full window, not a thousand seconds.
    assert pacer.delay() == 60.0
    # And once only: reading the log again before the start does not count
    # them as starting now a second time (the daemon would stall ~1000 s).
    assert pacer.acquire() == 1060.0
    assert pacer.acquire() == 1060.0
    assert pacer.delay() == 60.0


def test_clock_going_back_keeps_the_window_full_and_bounded() -> None:
    pacer, clock = fake_time_pacer(3, 60.0, margin=0.0)
    assert [pacer.acquire() for _ in range(3)] == [1000.0] * 3
    clock.t = 900.0
    assert pacer.delay() == 60.0
    clock.advance(59.0)
    assert pacer.delay() == 1.0
    assert pacer.acquire() == 960.0


def test_rate_limited_with_retry_after() -> None:
    pacer, clock = fake_time_pacer(7, 60.0)
    pacer.note_rate_limited(5.0)
    assert pacer.delay() == 5.0
    pacer.note_rate_limited(2.0)  # a shorter block does not shorten the longer one
    assert pacer.delay() == 5.0
    clock.advance(4.5)
    assert pacer.delay() == 0.5
    assert pacer.acquire() == 1005.0
    assert pacer.delay() == 0.0


def test_rate_limited_without_retry_after_waits_a_full_window() -> None:
    pacer, clock = fake_time_pacer(7, 60.0, margin=0.25)
    assert pacer.acquire() == 1000.0  # our log is far from full; the API disagrees
    clock.advance(10.0)
    pacer.note_rate_limited(None)
    assert pacer.delay() == 60.25
    clock.advance(60.0)
    assert pacer.delay() == 0.25
    assert pacer.acquire() == 1070.25


def test_rate_limit_block_survives_a_backwards_clock_but_stays_bounded() -> None:
    pacer, clock = fake_time_pacer(7, 60.0)
    pacer.note_rate_limited(10.0)
    clock.t = 500.0
    assert pacer.delay() == 10.0
    clock.advance(9.0)
    assert pacer.delay() == 1.0
    assert pacer.acquire() == 510.0


def test_reconfigure_longer_window_reloads_from_the_log() -> None:
    log = MemoryRequestLog()
    pacer, clock = fake_time_pacer(3, 60.0, log, margin=0.0)
    for t in (1000.0, 1001.0, 1002.0):
        assert pacer.acquire() == t
        clock.advance(1.0)
    clock.t = 1070.0
    assert pacer.delay() == 0.0  # the three have left the 60 s window
    pacer.reconfigure(3, 120.0)
    assert pacer.delay() == 50.0  # ...and are back in the 120 s one
    assert (pacer.limit, pacer.window) == (3, 120.0)
    assert pacer.acquire() == 1120.0


def test_reconfigure_does_not_count_a_start_twice() -> None:
    pacer, clock = fake_time_pacer(3, 60.0, margin=0.0)
    assert [pacer.acquire() for _ in range(2)] == [1000.0] * 2
    clock.advance(10.0)
    pacer.reconfigure(3, 120.0)
    assert pacer.delay() == 0.0
    assert pacer.acquire() == 1010.0
    assert pacer.delay() == 110.0  # three starts, the oldest at 1000


def test_starts_are_written_to_the_log() -> None:
    log = MemoryRequestLog()
    pacer, clock = fake_time_pacer(2, 60.0, log)
    assert pacer.acquire() == 1000.0
    clock.advance(1.0)
    assert pacer.acquire() == 1001.0
    assert pacer.delay() == 59.25
    assert log.since(0.0) == [1000.0, 1001.0]
    assert log.since(1000.0) == [1001.0]


def test_a_failing_log_still_counts_the_start() -> None:
    class BrokenLog(MemoryRequestLog):
        def record(self, t: float) -> None:
            raise OSError("disk full")

    pacer, _ = fake_time_pacer(1, 60.0, BrokenLog())
    with pytest.raises(OSError):
        pacer.acquire()
    assert pacer.delay() == 60.25


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
    log = MemoryRequestLog()
    pacer = Pacer(1, 60.0, log, clock=clock)
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
    clock.advance(60.25)  # room again, but closed: no start
    with pytest.raises(Stopped):
        pacer.acquire()
    assert log.since(0.0) == [1000.0]


def test_rate_limit_note_wakes_and_redelays_a_waiter() -> None:
    # A waiter woken by note_rate_limited re-checks and keeps waiting.
    clock = FakeClock(1000.0)
    log = MemoryRequestLog()
    pacer = Pacer(1, 60.0, log, clock=clock)
    assert pacer.acquire() == 1000.0
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
    assert log.since(0.0) == [1000.0]  # the waiter started nothing
    assert pacer.delay() == 30.0  # the 429's block, not the window, holds it
    pacer.close()
    th.join(timeout=5.0)
    assert done.is_set()


@pytest.mark.parametrize("daemon_asks_first", [True, False])
def test_starts_of_another_process_on_the_same_log_count(daemon_asks_first: bool) -> None:
    # `bgsyncd credits` beside the daemon: two pacers, one shared log.
    log = MemoryRequestLog()
    daemon, clock = fake_time_pacer(3, 60.0, log, margin=0.0)
    other, _ = fake_time_pacer(3, 60.0, log, margin=0.0, clock=clock)
    assert daemon.acquire() == 1000.0
    clock.advance(1.0)
    assert other.acquire() == 1001.0
    clock.advance(1.0)
    assert daemon.acquire() == 1002.0
    clock.advance(1.0)
    first, second = (daemon, other) if daemon_asks_first else (other, daemon)
    # At 1003 the other process's start fills the window, for either pacer:
    # the first to ask waits until the first start (t=1000) leaves...
    assert first.acquire() == 1060.0
    # ...and the window is full again, until t=1001 leaves.
    assert second.acquire() == 1061.0
    assert log.since(0.0) == [1000.0, 1001.0, 1002.0, 1060.0, 1061.0]


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
    log = RacingLog()
    daemon, clock = fake_time_pacer(2, 60.0, log, margin=0.0)
    other, _ = fake_time_pacer(2, 60.0, log, margin=0.0, clock=clock)
    assert daemon.acquire() == 1000.0
    clock.advance(1.0)
    other_started: list[float] = []

    def other_checks_and_records() -> None:
        other_started.append(other.acquire())
        assert other.delay() == 59.0  # full: the daemon's start at 1000 and its own

    # The daemon has read the log (one start: room) when the other process
    # checks and records its own start.
    log.before_record = other_checks_and_records
    # The later reader stands back; its start, recorded, still counts (safe
    # side): the first start leaves at 1060, the two at 1001 only at 1061.
    assert daemon.acquire() == 1061.0, "the later reader stands back"
    assert other_started == [1001.0]
    assert log.since(0.0) == [1000.0, 1001.0, 1001.0, 1061.0]


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
    pacer, _ = fake_time_pacer(7, 60.0, margin=0.25)
    pacer.note_rate_limited(retry_after)
    assert pacer.delay() == expected
    assert pacer.acquire() == 1000.0 + expected


def test_the_cap_follows_a_reloaded_window() -> None:
    clock = FakeClock(1000.0)
    pacer = Pacer(7, 60.0, MemoryRequestLog(), clock=clock)
    pacer.reconfigure(7, 5.0)
    pacer.note_rate_limited(1e12)
    assert pacer.delay() == 50.0


def assert_waits_until_closed(pacer: Pacer) -> None:
    """A blocked ``acquire()`` on a real wait keeps waiting, until ``close()`` stops it."""
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


@pytest.mark.parametrize("retry_after", [1e12, 315360000.0, float("inf")])
def test_acquire_after_a_huge_retry_after_waits_without_overflowing(retry_after: float) -> None:
    # Before the cap, 1e12 reached Condition.wait as a timeout: OverflowError, and the
    # dispatch thread died. Now the waiter just waits, and close() still wakes it.
    clock = FakeClock(1000.0)
    waits = Waits()
    pacer = Pacer(7, 60.0, MemoryRequestLog(), clock=clock, wait=waits)
    pacer.note_rate_limited(retry_after)
    assert_waits_until_closed(pacer)
    assert waits.timeouts and max(waits.timeouts) <= LONGEST_WAIT


def test_a_wait_longer_than_a_condition_can_take_is_cut_into_pieces() -> None:
    # Whatever the pacer computes (here a full window of 1e11 s, beyond
    # threading.TIMEOUT_MAX), a blocked acquire waits in pieces and never overflows.
    assert threading.TIMEOUT_MAX < 1e11
    clock = FakeClock(1000.0)
    waits = Waits()
    pacer = Pacer(1, 1e11, MemoryRequestLog(), clock=clock, wait=waits)
    assert pacer.acquire() == 1000.0
    assert pacer.delay() > threading.TIMEOUT_MAX
    assert_waits_until_closed(pacer)
    assert waits.timeouts and max(waits.timeouts) <= LONGEST_WAIT


# -- a shared log decides (the fleet's; on PostgreSQL in tests/system/test_fleet_dispatch_pg.py) --


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
    log = ScriptedSharedLog(7.5)
    seen: list[tuple[float, int]] = []
    waits = Waits(clock, while_waiting=lambda: seen.append((pacer.delay(), len(log.asked))))
    pacer = Pacer(5, 60.0, log, clock=clock, margin=0.25, wait=waits)
    # This host started nothing, but the fleet is full: the start waits the
    # delay the database gave, and it is not asked again before then.
    assert pacer.acquire() == 1007.5
    assert log.asked == [(5, 60.0, 0.25)] * 2
    assert waits.timeouts == [7.5]
    assert seen == [(7.5, 1)]  # meanwhile delay() is that delay, for the dispatcher
    # Memory counts this host's own starts: five fill its guess of the window.
    assert [pacer.acquire() for _ in range(4)] == [1007.5] * 4
    assert pacer.delay() == 60.25


def test_a_429_blocks_without_asking_the_shared_log() -> None:
    clock = FakeClock(1000.0)
    log = ScriptedSharedLog()
    asked_while_blocked: list[int] = []
    waits = Waits(clock, while_waiting=lambda: asked_while_blocked.append(len(log.asked)))
    pacer = Pacer(5, 60.0, log, clock=clock, wait=waits)
    pacer.note_rate_limited(4.0)
    assert pacer.acquire() == 1004.0
    assert waits.timeouts == [4.0]
    assert asked_while_blocked == [0]
    assert len(log.asked) == 1


def test_a_reload_reaches_the_shared_log() -> None:
    log = ScriptedSharedLog()
    pacer = Pacer(5, 60.0, log, clock=FakeClock(), margin=0.25)
    pacer.reconfigure(9, 30.0)
    assert pacer.acquire() == 1000.0
    assert log.asked == [(9, 30.0, 0.25)]


@pytest.mark.parametrize("answer", [float("nan"), float("inf"), 1e12, 1e-9])
def test_an_absurd_delay_from_the_shared_log_is_clamped(answer: float) -> None:
    clock = FakeClock(1000.0)
    seen: list[float] = []
    waits = Waits(clock, while_waiting=lambda: seen.append(pacer.delay()))
    pacer = Pacer(5, 60.0, ScriptedSharedLog(answer), clock=clock, wait=waits)
    started = pacer.acquire()
    assert len(seen) == 1 and 0.0 < seen[0] <= 60.0
    assert waits.timeouts == seen
    assert started == 1000.0 + seen[0]
    log = ScriptedSharedLog(*[answer] * 1000)
    assert_waits_until_closed(Pacer(5, 60.0, log))
    assert len(log.asked) < 100  # it waited between asking, even for 1e-9


def test_a_shared_log_that_cannot_answer_starts_nothing() -> None:
    pacer = Pacer(1, 60.0, DownSharedLog())
    with pytest.raises(QueueUnavailable, match="connection refused"):
        pacer.acquire()
    with pytest.raises(QueueUnavailable):
        pacer.acquire()
    assert pacer.delay() == 0.0  # with a limit of one: no start counted


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

    pacer = Pacer(8, 60.0, SlowLog())
    started: list[float] = []

    def start() -> None:
        started.append(pacer.acquire())

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most == 1
    assert len(started) == 8
    # This host's guess counts all eight starts, and no more: full at eight, room at nine.
    assert pacer.delay() > 0.0
    pacer.reconfigure(9, 60.0)
    assert pacer.delay() == 0.0
