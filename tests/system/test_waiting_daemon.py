"""Waiting is visible, and work that needs no request does not wait (SPEC §5, §4).

A real ``bgsyncd run`` whose rate window is full: ``status`` (and ``--json``)
and ``bgsyncd_dispatch_next_request_seconds`` say it waits for the rate limit
and how long; a cache hit and a local verdict are settled at once meanwhile.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

from bgsyncd.emulator import Emulator
from tests.support.daemons import (
    TEST_KEY,
    DaemonProcess,
    free_port,
    make_folder,
    run_cli,
    start_daemon,
    status_json,
    write_config,
)
from tests.support.emulated import IMAGE_PATHS
from tests.support.helpers import product_image, wait_until

GAUGE = re.compile(r"^bgsyncd_dispatch_next_request_seconds (\S+)$", re.MULTILINE)


def next_request_gauge(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        found = GAUGE.search(r.read().decode())
    assert found, "bgsyncd_dispatch_next_request_seconds is not exported"
    return float(found.group(1))


def test_a_full_window_is_shown_and_a_cache_hit_and_a_local_verdict_do_not_wait_for_it(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    with Emulator(keys=[TEST_KEY], rate_limit=1000) as emu:
        port = free_port()
        folder = make_folder(tmp_path, "shop")
        config = write_config(
            tmp_path / "c.toml",
            base_url=emu.url,
            folders=[folder],
            # The start-up credit check and one image fill the window for two minutes.
            api={"rate_limit": 2, "rate_window_seconds": 120},
            metrics_listen=f"127.0.0.1:{port}",
        )
        start_daemon(daemons, config)
        inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
        first = product_image(40, 30, "PNG")
        (inbox / "a.png").write_bytes(first)
        wait_until((outbox / "a.png").exists, 30, what="a.png's output")
        for i, name in enumerate(("b.png", "c.png")):
            (inbox / name).write_bytes(product_image(50 + i, 30, "PNG"))

        def waits_for_the_rate_limit() -> bool:
            s = status_json(config)
            return bool(s["jobs"]["pending"] == 2 and s["waiting"]["reason"] == "rate_limit")

        wait_until(waits_for_the_rate_limit, 30, interval=0.25, what="waiting: rate_limit")
        waiting = status_json(config)["waiting"]
        assert 60 < waiting["seconds"] <= 121, waiting
        printed = run_cli("status", "--config", str(config)).stdout
        assert re.search(r"^waiting: +rate limit, \d+ s$", printed, re.MULTILINE), printed
        wait_until(lambda: next_request_gauge(port) > 60, 20, what="the gauge")

        # Free work, while the window stays full for another minute and more:
        dropped = time.monotonic()
        (inbox / "copy-of-a.png").write_bytes(first)  # same content: the cached result
        (inbox / "notes.jpg").write_text("not an image at all\n")  # a local verdict
        quarantine = Path(folder["quarantine"])
        wait_until(
            lambda: (
                (outbox / "copy-of-a.png").exists()
                and (quarantine / "notes.jpg.error.json").exists()
            ),
            10,
            what="the cache hit and the local verdict settled",
        )
        took = time.monotonic() - dropped
        assert took < 10
        sidecar = json.loads((quarantine / "notes.jpg.error.json").read_text())
        assert sidecar["reason"] == "unsupported_media"
        images = [r for r in emu.requests() if r.path in IMAGE_PATHS]
        assert len(images) == 1  # only a.png was sent; b and c still wait their turn
        assert status_json(config)["jobs"]["pending"] == 2
