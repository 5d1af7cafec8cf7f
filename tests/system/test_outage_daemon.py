"""An outage is not the file's fault (SPEC §5): ``api_unreachable``, its probe, no quarantine.

Real ``bgsyncd run`` and ``bgsyncd once`` subprocesses against the emulator over
loopback, stopped mid-run or answering 500, or a port nothing listens on; the
probe's schedule on a fake clock, in process.
"""

from __future__ import annotations

import signal
import time
import urllib.request
from pathlib import Path

from bgsyncd.api.outage import PROBE_FIRST_SECONDS
from bgsyncd.emulator import Emulator
from tests.support.daemons import (
    TEST_KEY,
    DaemonProcess,
    attempts,
    free_port,
    make_folder,
    run_cli,
    start_daemon,
    status_json,
    wait_status,
    write_config,
)
from tests.support.emulated import IMAGE_PATHS
from tests.support.helpers import product_image, wait_until


def drop_images(inbox: Path, n: int, seed: int = 0) -> list[str]:
    names = []
    for i in range(n):
        name = f"p{seed + i:02}.png"
        (inbox / name).write_bytes(product_image(24 + seed + i, 20 + i % 5, "PNG"))
        names.append(name)
    return names


def files(root: str) -> list[str]:
    path = Path(root)
    return sorted(p.name for p in path.rglob("*") if p.is_file()) if path.exists() else []


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.status, r.read().decode()


# -- the API goes away while the daemon runs -----------------------------------------------


def test_an_api_that_goes_away_pauses_api_unreachable_and_no_outage_length_quarantines(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    port, metrics = free_port(), free_port()
    folder = make_folder(tmp_path, "shop")
    config = write_config(
        tmp_path / "c.toml",
        base_url=f"http://127.0.0.1:{port}",
        folders=[folder],
        # Before: five attempts 0.05-0.5 s apart quarantined every file within seconds.
        queue={"max_attempts": 3},
        metrics_listen=f"127.0.0.1:{metrics}",
    )
    emu = Emulator(keys=[TEST_KEY], port=port, rate_limit=1000).start()
    try:
        d = start_daemon(daemons, config)
        wait_until(emu.requests, 20, what="the start-up credit check")
        emu.stop()  # the API goes away: connections are refused from now on
        names = drop_images(Path(folder["inbox"]), 4)
        status = wait_status(config, paused="api_unreachable", pending=4)
        assert status["waiting"]["reason"] == "paused"
        assert 0 < status["waiting"]["seconds"] <= PROBE_FIRST_SECONDS
        assert d.saw("api.unreachable") or d.saw("credits.check_failed")
        # Paused for 8 s: well past what used to exhaust every file's attempts (< 2 s).
        wait_until(
            lambda: status_json(config)["waiting"]["seconds"] <= PROBE_FIRST_SECONDS - 8,
            30,
            interval=0.5,
            what="eight seconds of outage",
        )
        assert files(folder["quarantine"]) == []
        assert set(attempts(config).values()) == {0}
        _, text = scrape(metrics)
        assert 'bgsyncd_dispatch_paused{reason="api_unreachable"} 1.0' in text
        assert "bgsyncd_dispatch_next_request_seconds" in text
        # Alive, only paused: /healthz answers 200 while the loop is alive (SPEC §6);
        # the pause is on /metrics, in `status` and in the log.
        assert scrape(metrics, "/healthz")[0] == 200
        assert d.saw("dispatch.paused", reason="api_unreachable")
        printed = run_cli("status", "--config", str(config)).stdout
        assert "paused:         api_unreachable" in printed
        assert "waiting:        paused" in printed

        back = Emulator(keys=[TEST_KEY], port=port, rate_limit=1000).start()
        try:
            # The probe (a credit check, 30 s after the pause) finds it answering.
            wait_until(lambda: len(files(folder["outbox"])) == len(names), 75, what="every output")
            assert back.requests()[0].path == "/available-credit"
            assert d.saw("dispatch.resumed", after="api_unreachable")
            assert files(folder["quarantine"]) == []
            assert set(attempts(config).values()) == {0}
            wait_status(config, paused=None, done=len(names))
        finally:
            back.stop()
    finally:
        emu.stop()


def test_three_5xx_in_a_row_pause_and_cost_the_files_no_attempts(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    with Emulator(keys=[TEST_KEY], rate_limit=1000, fail_rate=1.0, seed=3) as emu:
        folder = make_folder(tmp_path, "shop")
        config = write_config(
            tmp_path / "c.toml",
            base_url=emu.url,
            folders=[folder],
            queue={"max_attempts": 2},
        )
        d = start_daemon(daemons, config)
        names = drop_images(Path(folder["inbox"]), 3)
        wait_status(config, paused="api_unreachable")
        sent = len([r for r in emu.requests() if r.path in IMAGE_PATHS])
        # Three in a row, and what was already in flight (max_in_flight 3): then none.
        assert 3 <= sent <= 5
        wait_until(
            lambda: status_json(config)["waiting"]["seconds"] <= 25,
            30,
            interval=0.5,
            what="five seconds of the pause",
        )
        images = [r for r in emu.requests() if r.path in IMAGE_PATHS]
        assert len(images) == sent and {r.status for r in images} == {500}
        assert files(folder["quarantine"]) == []
        # Only the first failure came while the API was answering (the credit check).
        assert sum(attempts(config).values()) <= 1
        assert d.saw("api.unreachable", failures_in_a_row=3)
        emu.configure(fail_rate=0.0)
        d.signal(signal.SIGHUP)  # lifts it at once; the credit check answers normally
        wait_until(lambda: len(files(folder["outbox"])) == len(names), 30, what="outputs")
        assert files(folder["quarantine"]) == []


def test_once_ends_with_exit_3_when_the_api_cannot_be_reached_at_start(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "shop")
    (Path(folder["inbox"]) / "a.png").write_bytes(product_image(30, 20, "PNG"))
    config = write_config(
        tmp_path / "c.toml", base_url=f"http://127.0.0.1:{free_port()}", folders=[folder]
    )
    # Before: `once` sat at 0/1 with no reason given for the whole check interval.
    started = time.monotonic()
    result = run_cli("once", "--config", str(config), timeout=75)
    # Paused at once; it waits for the first probe (30 s) like any pause lifted
    # within a minute, and ends when the next (60 s later) is past that minute.
    assert time.monotonic() - started < 50
    assert result.returncode == 3, result.stderr[-2000:]
    assert result.stdout.strip() == "once: 0/1 files finished; paused: api_unreachable"
    assert '"event": "once.paused"' in result.stderr
    assert files(folder["quarantine"]) == []
