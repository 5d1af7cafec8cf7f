"""Dispatch at the account's limits, end to end (SPEC §5).

A real ``bgsyncd run`` subprocess against an emulator over loopback HTTP, with
rate windows of a few seconds so a test sees several of them. The emulator is
the referee: its log of request start times and statuses, and its credits.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
import urllib.request
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from bgsyncd.emulator import Emulator, RecordedRequest
from tests.support.daemons import (
    TEST_KEY,
    DaemonProcess,
    attempts,
    free_port,
    make_folder,
    run_cli,
    start_daemon,
    wait_status,
    write_config,
)
from tests.support.emulated import CREDIT_PATH, image_requests, peak
from tests.support.helpers import product_image, wait_until
from tests.support.workers import WorkerFactory, make_dispatcher

WRONG_KEY = "not-a-key-the-emulator-knows-42"


# -- helpers ---------------------------------------------------------------------------


def statuses(emu: Emulator) -> list[int]:
    return [r.status for r in emu.requests()]


def drop_images(inbox: Path, names: Sequence[str], seed: int = 0) -> dict[str, str]:
    """Write distinct small images (no two alike: no cache hits); return sha256 -> name."""
    shas = {}
    for i, name in enumerate(names):
        data = product_image(24 + seed + i, 20 + i % 7, "PNG")
        (inbox / name).write_bytes(data)
        shas[hashlib.sha256(data).hexdigest()] = name
    return shas


def outputs(folder: dict[str, Any]) -> list[str]:
    return sorted(p.name for p in Path(folder["outbox"]).rglob("*") if p.is_file())


def quarantined(folder: dict[str, Any]) -> list[str]:
    root = Path(folder["quarantine"])
    return sorted(p.name for p in root.rglob("*")) if root.exists() else []


def count_events(d: DaemonProcess, event: str, **fields: Any) -> int:
    return sum(
        1
        for e in d.events()
        if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
    )


def test_peak_sees_a_violation() -> None:
    # Every limit check below relies on this helper being able to fail.
    def reqs(*times: float) -> list[RecordedRequest]:
        return [RecordedRequest(t, "GET", CREDIT_PATH, 200, None, None) for t in times]

    assert peak(reqs(0.0, 0.5, 1.9, 2.0, 3.9), 2.0) == 3
    assert peak(reqs(0.0, 0.5, 1.0, 1.5, 1.99), 2.0) == 5
    assert peak([], 2.0) == 0


# -- the rate limit ----------------------------------------------------------------------


def test_three_folders_share_the_limit_round_robin_and_never_exceed_it(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    limit, window = 5, 2.0
    with Emulator(keys=[TEST_KEY], rate_limit=limit, rate_window=window, seed=1) as emu:
        folders = [make_folder(tmp_path, name) for name in ("a", "b", "c")]
        config = write_config(
            tmp_path / "c.toml",
            base_url=emu.url,
            folders=folders,
            api={"rate_limit": limit, "rate_window_seconds": window, "max_in_flight": 3},
        )
        start_daemon(daemons, config)
        a, b, c = (Path(f["inbox"]) for f in folders)
        folder_of = {sha: "a" for sha in drop_images(a, [f"a{i:02}.png" for i in range(20)])}
        # The first window fills (the start-up credit check and four of a's
        # files); b's and c's files land while sixteen of a's still wait.
        wait_until(lambda: len(emu.requests()) >= limit, 30, what="a full first window")
        landed = time.time()
        folder_of |= dict.fromkeys(drop_images(b, ["b0.png", "b1.png"], seed=40), "b")
        folder_of |= dict.fromkeys(drop_images(c, ["c0.png", "c1.png"], seed=50), "c")
        wait_until(lambda: sum(len(outputs(f)) for f in folders) == 24, 90, what="all 24 outputs")
        requests = emu.requests()
        assert [r.status for r in requests if r.status != 200] == [], "no 429, no error"
        assert len(requests) == 25  # 24 images and the start-up credit check
        assert peak(requests, window) == limit, "the limit is used, never exceeded"
        after = [folder_of[str(r.image_sha256)] for r in image_requests(emu) if r.started >= landed]
        assert len(after) == 20
        # At most max_in_flight of a's files were claimed before b's and c's
        # landed; from then on the folders take turns. One after another
        # (FIFO), b's first file would be the 17th request.
        assert "b" in after[:5] and "c" in after[:5], after
        assert after[:9].count("b") == 2 and after[:9].count("c") == 2, after


def test_a_restart_after_a_full_window_and_a_credits_command_beside_it_get_no_429(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    limit, window = 3, 5.0
    with Emulator(keys=[TEST_KEY], rate_limit=limit, rate_window=window, seed=1) as emu:
        folder = make_folder(tmp_path, "shop")
        config = write_config(
            tmp_path / "c.toml",
            base_url=emu.url,
            folders=[folder],
            api={"rate_limit": limit, "rate_window_seconds": window},
        )
        inbox = Path(folder["inbox"])
        first = start_daemon(daemons, config)
        drop_images(inbox, [f"p{i}.png" for i in range(4)])
        # the credit check and two images: the window is used up
        wait_until(lambda: len(emu.requests()) >= limit, 30, what="a full window")
        assert first.stop() == 0
        second = start_daemon(daemons, config)
        restarted = time.time()
        drop_images(inbox, ["q0.png", "q1.png"], seed=10)
        window_ends = emu.requests()[0].started + window
        assert restarted < window_ends, "precondition: the new run began inside the old window"
        # `bgsyncd credits` while the daemon waits for the same free slot
        credits = run_cli("credits", "--json", "--config", str(config))
        assert credits.returncode == 0, credits.stderr
        assert json.loads(credits.stdout)["available_credits"] > 0
        wait_until(lambda: len(outputs(folder)) == 6, 60, what="all 6 outputs")
        assert second.stop() == 0
        requests = emu.requests()
        assert [r.status for r in requests if r.status != 200] == [], "no 429, no error"
        assert [r.path for r in requests].count(CREDIT_PATH) == 3  # two runs and the command
        assert len(requests) == 9
        assert peak(requests, window) == limit
        assert min(r.started for r in requests[limit:]) >= window_ends


# -- credits -----------------------------------------------------------------------------


def test_the_floor_stops_exactly_and_a_top_up_resumes_without_a_restart(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    with Emulator(keys=[TEST_KEY], credits=13, rate_limit=1000, seed=1) as emu:
        folder = make_folder(tmp_path, "shop")
        config = write_config(
            tmp_path / "c.toml",
            base_url=emu.url,
            folders=[folder],
            credits={"floor": 10, "check_interval_seconds": 1},
        )
        d = start_daemon(daemons, config)
        drop_images(Path(folder["inbox"]), [f"p{i}.png" for i in range(10)])
        wait_status(config, paused="credit_floor", done=3, pending=7)
        checks = count_events(d, "credits.checked")
        # Still at the floor after two more checks: nothing more was sent.
        wait_until(lambda: count_events(d, "credits.checked") >= checks + 2, 20, what="checks")
        assert len(image_requests(emu)) == 3
        assert emu.credits == 10
        emu.configure(credits=15)
        wait_until(lambda: len(image_requests(emu)) >= 8, 30, what="five more")
        wait_status(config, paused="credit_floor", done=8, pending=2)
        checks = count_events(d, "credits.checked")
        wait_until(lambda: count_events(d, "credits.checked") >= checks + 2, 20, what="checks")
        assert len(image_requests(emu)) == 8
        assert emu.credits == 10
        assert 402 not in statuses(emu)
        assert count_events(d, "dispatch.paused", reason="credit_floor") == 2
        assert count_events(d, "dispatch.resumed") == 1
        assert quarantined(folder) == []


def test_an_unknown_key_pauses_without_quarantine_and_sighup_resumes_at_once(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    with Emulator(keys=[TEST_KEY], rate_limit=1000, seed=1) as emu:
        folder = make_folder(tmp_path, "shop")
        config = write_config(tmp_path / "c.toml", base_url=emu.url, folders=[folder])
        d = start_daemon(daemons, config, env={"BGSYNCD_API_KEY": WRONG_KEY})
        drop_images(Path(folder["inbox"]), [f"p{i}.png" for i in range(3)])
        wait_status(config, paused="invalid_api_key", pending=3)
        assert quarantined(folder) == []
        assert set(attempts(config).values()) == {0}
        assert set(statuses(emu)) == {401}
        emu.configure(keys=[TEST_KEY, WRONG_KEY])
        fixed = time.monotonic()
        d.signal(signal.SIGHUP)
        # check_interval_seconds is 600: only the reload can have resumed it.
        wait_until(lambda: len(outputs(folder)) == 3, 30, what="all outputs after SIGHUP")
        assert time.monotonic() - fixed < 30
        wait_status(config, paused=None, done=3)
        assert quarantined(folder) == []
        assert set(attempts(config).values()) == {0}
        assert d.saw("dispatch.resumed", after="invalid_api_key")
        assert WRONG_KEY not in d.output()


def test_no_credits_pauses_at_the_floor_and_a_402_pauses_without_quarantine(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    with Emulator(keys=[TEST_KEY], credits=0, rate_limit=1000, seed=1) as emu:
        folder = make_folder(tmp_path, "shop")
        config = write_config(tmp_path / "c.toml", base_url=emu.url, folders=[folder])
        d = start_daemon(daemons, config)
        inbox = Path(folder["inbox"])
        drop_images(inbox, ["p0.png"])
        # credits 0 with floor 0: the check says no request may start
        wait_status(config, paused="credit_floor", pending=1)
        assert image_requests(emu) == []
        emu.configure(credits=100)
        d.signal(signal.SIGHUP)
        wait_until(lambda: len(outputs(folder)) == 1, 30, what="p0 after the top-up")
        # The account empties behind the daemon's back: the image request gets 402.
        emu.configure(credits=0)
        drop_images(inbox, ["p1.png", "p2.png"], seed=10)
        wait_status(config, paused="insufficient_credits", pending=2)
        assert 402 in statuses(emu)
        assert quarantined(folder) == []
        assert set(attempts(config).values()) == {0}
        emu.configure(credits=100)
        d.signal(signal.SIGHUP)
        wait_until(lambda: len(outputs(folder)) == 3, 30, what="all outputs")
        assert set(attempts(config).values()) == {0}


def test_expired_credits_pause_without_spending_a_request(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    past = datetime.now(timezone.utc) - timedelta(days=1)
    with Emulator(keys=[TEST_KEY], expires=past, rate_limit=1000, seed=1) as emu:
        folder = make_folder(tmp_path, "shop")
        config = write_config(tmp_path / "c.toml", base_url=emu.url, folders=[folder])
        d = start_daemon(daemons, config)
        drop_images(Path(folder["inbox"]), ["p0.png", "p1.png"])
        wait_status(config, paused="credits_expired", pending=2)
        # The credit check gave the expiry: no image request was sent to learn it.
        assert [r.path for r in emu.requests()] == [CREDIT_PATH]
        assert quarantined(folder) == []
        emu.configure(expires=None)  # renewed: a year from now
        d.signal(signal.SIGHUP)
        wait_until(lambda: len(outputs(folder)) == 2, 30, what="outputs after renewal")
        assert set(attempts(config).values()) == {0}
        assert 403 not in statuses(emu)


def test_an_expiry_the_check_did_not_show_pauses_on_the_403(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    with Emulator(keys=[TEST_KEY], rate_limit=1000, seed=1) as emu:
        folder = make_folder(tmp_path, "shop")
        config = write_config(tmp_path / "c.toml", base_url=emu.url, folders=[folder])
        start_daemon(daemons, config)
        wait_until(emu.requests, 20, what="the start-up credit check")
        emu.configure(expires=datetime.now(timezone.utc) - timedelta(seconds=1))
        drop_images(Path(folder["inbox"]), ["p0.png"])
        wait_status(config, paused="credits_expired", pending=1)
        assert 403 in statuses(emu)
        assert quarantined(folder) == []
        assert set(attempts(config).values()) == {0}


# -- faults and 429s -------------------------------------------------------------------


def test_failures_and_dropped_connections_lose_nothing_and_cost_no_extra_credit(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    limit, window = 10, 1.0
    files = 20
    with Emulator(
        keys=[TEST_KEY],
        rate_limit=limit,
        rate_window=window,
        fail_rate=0.25,
        drop_rate=0.10,
        seed=4,
    ) as emu:
        before = emu.credits
        folder = make_folder(tmp_path, "shop")
        port = free_port()
        config = write_config(
            tmp_path / "c.toml",
            base_url=emu.url,
            folders=[folder],
            api={"rate_limit": limit, "rate_window_seconds": window},
            queue={"max_attempts": 10},
            metrics_listen=f"127.0.0.1:{port}",
        )
        d = start_daemon(daemons, config)
        drop_images(Path(folder["inbox"]), [f"p{i:02}.png" for i in range(files)])
        wait_until(lambda: len(outputs(folder)) == files, 90, what="all outputs")
        images = image_requests(emu)
        drops = sum(1 for r in images if r.status == 0)
        fails = sum(1 for r in images if r.status == 500)
        assert drops >= 1 and fails >= 1, "precondition: the faults were injected"
        assert quarantined(folder) == []
        assert 429 not in statuses(emu)
        assert peak(emu.requests(), window) <= limit
        # One credit per file, plus one per dropped answer (charged, never seen).
        assert before - emu.credits == files + drops
        assert len(images) == files + drops + fails
        # Each dropped request is sent again, and that re-send is logged and counted.
        assert count_events(d, "job.resend") == drops
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert f"bgsyncd_resends_total {float(drops)}" in metrics


def test_a_lower_limit_at_the_api_gives_429s_that_cost_no_attempt(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    with Emulator(keys=[TEST_KEY], rate_limit=3, rate_window=2.0, seed=1) as emu:
        folder = make_folder(tmp_path, "shop")
        # misconfigured: the daemon believes in a limit over three times the API's
        config = write_config(
            tmp_path / "c.toml",
            base_url=emu.url,
            folders=[folder],
            api={"rate_limit": 10, "rate_window_seconds": 2.0},
        )
        d = start_daemon(daemons, config)
        drop_images(Path(folder["inbox"]), [f"p{i}.png" for i in range(8)])
        wait_until(lambda: len(outputs(folder)) == 8, 60, what="all outputs")
        assert 429 in statuses(emu), "precondition: the API refused some"
        assert quarantined(folder) == []
        assert set(attempts(config).values()) == {0}
        assert sum(1 for r in image_requests(emu) if r.status == 200) == 8
        assert d.saw("api.rate_limited")


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
