"""Dispatch at the account's limits, end to end (SPEC §5).

A real ``bgsyncd run`` subprocess against an emulator over loopback HTTP, with
rate windows of a few seconds so a test sees several of them. The emulator is
the referee: its log of request start times and statuses, and its credits.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
import urllib.request
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bgsyncd.emulator import Emulator
from tests.support.daemons import (
    TEST_KEY,
    DaemonProcess,
    attempts,
    free_port,
    make_folder,
    outputs,
    run_cli,
    start_daemon,
    wait_status,
    write_config,
)
from tests.support.emulated import CREDIT_PATH, image_requests, peak
from tests.support.helpers import product_image, wait_until

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


def quarantined(folder: dict[str, Any]) -> list[str]:
    root = Path(folder["quarantine"])
    return sorted(p.name for p in root.rglob("*")) if root.exists() else []


def count_events(d: DaemonProcess, event: str, **fields: Any) -> int:
    return sum(
        1
        for e in d.events()
        if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
    )


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
