"""Shared fixtures: the emulator, daemon subprocesses, workers, a fake systemd, PostgreSQL,
a clean environment and a config path (config tests), a metrics scrape (monitoring tests)."""

from __future__ import annotations

import os
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bgsyncd.api.client import Client
from bgsyncd.emulator import Emulator
from bgsyncd.jobs.worker import Worker
from bgsyncd.ops.metrics import Metrics
from bgsyncd.storage.sqlite.store import SqliteStore
from tests.support.daemons import TEST_KEY, DaemonProcess
from tests.support.systemd import FakeSystemd
from tests.support.workers import WorkerFactory, make_worker

SYSTEM = Path(__file__).resolve().parent / "system"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/system/ ``system``: ``-m "not system"`` is the fast unit run."""
    for item in items:
        if SYSTEM in item.path.parents:
            item.add_marker(pytest.mark.system)


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


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BGSYNCD_* or credential variable from the test runner leaks in.

    The config tests use it for every test (``pytestmark``), as an autouse fixture of theirs did.
    """
    for name in list(os.environ):
        if name.upper().startswith("BGSYNCD_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


@pytest.fixture
def cfg(tmp_path: Path) -> Iterator[Path]:
    """A config file path in a folder that already holds an inbox ``in``."""
    (tmp_path / "in").mkdir()
    yield tmp_path / "bgsyncd.toml"


@pytest.fixture
def exposition() -> str:
    """A real scrape of a Metrics instance with something in every metric."""
    m = Metrics("127.0.0.1:0", ["products", "catalogue"], "1.2.3", clock=lambda: 1_700_000_000.0)
    m.start()
    try:
        m.file_discovered("products")
        m.job_finished("products", "success", 2.5)
        m.job_finished("catalogue", "quarantined", None)
        m.api_request("image-without-background", "200", 1.2)
        m.api_request("available-credit", "error", 0.05)
        m.rate_limited()
        m.resend()
        m.credits(120, 1_800_000_000.0)
        m.credits_floor(10)
        m.paused("credit_floor")
        m.jobs({"pending": 4, "in_flight": 2}, 30.0)
        m.folder_up("products", True)
        m.heartbeat()
        with urllib.request.urlopen(f"http://127.0.0.1:{m.port}/metrics", timeout=5) as r:
            return str(r.read().decode())
    finally:
        m.stop()
