"""Dispatch at the account's limits, end to end (SPEC §5).

A real ``bgsyncd run`` subprocess against an emulator over loopback HTTP, with
rate windows of a few seconds so a test sees several of them. The emulator is
the referee: its log of request start times and statuses, and its credits.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bgsyncd.emulator import Emulator, RecordedRequest
from tests.support.daemons import (
    TEST_KEY,
)
from tests.support.emulated import CREDIT_PATH, image_requests, peak
from tests.support.helpers import product_image, wait_until
from tests.support.workers import WorkerFactory, make_dispatcher


def test_peak_sees_a_violation() -> None:
    # Every limit check below relies on this helper being able to fail.
    def reqs(*times: float) -> list[RecordedRequest]:
        return [RecordedRequest(t, "GET", CREDIT_PATH, 200, None, None) for t in times]

    assert peak(reqs(0.0, 0.5, 1.9, 2.0, 3.9), 2.0) == 3
    assert peak(reqs(0.0, 0.5, 1.0, 1.5, 1.99), 2.0) == 5
    assert peak([], 2.0) == 0


# -- pauses: a set, each reason lifted by its own rule (in process) -------------------------


def test_each_pause_reason_is_lifted_only_by_its_own_events() -> None:
    from bgsyncd.dispatch.pauses import PauseSet
    from bgsyncd.reasons import REASONS, Lift, lifted_by

    expected = {
        "invalid_api_key": {Lift.CREDITS_ABOVE_FLOOR, Lift.SIGHUP},
        "insufficient_credits": {Lift.CREDITS_ABOVE_FLOOR, Lift.SIGHUP},
        "credits_expired": {Lift.CREDITS_ABOVE_FLOOR, Lift.SIGHUP},
        "credit_floor": {Lift.CREDITS_ABOVE_FLOOR, Lift.SIGHUP},
        "api_malformed": {Lift.CREDITS_ANSWERED, Lift.CREDITS_ABOVE_FLOOR, Lift.SIGHUP},
        "unexpected_redirect": {Lift.CREDITS_ANSWERED, Lift.CREDITS_ABOVE_FLOOR, Lift.SIGHUP},
        "api_unreachable": {Lift.CREDITS_ANSWERED, Lift.CREDITS_ABOVE_FLOOR, Lift.SIGHUP},
        "output_unwritable": {Lift.PROBE},
        "queue_unavailable": {Lift.DATABASE},
    }
    assert {r: set(lifted_by(r)) for r in REASONS} == expected
    for event in Lift:
        pauses = PauseSet()
        for reason in REASONS:
            assert pauses.add(reason)
        assert not pauses.add("credit_floor")  # raised once
        gone = pauses.lift(event)
        assert gone == [r for r in REASONS if event in expected[r]]
        assert pauses.held == tuple(r for r in REASONS if r not in gone)
        assert pauses.first == pauses.held[0]


def enqueue_image(tmp_path: Path, queue: Any, name: str = "a.png") -> None:
    from bgsyncd.storage.contract import Found

    src = tmp_path / "inbox" / name
    src.write_bytes(product_image(30, 20, "PNG"))
    st = src.stat()
    queue.enqueue_many([Found("f", name, st.st_size, st.st_mtime_ns, st.st_ino)])


def test_sighup_and_credit_checks_never_lift_output_unwritable_only_its_probe_does(
    tmp_path: Path, emulator: Emulator, worker_factory: WorkerFactory
) -> None:
    d, queue, client = make_dispatcher(worker_factory, tmp_path, emulator)
    emulator.configure(keys=["another-key-entirely"])
    d.start()
    try:
        wait_until(lambda: d.paused == "invalid_api_key", what="pause on the refused key")
        d.raise_pause("output_unwritable", folder="f", error="[Errno 28] No space left on device")
        enqueue_image(tmp_path, queue)
        emulator.configure(keys=[TEST_KEY])
        checks = len([r for r in emulator.requests() if r.path == CREDIT_PATH])
        d.recheck_credits()  # SIGHUP: the key is good again
        wait_until(
            lambda: len([r for r in emulator.requests() if r.path == CREDIT_PATH]) > checks,
            what="a credit check after SIGHUP",
        )
        wait_until(lambda: d.pauses == ("output_unwritable",), what="only the disk pause left")
        assert d.paused == "output_unwritable"
        d.recheck_credits()
        d.wake()
        assert image_requests(emulator) == []  # still paused: nothing sent
        d.lift_pause("output_unwritable")  # the probe wrote
        wait_until(lambda: queue.counts().get("f", {}).get("done") == 1, what="job done")
        assert d.paused is None
    finally:
        d.stop(5)
        client.close()
        queue.close()


def test_while_several_pauses_hold_status_shows_the_first_raised(
    tmp_path: Path, emulator: Emulator, worker_factory: WorkerFactory
) -> None:
    d, queue, client = make_dispatcher(worker_factory, tmp_path, emulator)
    d.raise_pause("queue_unavailable")
    d.raise_pause("api_malformed")
    d.raise_pause("queue_unavailable")
    assert d.pauses == ("queue_unavailable", "api_malformed")
    d.recheck_credits()  # lifts api_malformed, never queue_unavailable
    assert d.pauses == ("queue_unavailable",)
    d.lift_pause("queue_unavailable")
    assert d.paused is None
    client.close()
    queue.close()


def test_clamped_waits_take_any_number_a_pacer_or_clock_can_give() -> None:
    from bgsyncd.dispatch.dispatcher import MAX_WAIT_SECONDS, clamp_wait

    assert clamp_wait(1e12) == MAX_WAIT_SECONDS
    assert clamp_wait(float("inf")) == MAX_WAIT_SECONDS
    assert clamp_wait(float("nan")) == 0.0
    assert clamp_wait(-5.0) == 0.0
    assert clamp_wait(2.5) == 2.5
    threading_cond = __import__("threading").Condition()
    with threading_cond:
        threading_cond.wait(clamp_wait(1e-9))


def test_a_huge_retry_after_never_kills_the_dispatch_thread(
    tmp_path: Path, emulator: Emulator, worker_factory: WorkerFactory
) -> None:
    from tests.support.helpers import FakeClock

    clock = FakeClock(time.time())
    d, queue, client = make_dispatcher(worker_factory, tmp_path, emulator, clock=clock)
    d._pacer.note_rate_limited(1e12)  # what a Retry-After of 1e12 did before any cap
    d.start()
    try:
        enqueue_image(tmp_path, queue)
        d.wake()
        wait_until(lambda: len(emulator.requests()) >= 1, what="the first credit check")
        clock.advance(2e12)  # the block is over
        d.wake()
        wait_until(lambda: queue.counts().get("f", {}).get("done") == 1, what="job done")
        assert d.alive()
    finally:
        d.stop(5)
        client.close()
        queue.close()


def test_a_credit_check_at_the_floor_lifts_api_malformed_but_not_an_account_reason(
    tmp_path: Path, emulator: Emulator, worker_factory: WorkerFactory
) -> None:
    emulator.configure(credits=5)
    # the balance is at it
    d, queue, client = make_dispatcher(worker_factory, tmp_path, emulator, floor=5)
    d.raise_pause("api_malformed")
    d.raise_pause("invalid_api_key")
    d.raise_pause("output_unwritable")
    d.start()  # the first step checks credits: answered normally, at the floor
    try:
        wait_until(lambda: "credit_floor" in d.pauses, what="the check at the floor")
        assert d.pauses == ("invalid_api_key", "output_unwritable", "credit_floor")
        assert d.paused == "invalid_api_key"
    finally:
        d.stop(5)
        client.close()
        queue.close()


def test_a_pause_raised_while_a_job_is_being_claimed_starts_nothing(
    tmp_path: Path,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    worker_factory: WorkerFactory,
) -> None:
    """Another job's outcome may pause dispatch between the look at the pauses and the claim.

    The race is made certain by raising the pause inside the real claim.
    """
    d, queue, client = make_dispatcher(worker_factory, tmp_path, emulator)
    real_claim = queue.claim
    raised = threading.Event()

    def claim_then_pause(*args: Any, **kwargs: Any) -> Any:
        job = real_claim(*args, **kwargs)
        if job is not None and not raised.is_set():
            raised.set()
            d.raise_pause("api_unreachable", error="three failures in a row")
        return job

    monkeypatch.setattr(queue, "claim", claim_then_pause)
    enqueue_image(tmp_path, queue)
    d.start()
    try:
        wait_until(raised.is_set, what="the pause raised during the claim")
        wait_until(
            lambda: queue.counts().get("f", {}).get("pending") == 1, what="the job given back"
        )
        assert image_requests(emulator) == []
        assert d.paused == "api_unreachable"
        d.lift_pause("api_unreachable")
        wait_until(lambda: queue.counts().get("f", {}).get("done") == 1, what="job done")
    finally:
        d.stop(5)
        client.close()
        queue.close()
