"""The metrics listener is bounded (SPEC §6): at most 64 connections at once, each
closed after 10 seconds without a complete request; no number of clients takes
the daemon's threads or descriptors, and a daemon short of descriptors does not
spin. Real sockets on loopback; the last test against a real ``bgsyncd run``."""

from __future__ import annotations

import os
import resource
import select
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bgsyncd.emulator import Emulator
from tests.support.daemons import DaemonProcess, make_folder, start_daemon, write_config
from tests.support.helpers import product_image, wait_until
from tests.support.listener import CAP, IDLE_SECONDS, healthz

if TYPE_CHECKING:
    pass


# -- a real daemon, short of descriptors ----------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _flood(port: int, count: int, within: float = 20.0) -> list[socket.socket]:
    """``count`` idle connections, given up to ``within`` seconds to be taken from the
    backlog (non-blocking connects, a batch at a time: a full backlog must not stall us)."""
    socks: list[socket.socket] = []
    poller = select.poll()
    waiting, deadline = 0, time.monotonic() + within

    def wait(until: float) -> None:
        nonlocal waiting
        while waiting and time.monotonic() < until:
            for fd, _ in poller.poll(100):
                poller.unregister(fd)
                waiting -= 1

    for start in range(0, count, 32):
        for _ in range(min(32, count - start)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            poller.register(sock, select.POLLOUT)
            socks.append(sock)
            waiting += 1
        wait(min(deadline, time.monotonic() + 0.5))
    wait(deadline)
    return socks


def test_a_daemon_flooded_with_idle_connections_past_its_descriptor_limit_keeps_working(
    tmp_path: Path,
    emulator: Emulator,
    daemons: list[DaemonProcess],
    request: pytest.FixtureRequest,
) -> None:
    flood = 400
    need = flood + 200  # the test's own: the flood, the emulator, the daemon's log
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"this test needs {need} descriptors, the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        request.addfinalizer(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    folder = make_folder(tmp_path, "shop")
    config = write_config(
        tmp_path / "c.toml",
        base_url=emulator.url,
        folders=[folder],
        metrics_listen=f"127.0.0.1:{port}",
    )
    daemon = start_daemon(daemons, config)
    pid = daemon.proc.pid
    inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
    (inbox / "before.jpg").write_bytes(product_image(40, 30))
    wait_until((outbox / "before.png").exists, 30, what="the first output")
    assert healthz(port) == 200
    threads_before, fds_before = _threads(pid), _fds(pid)
    # systemd's default is 1,024; room for the listener's 64 and as many again for
    # the rest makes the flood (far more than that) cheap for the test.
    limit = fds_before + 2 * CAP
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    socks: list[socket.socket] = []
    try:
        socks = _flood(port, flood)
        time.sleep(1.0)  # the flood arrives; what follows is the steady state under it
        cpu0, t0 = _cpu_seconds(pid), time.monotonic()
        threads_seen, fds_seen = [], []
        while time.monotonic() - t0 < 3.0:
            threads_seen.append(_threads(pid))
            fds_seen.append(_fds(pid))
            time.sleep(0.2)
        busy = (_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        seen = (busy, threads_before, max(threads_seen), fds_before, max(fds_seen))
        assert busy < 0.3, f"the daemon used {busy:.0%} of a core with idle clients: {seen}"
        assert max(threads_seen) <= threads_before + CAP + 4, seen
        assert max(fds_seen) <= fds_before + CAP + 8, seen

        # Files dropped meanwhile are queued and done.
        (inbox / "during.jpg").write_bytes(product_image(48, 36))
        wait_until((outbox / "during.png").exists, 40, what="an output under the flood")
        # /healthz answers, at the latest once the idle ones have timed out.
        assert wait_until(lambda: healthz(port) == 200, 3 * IDLE_SECONDS, 0.2, "/healthz")
    finally:
        for sock in socks:
            sock.close()
    out = daemon.output()
    assert "Errno 24" not in out and "Errno 23" not in out
    for event in ("job.retry", "job.quarantined", "job.error", "daemon.crashed"):
        assert not daemon.saw(event), event
    assert daemon.stop() == 0
