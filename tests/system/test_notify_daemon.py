"""sd_notify beside a real `bgsyncd run` (SPEC §6 systemd bullet, issue 15 item 5):
a notification never blocks the daemon, even when nobody reads the socket, and
WATCHDOG=1 goes out only when WATCHDOG_USEC asks, at half its interval."""

from __future__ import annotations

import itertools
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgsyncd.emulator import Emulator
from tests.support.daemons import DaemonProcess, make_folder, start_daemon, write_config
from tests.support.helpers import product_image, wait_until
from tests.support.systemd import FakeSystemd


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    yield fake
    fake.close()


def _drop(inbox: Path, first: int, count: int) -> None:
    for i in range(first, first + count):
        (inbox / f"p{i}.jpg").write_bytes(product_image(40 + i, 40))


def _outputs(folder: dict[str, str]) -> int:
    return sum(1 for p in Path(folder["outbox"]).iterdir() if p.suffix == ".png")


def test_a_socket_nobody_reads_never_blocks_the_daemon(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    # Bound, never read: its queue fills after net.unix.max_dgram_qlen datagrams.
    address = f"@bgsyncd-test-{uuid.uuid4().hex}"
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind("\0" + address[1:])
    try:
        folder = make_folder(tmp_path, "f")
        config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
        # A ping every 50 ms: the queue is full within a second.
        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000"}
        d = start_daemon(daemons, config, env=env)
        wait_until(lambda: d.saw("notify.failed"), 30, what="a notification dropped")
        _drop(Path(folder["inbox"]), 0, 3)
        wait_until(lambda: _outputs(folder) == 3, 60, what="three outputs")
        time.sleep(1.0)  # a second more of dropped pings: still logged once
        asked = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.proc.wait(20) == 0, d.output()
        assert time.monotonic() - asked < 15
        assert sum(1 for e in d.events() if e.get("event") == "notify.failed") == 1
    finally:
        deaf.close()


def _pings(fake: FakeSystemd, since: float, until: float) -> int:
    return sum(1 for t, m in fake.messages() if m.get("WATCHDOG") == "1" and since <= t <= until)


def _busy_span(inbox: Path, folder: dict[str, str], seconds: float) -> tuple[float, float]:
    """Keep the daemon waking (files to take) for ``seconds``; the span, monotonic."""
    start = time.monotonic()
    dropped = 0
    while time.monotonic() - start < seconds:
        _drop(inbox, dropped, 2)
        dropped += 2
        time.sleep(0.5)
    end = time.monotonic()
    wait_until(lambda: _outputs(folder) == dropped, 60, what="every output")
    return start, end


def test_watchdog_pings_at_half_of_watchdog_usec_however_often_the_loop_wakes(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess], reader: FakeSystemd
) -> None:
    folder = make_folder(tmp_path, "f")
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
    env = {"NOTIFY_SOCKET": reader.address, "WATCHDOG_USEC": "4000000"}  # WatchdogSec=4
    d = start_daemon(daemons, config, env=env)
    start, end = _busy_span(Path(folder["inbox"]), folder, 8.0)
    span = end - start
    pings = _pings(reader, start, end)
    assert 2 <= pings <= span / 2 + 1, (pings, span)
    assert d.stop() == 0, d.output()
    times = [t for t, m in reader.messages() if m.get("WATCHDOG") == "1"]
    assert all(b - a < 3.0 for a, b in itertools.pairwise(times)), times  # never near 4 s


def test_no_watchdog_ping_without_watchdog_usec(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess], reader: FakeSystemd
) -> None:
    folder = make_folder(tmp_path, "f")
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
    d = start_daemon(daemons, config, env={"NOTIFY_SOCKET": reader.address})
    _busy_span(Path(folder["inbox"]), folder, 4.0)
    assert d.stop() == 0, d.output()
    assert reader.values("READY") == ["1"]  # the socket was in use
    assert reader.values("WATCHDOG") == []
