"""sd_notify: real AF_UNIX datagram sockets stand in for systemd's."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgsyncd.ops.notify import Notifier
from tests.support.systemd import FakeSystemd


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    yield fake
    fake.close()


@pytest.fixture
def abstract_socket() -> Iterator[FakeSystemd]:
    fake = FakeSystemd(f"@bgsyncd-test-{uuid.uuid4().hex}")
    yield fake
    fake.close()


def exchange(fake: FakeSystemd) -> None:
    """Send every message kind and check the bytes systemd receives."""
    n = Notifier.from_environ({"NOTIFY_SOCKET": fake.address, "WATCHDOG_USEC": "30000000"})
    assert n.enabled
    assert n.ready()
    assert fake.receive() == b"READY=1"
    assert n.ready("watching 2 folders")
    assert fake.receive() == b"READY=1\nSTATUS=watching 2 folders"
    assert n.status("3 pending, 1 in flight")
    assert fake.receive() == b"STATUS=3 pending, 1 in flight"
    assert n.watchdog()
    assert fake.receive() == b"WATCHDOG=1"
    assert n.stopping()
    assert fake.receive() == b"STOPPING=1"
    assert n.extend_timeout(1.5)
    assert fake.receive() == b"EXTEND_TIMEOUT_USEC=1500000"
    assert fake.nothing_waiting()


def test_path_socket(path_socket: FakeSystemd) -> None:
    exchange(path_socket)


def test_abstract_socket(abstract_socket: FakeSystemd) -> None:
    exchange(abstract_socket)


def test_status_stays_on_one_line(path_socket: FakeSystemd) -> None:
    n = Notifier.from_environ({"NOTIFY_SOCKET": path_socket.address})
    n.status("first\nSECOND=injected")
    assert path_socket.receive() == b"STATUS=first SECOND=injected"


def test_without_notify_socket_nothing_is_sent() -> None:
    n = Notifier.from_environ({})
    assert not n.enabled
    assert not n.ready()
    assert not n.watchdog()
    assert n.watchdog_interval is None


def test_a_missing_socket_is_logged_not_raised(tmp_path: Path) -> None:
    n = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled
    assert n.ready() is False
    assert n.stopping() is False


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_environ(env).watchdog_interval == 15.0
    ours = {**env, "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environ(ours).watchdog_interval == 15.0
    assert Notifier.from_environ({**env, "WATCHDOG_PID": "1234"}, pid=99).watchdog_interval is None
    assert Notifier.from_environ({**env, "WATCHDOG_USEC": "junk"}).watchdog_interval is None
    assert Notifier.from_environ({**env, "WATCHDOG_USEC": "0"}).watchdog_interval is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_pings_only_when_asked_and_at_most_once_per_half_interval(
    path_socket: FakeSystemd,
) -> None:
    clock = Clock()
    unasked = Notifier(path_socket.address, None, clock=clock)
    assert not unasked.watchdog()
    assert unasked.sleep_for(5.0) == 5.0
    assert path_socket.nothing_waiting()
    n = Notifier(path_socket.address, 4_000_000, clock=clock)  # WatchdogSec=4: every 2 s
    assert n.sleep_for(5.0) == 0.25  # the first ping is due at once (an eighth: no spin)
    assert n.watchdog()
    assert path_socket.receive() == b"WATCHDOG=1"
    clock.now += 1.5
    assert not n.watchdog()  # woken early: not yet
    assert n.sleep_for(5.0) == pytest.approx(0.5)
    clock.now += 0.5
    assert n.watchdog()
    assert path_socket.receive() == b"WATCHDOG=1"
    assert n.sleep_for(1.0) == 1.0
    assert path_socket.nothing_waiting()


def test_a_full_socket_drops_messages_without_waiting(tmp_path: Path) -> None:
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind(str(tmp_path / "deaf.sock"))
    try:
        n = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "deaf.sock")})
        began = time.monotonic()
        sent = [n.status(f"{i} pending") for i in range(200)]
        assert time.monotonic() - began < 5.0
        assert sent[0] and not sent[-1]  # the queue filled, and the rest were dropped
    finally:
        deaf.close()
