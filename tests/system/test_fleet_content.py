"""Identical content on two hosts at the same moment costs one credit (SPEC §8).

Real ``bgsyncd run`` hosts on a real PostgreSQL: a content hash whose request
is in flight on one host is claimed for the fleet, and the other host waits
for that answer (then finds it in the shared cache) instead of sending it
again. A host killed while holding the claim holds no one up for longer
than its lease.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.daemons import TEST_KEY, DaemonProcess, make_folder, outputs, start_daemon
from tests.support.fleet import CountingEmulator, events, host_config
from tests.support.helpers import product_image, wait_until


def drop_all(inboxes: list[Path], names: list[str], data: bytes) -> None:
    """Write every file under a temp name first, then rename them all at once."""
    parts = []
    for inbox in inboxes:
        for name in names:
            part = inbox / f".{name}.part"
            part.write_bytes(data)
            parts.append((part, inbox / name))
    for part, final in parts:
        part.rename(final)


def test_identical_content_dropped_on_two_hosts_at_once_costs_one_credit(
    tmp_path: Path, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    emu = CountingEmulator(keys=[TEST_KEY], credits=1000, rate_limit=1000, latency=1.0)
    with emu:
        fa, fb = make_folder(tmp_path, "fa"), make_folder(tmp_path, "fb")
        api = {"max_in_flight": 3}
        start_daemon(daemons, host_config(tmp_path, "a", emu, pg_dsn, [fa], api=api))
        start_daemon(daemons, host_config(tmp_path, "b", emu, pg_dsn, [fb], api=api))
        names = [f"same{n}.jpg" for n in range(9)]
        drop_all([Path(fa["inbox"]), Path(fb["inbox"])], names, product_image(57, 40))
        expected = sorted(n.replace(".jpg", ".png") for n in names)
        wait_until(
            lambda: outputs(fa) == expected and outputs(fb) == expected,
            60,
            what="all 18 outputs on both hosts",
        )
        assert emu.admitted == 1, emu.admitted
        assert emu.credits == 999
        first = (Path(fa["outbox"]) / expected[0]).read_bytes()
        for folder in (fa, fb):
            assert all((Path(folder["outbox"]) / n).read_bytes() == first for n in expected)


def test_a_host_killed_while_fetching_some_content_holds_the_other_up_no_longer_than_its_lease(
    tmp_path: Path, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    lease = 3.0
    emu = CountingEmulator(keys=[TEST_KEY], credits=1000, rate_limit=1000)
    with emu:
        fa, fb = make_folder(tmp_path, "fa"), make_folder(tmp_path, "fb")
        a = start_daemon(daemons, host_config(tmp_path, "a", emu, pg_dsn, [fa], lease=lease))
        b = start_daemon(daemons, host_config(tmp_path, "b", emu, pg_dsn, [fb], lease=lease))
        wait_until(
            lambda: a.saw("credits.checked") and b.saw("credits.checked"),
            20,
            what="both hosts' credit checks at start",
        )
        emu.configure(latency=60.0)  # a's request hangs
        data = product_image(61, 40)
        drop_all([Path(fa["inbox"])], ["same.jpg"], data)
        wait_until(lambda: emu.admitted == 1, 20, what="a's request in flight")
        drop_all([Path(fb["inbox"])], ["same.jpg"], data)
        wait_until(lambda: events(b, "cache.content_wait"), 20, what="b waiting for a's answer")
        assert emu.admitted == 1  # b did not send it as well
        emu.configure(latency=0.3)
        a.kill9()
        killed = time.monotonic()
        wait_until(lambda: outputs(fb) == ["same.png"], 60, what="b's output")
        took = time.monotonic() - killed
        # a's heartbeat stops at the kill: its claim is void after the lease.
        assert took <= lease + 8.0, took
        assert emu.admitted == 2
        assert b.proc.poll() is None
