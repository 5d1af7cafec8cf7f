"""Daemons under test: their configuration, the subprocess, the CLI, ``status --json``."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.helpers import wait_until

TEST_KEY = "test-key-0123456789"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(
    path: Path,
    *,
    base_url: str,
    folders: list[dict[str, Any]],
    api: dict[str, Any] | None = None,
    credits: dict[str, Any] | None = None,
    queue: dict[str, Any] | None = None,
    metrics_listen: str = "",
    hooks: dict[str, Any] | None = None,
) -> Path:
    """Write a TOML configuration for a test daemon."""
    sections: dict[str, dict[str, Any]] = {
        "api": {"base_url": base_url, "timeout_seconds": 10, "rate_limit": 1000, **(api or {})},
        "credits": {"check_interval_seconds": 600, **(credits or {})},
        "queue": {
            "database": str(path.parent / "state" / "queue.sqlite3"),
            "settle_seconds": 0.3,
            "retry_base_seconds": 0.05,
            "retry_max_seconds": 0.5,
            **(queue or {}),
        },
        "metrics": {"listen": metrics_listen},
        "hooks": {"retry_base_seconds": 0.2, "retry_max_seconds": 1.0, **(hooks or {})},
        "logging": {"format": "json", "level": "debug"},
    }
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
        lines.append("")
    for folder in folders:
        lines.append("[[folder]]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in folder.items() if k != "rendition")
        lines.append("")
        for rendition in folder.get("rendition", ()):  # [[folder.rendition]] tables
            lines.append("[[folder.rendition]]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in rendition.items())
            lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def make_folder(root: Path, name: str, **extra: Any) -> dict[str, Any]:
    """Create an inbox under ``root/name`` and return its ``[[folder]]`` table."""
    inbox = root / name / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    return {
        "name": name,
        "inbox": str(inbox),
        "outbox": str(root / name / "outbox"),
        "quarantine": str(root / name / "quarantine"),
        **extra,
    }


class DaemonProcess:
    """``bgsyncd run`` (or another command) as a subprocess, its log in a file."""

    def __init__(
        self, config: Path, command: str = "run", env: dict[str, str] | None = None
    ) -> None:
        self.config = config
        self.log_path = config.parent / f"daemon-{os.getpid()}-{id(self)}.log"
        self._log = self.log_path.open("wb")
        # faulthandler: a daemon that will not stop dumps its threads on SIGABRT (stop()).
        full_env = {
            **os.environ,
            "BGSYNCD_API_KEY": TEST_KEY,
            "PYTHONFAULTHANDLER": "1",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bgsyncd", command, "--config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines so far."""
        out = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def saw(self, event: str, **fields: Any) -> bool:
        return any(
            e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
            for e in self.events()
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_until(
            lambda: self.saw("daemon.ready") or self.proc.poll() is not None,
            timeout,
            what="daemon.ready",
        )
        assert self.proc.poll() is None, self.output()

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # Hung: ask for every thread's stack (faulthandler), show it, then kill.
            self.proc.send_signal(signal.SIGABRT)
            try:
                code = self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait(5)
            print(f"daemon did not stop within {timeout} s; its log ends:")
            print(self.output()[-20000:])
        self._log.close()
        return code

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()


def start_daemon(
    daemons: list[DaemonProcess], config: Path, env: dict[str, str] | None = None
) -> DaemonProcess:
    """Start ``bgsyncd run`` on ``config``, register it for clean-up, wait for READY."""
    d = DaemonProcess(config, env=env)
    daemons.append(d)
    d.wait_ready()
    return d


def status_json(config: Path) -> dict[str, Any]:
    """``bgsyncd status --json``, parsed."""
    result = run_cli("status", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def wait_status(config: Path, timeout: float = 30.0, **expected: Any) -> dict[str, Any]:
    """Wait until ``status --json`` shows ``expected`` (it is refreshed every few seconds)."""
    seen: list[dict[str, Any]] = []

    def matches() -> bool:
        seen[:] = [status_json(config)]
        got = {**seen[0], **seen[0]["jobs"]}
        return all(got.get(k) == v for k, v in expected.items())

    try:
        wait_until(matches, timeout, interval=0.25, what=f"status {expected}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status: {seen}") from None
    return seen[0]


def free_port() -> int:
    """A loopback port nothing listens on: bound, then closed (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``bgsyncd ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "bgsyncd", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "BGSYNCD_API_KEY": TEST_KEY, **(env or {})},
        timeout=timeout,
        check=False,
    )


def attempts(config: Path) -> dict[str, int]:
    """Each job's counted attempts, read from the daemon's database."""
    db = config.parent / "state" / "queue.sqlite3"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT folder, relpath, attempts FROM jobs").fetchall()
    finally:
        conn.close()
    return {f"{folder}/{rel}": n for folder, rel, n in rows}


def outputs(folder: dict[str, Any]) -> list[str]:
    """The outputs written (a hidden temp file is one being written, not an output)."""
    outbox = Path(folder["outbox"])
    if not outbox.exists():
        return []
    return sorted(p.name for p in outbox.rglob("*") if p.is_file() and not p.name.startswith("."))
