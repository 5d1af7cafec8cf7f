"""The daemon's own robustness (SPEC §6): reloads one at a time and in order, a
SIGTERM that stops a watcher still starting, and no thread that dies silently.
Real ``bgsyncd run`` subprocesses, real signals, real loopback HTTP."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bgsyncd.emulator import Emulator
from tests.support.daemons import (
    TEST_KEY,
    DaemonProcess,
    make_folder,
    start_daemon,
    status_json,
    write_config,
)
from tests.support.emulated import AdmittingEmulator
from tests.support.helpers import product_image, wait_until
from tests.support.paths import ROOT

BIG = 6000  # files in the inbox whose start-up scan a signal lands in


@pytest.fixture
def broke_emulator() -> Iterator[Emulator]:
    """No credits: the daemon pauses at the floor and sends no image, so files stay queued."""
    with Emulator(keys=[TEST_KEY], credits=0, rate_limit=1000) as emu:
        yield emu


def drop_files(inbox: Path, n: int) -> None:
    # Images: they need a request, so a pause keeps them queued (a file that is
    # no image is a local verdict, settled at once whatever the pause: SPEC §4).
    tiny = product_image(8, 8)
    for i in range(n):
        (inbox / f"f{i:05d}.jpg").write_bytes(tiny)


def count(d: DaemonProcess, event: str) -> int:
    return sum(1 for e in d.events() if e.get("event") == event)


def reloaded(d: DaemonProcess, n: int) -> Callable[[], bool]:
    """A condition: the daemon has logged ``n`` reloads."""
    return lambda: count(d, "config.reloaded") >= n


def pending_in(config: Path, folder: str) -> int:
    n: int = status_json(config)["folders"].get(folder, {}).get("pending", 0)
    return n


def test_many_quick_sighups_leave_the_last_configuration_watching(
    tmp_path: Path, broke_emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    big = make_folder(tmp_path, "big")
    small = make_folder(tmp_path, "small")
    drop_files(Path(big["inbox"]), BIG)
    config = tmp_path / "c.toml"
    write_config(config, base_url=broke_emulator.url, folders=[small])
    d = start_daemon(daemons, config)
    reloads = 0
    # Each HUP is taken on its own (its config.reloaded seen) before the next
    # config is written. The first big scan is seen running before the next
    # (small) configuration is read, so an unordered swap would finish last.
    for _ in range(3):
        for folders in ([big], [small]):
            write_config(config, base_url=broke_emulator.url, folders=folders)
            d.signal(signal.SIGHUP)
            reloads += 1
            wait_until(reloaded(d, reloads), 20, what="reload")
            if reloads == 1:
                wait_until(lambda: d.saw("file.queued", folder="big"), 30, what="big scan")
    # The last reload's watcher took over: every swap before it has ended, and
    # a big scan, once begun, is never cut short by a newer reload.
    wait_until(lambda: d.saw("config.watching", reload=reloads), 60, what="last reload watching")
    assert pending_in(config, "big") == BIG
    watching = [e for e in d.events() if e.get("event") == "config.watching"]
    assert watching[-1]["folders"] == ["small"], watching
    (Path(small["inbox"]) / "probe.jpg").write_bytes(product_image(20, 20))
    (Path(big["inbox"]) / "probe.jpg").write_bytes(product_image(20, 20))
    wait_until(lambda: pending_in(config, "small") == 1, 20, what="probe in small queued")
    # The big inbox's probe would have been seen by now (settle is 0.3 s) if watched.
    deadline = time.monotonic() + 2.0
    wait_until(lambda: time.monotonic() > deadline, 5, what="two seconds")
    assert pending_in(config, "big") == BIG, "the older configuration is still watching"
    assert d.stop() == 0, d.output()


def test_sigterm_during_a_new_watchers_startup_scan_stops_it_and_exits_0(
    tmp_path: Path, broke_emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    small = make_folder(tmp_path, "small")
    big = make_folder(tmp_path, "big")
    drop_files(Path(big["inbox"]), BIG * 3)
    config = write_config(tmp_path / "c.toml", base_url=broke_emulator.url, folders=[small])
    d = start_daemon(daemons, config)
    write_config(config, base_url=broke_emulator.url, folders=[small, big])
    d.signal(signal.SIGHUP)
    wait_until(lambda: d.saw("file.queued", folder="big"), 30, what="the new watcher scanning")
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0, d.output()
    assert time.monotonic() - t0 < 5.0
    assert d.saw("config.watch_abandoned", folders=["small", "big"]), d.output()
    # The scan was stopped, not run to its end after the daemon said it stopped.
    assert pending_in(config, "big") < BIG * 3


def test_sigterm_during_the_first_startup_scan_exits_promptly_0(
    tmp_path: Path, broke_emulator: Emulator
) -> None:
    big = make_folder(tmp_path, "big")
    drop_files(Path(big["inbox"]), BIG * 5)
    config = write_config(tmp_path / "c.toml", base_url=broke_emulator.url, folders=[big])
    d = DaemonProcess(config)
    try:
        wait_until(lambda: d.saw("file.queued", folder="big"), 30, what="the start-up scan")
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.proc.wait(15) == 0, d.output()
        took = time.monotonic() - t0
    finally:
        d.stop()
    assert took < 3.0, f"{took:.1f} s to stop"
    assert not d.saw("daemon.ready")  # it never claimed to be watching
    assert pending_in(config, "big") < BIG * 5


CRASHING_DAEMON = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from bgsyncd.service.backends import load_settings
    from bgsyncd.service.daemon import Daemon
    from bgsyncd.storage.sqlite.store import SqliteStore

    settings = load_settings(sys.argv[1])
    trigger = Path(settings.folders[0].inbox) / "crash.jpg"
    target, method = sys.argv[2].split(".")

    def patch(owner):
        real = getattr(owner, method)

        def broken(*args, **kwargs):
            if trigger.exists():
                raise RuntimeError(f"injected fault in {sys.argv[2]}")
            return real(*args, **kwargs)

        setattr(owner, method, broken)

    # The one monkeypatch: a bug in a component, set off by a file's arrival.
    if target == "SqliteStore":  # bound into the watcher when the daemon is built
        patch(SqliteStore)
    daemon = Daemon(settings)
    if target != "SqliteStore":
        patch(getattr(daemon, target))
    sys.exit(daemon.run())
    """
)

# What breaks, and the thread whose loop it breaks.
COMPONENTS = [
    ("queue.enqueue_many", "bgsyncd-ingest"),  # the ingest thread
    ("queue.next_ready_at", "bgsyncd-dispatch"),  # the dispatcher's loop
    ("queue.oldest_pending_queued_at", "MainThread"),  # the main loop's metrics refresh
    ("SqliteStore.is_unchanged", "bgsyncd-tracker"),  # the watcher's completeness tracker
]


class HealthPoller:
    """Polls /healthz in a thread; keeps every status it saw, in order."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=2) as answer:  # loopback
                    self.seen.append(answer.status)
            except urllib.error.HTTPError as exc:
                self.seen.append(exc.code)
            except OSError:
                pass  # not listening yet, or gone
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.parametrize(("broken", "thread"), COMPONENTS)
def test_a_crashed_component_logs_daemon_crashed_turns_healthz_503_and_exits_1(
    tmp_path: Path, broken: str, thread: str
) -> None:
    # A slow emulator keeps one request in flight, so the drain after the crash
    # lasts long enough to see /healthz answer during it.
    emu = AdmittingEmulator(keys=[TEST_KEY], credits=100, rate_limit=1000, latency=3.0)
    with emu:
        folder = make_folder(tmp_path, "shop")
        inbox = Path(folder["inbox"])
        (inbox / "first.jpg").write_bytes(product_image(24, 24))
        port = _free_port()
        config = write_config(
            tmp_path / "c.toml",
            base_url=emu.url,
            folders=[folder],
            metrics_listen=f"127.0.0.1:{port}",
        )
        script = tmp_path / "crashing.py"
        script.write_text(CRASHING_DAEMON, encoding="utf-8")
        log_path = tmp_path / "daemon.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(script), str(config), broken],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**_env(), "BGSYNCD_API_KEY": TEST_KEY},
                cwd=ROOT,
            )
            poller = HealthPoller(f"http://127.0.0.1:{port}/healthz")
            try:
                wait_until(lambda: 200 in poller.seen, 20, what="healthz 200")
                assert emu.image_admitted.wait(20), "no request in flight"
                (inbox / "crash.jpg").write_bytes(product_image(24, 24))
                crashed_at = time.monotonic()
                code = proc.wait(30)
            finally:
                poller.stop()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        took = time.monotonic() - crashed_at
        assert code == 1, log_path.read_text()
        events = _events(log_path)
        crashed = [e for e in events if e.get("event") == "daemon.crashed"]
        assert len(crashed) == 1, log_path.read_text()
        assert crashed[0]["thread"] == thread
        assert f"injected fault in {broken}" in crashed[0]["traceback"]
        assert "Traceback (most recent call last)" in crashed[0]["traceback"]
        # 503 from the crash on, never 200 again; well before the 30 s stall rule.
        first_bad = poller.seen.index(503)
        assert 200 not in poller.seen[first_bad:], poller.seen
        assert took < 15
        # Every line of output is a JSON event: no bare traceback on stderr.
        lines = log_path.read_text().splitlines()
        assert all(line.startswith("{") for line in lines), lines


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def _events(path: Path) -> list[dict[str, Any]]:
    import json

    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_a_crash_during_the_startup_scan_still_exits_1(tmp_path: Path) -> None:
    # The ingest thread breaks on the first batch, while the start-up scan of a
    # large inbox is still running: the stop comes before READY.
    with Emulator(keys=[TEST_KEY], credits=0, rate_limit=1000) as emu:
        folder = make_folder(tmp_path, "big")
        inbox = Path(folder["inbox"])
        drop_files(inbox, BIG * 3)
        (inbox / "crash.jpg").write_bytes(b"x")
        config = write_config(tmp_path / "c.toml", base_url=emu.url, folders=[folder])
        script = tmp_path / "crashing.py"
        script.write_text(CRASHING_DAEMON, encoding="utf-8")
        log_path = tmp_path / "daemon.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(script), str(config), "queue.enqueue_many"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**_env(), "BGSYNCD_API_KEY": TEST_KEY},
            )
            try:
                code = proc.wait(30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        events = _events(log_path)
        assert code == 1, log_path.read_text()
        assert [e["thread"] for e in events if e.get("event") == "daemon.crashed"] == [
            "bgsyncd-ingest"
        ]
        assert not any(e.get("event") == "daemon.ready" for e in events)
