"""The metrics listener is bounded (SPEC §6): at most 64 connections at once, each
closed after 10 seconds without a complete request; no number of clients takes
the daemon's threads or descriptors, and a daemon short of descriptors does not
spin. Real sockets on loopback; the last test against a real ``bgsyncd run``."""

from __future__ import annotations

import contextlib
import os
import resource
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bgsyncd.emulator import Emulator
from bgsyncd.ops.server import MetricsServer
from tests.support.daemons import DaemonProcess, make_folder, start_daemon, write_config
from tests.support.helpers import product_image, wait_until
from tests.support.listener import CAP, IDLE_SECONDS, healthz

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"metrics\n"]


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    s = MetricsServer(_app, lambda: True)
    s.start("127.0.0.1", 0)
    yield s
    s.stop()


def closed_by_server(sock: socket.socket, within: float) -> float | None:
    """Seconds until the server closed ``sock`` (EOF or reset), or None if still open."""
    started = time.monotonic()
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass  # an answer (a 408, say) is fine: what matters is the close
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


# -- the idle timeout -------------------------------------------------------------------


def test_a_connection_sending_nothing_is_closed_about_10_seconds_after_it_opened(
    server: MetricsServer,
) -> None:
    assert server.port is not None
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        took = closed_by_server(sock, IDLE_SECONDS + 10)
    assert took is not None, "an idle connection was held for 20 s"
    assert IDLE_SECONDS - 1 <= took <= IDLE_SECONDS + 5, took


def test_a_slowloris_trickling_its_headers_is_closed_10_seconds_after_it_opened(
    server: MetricsServer,
) -> None:
    assert server.port is not None
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    opened = time.monotonic()
    stop = threading.Event()

    def trickle() -> None:
        # A request line, then one header every half second, never the blank line.
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            n = 0
            while not stop.wait(0.5):
                sock.sendall(f"X-Slow-{n}: y\r\n".encode())
                n += 1

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        took = closed_by_server(sock, IDLE_SECONDS + 10)
        assert took is not None, "a trickling request was held for 20 s"
        elapsed = time.monotonic() - opened
        assert IDLE_SECONDS - 1 <= elapsed <= IDLE_SECONDS + 5, elapsed
    finally:
        stop.set()
        sender.join(5)
        sock.close()


# -- the cap ------------------------------------------------------------------------------


def test_at_most_64_connections_are_held_the_rest_are_refused_and_a_freed_slot_serves(
    server: MetricsServer,
) -> None:
    port = server.port
    assert port is not None
    threads_before = threading.active_count()
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(CAP)]
    extra: list[socket.socket] = []
    try:
        # Every held connection has its handler (so the next ones find the cap reached).
        wait_until(
            lambda: threading.active_count() >= threads_before + CAP,
            10,
            what="64 connections accepted",
        )
        extra = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(16)]
        for sock in extra:
            assert closed_by_server(sock, 3) is not None, "a 65th connection was held"
        assert threading.active_count() <= threads_before + CAP
        # The first 64 are still held (their 10 s have not passed).
        assert all(closed_by_server(sock, 0.01) is None for sock in held[-4:])
        held.pop().close()  # a slot frees: the next request is served
        assert wait_until(lambda: healthz(port) == 200, 5, 0.1, "/healthz in the freed slot")
    finally:
        for sock in held + extra:
            sock.close()


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
