"""Shared fixtures: the emulator, daemon subprocesses, workers, a fake systemd, PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bgsyncd.api.client import Client
from bgsyncd.emulator import Emulator
from bgsyncd.jobs.worker import Worker
from bgsyncd.storage.sqlite.store import SqliteStore
from tests.support.daemons import TEST_KEY, DaemonProcess
from tests.support.systemd import FakeSystemd
from tests.support.workers import WorkerFactory, make_worker


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """An emulator on loopback with a generous limit (tests that pace set their own)."""
    with Emulator(
        keys=[TEST_KEY], credits=10_000, rate_limit=1000, rate_window=60.0, seed=1
    ) as emu:
        yield emu


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Collects daemon subprocesses and makes sure none outlives its test."""
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)
        d._log.close()


@pytest.fixture
def worker_factory() -> Iterator[WorkerFactory]:
    """Makes workers (tests/support/workers.py) and closes their clients when the test ends."""
    clients: list[Client] = []

    def make(tmp_path: Path, emu: Emulator, queue: SqliteStore, **folder: Any) -> Worker:
        client = Client(emu.url, TEST_KEY, 10)
        clients.append(client)
        return make_worker(tmp_path, client, queue, **folder)

    yield make
    for client in clients:
        client.close()


@pytest.fixture(params=["path", "abstract"])
def fake_systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeSystemd]:
    """A fake systemd on a socket path, then on an abstract address (tests/support/systemd.py)."""
    if request.param == "path":
        address = str(tmp_path / "n.sock")
    else:
        address = f"@bgsyncd-test-{uuid.uuid4().hex}"
    fake = FakeSystemd(address)
    yield fake
    fake.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """One throwaway PostgreSQL server for the whole run (see tests/support/pgserver.py)."""
    from tests.support.pgserver import PgServer, require_server

    server = PgServer(require_server())
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_dsn(pg_server: Any) -> str:
    """A fresh, empty database on the test server."""
    dsn: str = pg_server.create_database()
    return dsn
