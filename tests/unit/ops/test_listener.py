"""The metrics listener is bounded (SPEC §6): at most 64 connections at once, each
closed after 10 seconds without a complete request; no number of clients takes
the daemon's threads or descriptors, and a daemon short of descriptors does not
spin. Real sockets on loopback; the last test against a real ``bgsyncd run``."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import pytest

from bgsyncd.ops.server import MetricsServer
from tests.support.helpers import wait_until
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
