"""The systemd units: systemd's own tools judge them, and the daemon's
dependencies are run under the memory protection the unit asks for."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.paths import ROOT

SYSTEMD = ROOT / "systemd"
UNITS = ("bgsyncd.service", "bgsyncd@.service")
INSTALLED = "/opt/bgsyncd/bin/bgsyncd"

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def settings(unit: str) -> dict[str, list[str]]:
    """Key -> every value it is given (systemd allows repeats), comments dropped."""
    found: dict[str, list[str]] = {}
    for raw in (SYSTEMD / unit).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def one(unit: str, key: str) -> str:
    values = settings(unit)[key]
    assert len(values) == 1, (unit, key, values)
    return values[0]


def installed_copy(tmp_path: Path, unit: str) -> Path:
    """A copy of ``unit`` whose ExecStart= names an executable that exists."""
    fake = tmp_path / "bin" / "bgsyncd"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    text = (SYSTEMD / unit).read_text(encoding="utf-8")
    assert INSTALLED in text
    copy = tmp_path / "units" / unit
    copy.parent.mkdir(exist_ok=True)
    copy.write_text(text.replace(INSTALLED, str(fake)), encoding="utf-8")
    return copy


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure_is_at_most_2(unit: str) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(SYSTEMD / unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_verify_passes_once_installed(tmp_path: Path, unit: str) -> None:
    copy = installed_copy(tmp_path, unit)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    # verify exits 0 on unknown keys and bad values; it only warns. Demand silence.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    assert result.stdout.strip() == "", result.stdout


@needs_analyze
def test_verify_notices_a_missing_executable() -> None:
    """The check above is real: without an installed bgsyncd, verify fails."""
    if Path(INSTALLED).exists():
        pytest.skip(f"{INSTALLED} is installed on this host")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(SYSTEMD / "bgsyncd.service")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    assert INSTALLED in result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_unit_keeps_the_operating_contract(unit: str) -> None:
    s = settings(unit)
    assert one(unit, "Type") == "notify"
    assert one(unit, "NotifyAccess") == "main"
    assert one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "Restart") == "on-failure"
    assert int(one(unit, "RestartSec")) >= 1
    assert int(one(unit, "WatchdogSec")) >= 10
    # The drain lasts up to api.timeout_seconds (120 s by default).
    assert int(one(unit, "TimeoutStopSec")) > 120
    assert one(unit, "UMask") == "0002"
    assert one(unit, "User") == one(unit, "Group") == "bgsyncd"
    assert one(unit, "LoadCredential").startswith("api_key:/etc/bgsyncd/")
    assert "AF_UNIX" in one(unit, "RestrictAddressFamilies").split()  # sd_notify
    assert one(unit, "ProtectSystem") == "strict"
    assert s["ReadWritePaths"]
    # Drop-folder access by group must keep working, and the API must be reachable.
    assert "PrivateUsers" not in s
    assert "IPAddressDeny" not in s
    assert "PrivateNetwork" not in s
    # The key travels as a credential, never on the command line.
    assert "key" not in one(unit, "ExecStart").lower()


def test_template_is_per_instance() -> None:
    unit = "bgsyncd@.service"
    assert one(unit, "ExecStart").endswith("run --config /etc/bgsyncd/%i.toml")
    assert one(unit, "StateDirectory") == "bgsyncd/%i"
    assert one(unit, "LoadCredential") == "api_key:/etc/bgsyncd/%i.api_key"
    assert (
        one("bgsyncd.service", "ExecStart") == f"{INSTALLED} run --config /etc/bgsyncd/config.toml"
    )
    assert one("bgsyncd.service", "StateDirectory") == "bgsyncd"
    assert one("bgsyncd.service", "LoadCredential") == "api_key:/etc/bgsyncd/api_key"


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-sysusers --root needs root")
def test_sysusers_creates_the_unit_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    conf = (SYSTEMD / "bgsyncd.sysusers.conf").read_text(encoding="utf-8")
    subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", "-"],
        input=conf,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    passwd = (tmp_path / "etc" / "passwd").read_text().splitlines()
    group = (tmp_path / "etc" / "group").read_text().splitlines()
    user = one("bgsyncd.service", "User")
    entry = next(line.split(":") for line in passwd if line.startswith(user + ":"))
    assert entry[6] == "/usr/sbin/nologin"
    assert any(line.startswith(one("bgsyncd.service", "Group") + ":") for line in group)


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="no systemd-tmpfiles")
@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles --root chowns: needs root")
def test_tmpfiles_creates_setgid_default_folders(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    for tool, name in (("systemd-sysusers", "sysusers"), ("systemd-tmpfiles", "tmpfiles")):
        args = [tool, f"--root={tmp_path}", *(["--create"] if name == "tmpfiles" else []), "-"]
        conf = (SYSTEMD / f"bgsyncd.{name}.conf").read_text(encoding="utf-8")
        subprocess.run(args, input=conf, capture_output=True, text=True, check=True, timeout=60)
    for sub in ("inbox", "outbox", "quarantine", "done"):
        mode = (tmp_path / "srv" / "bgsyncd" / sub).stat().st_mode
        assert mode & 0o7777 == 0o2775, (sub, oct(mode))
    # The default tree is the one the unit may write to.
    assert one("bgsyncd.service", "ReadWritePaths").lstrip("-") == "/srv/bgsyncd"


MDWE_PROBE = textwrap.dedent(
    """
    import ctypes, io, mmap, os, sqlite3, sys, tempfile, time
    libc = ctypes.CDLL(None, use_errno=True)
    # PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN): what MemoryDenyWriteExecute=yes enforces.
    if libc.prctl(65, 1, 0, 0, 0) != 0:
        sys.exit(77)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("W+X memory was still allowed")
    except PermissionError:
        pass
    import httpx, pydantic_settings, structlog, prometheus_client
    from PIL import Image
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer
    buf = io.BytesIO()
    Image.new("RGBA", (64, 64), (1, 2, 3, 4)).save(buf, "PNG")
    Image.open(io.BytesIO(buf.getvalue())).convert("RGB").save(io.BytesIO(), "WEBP")
    sqlite3.connect(":memory:").execute("select 1")
    closed = []
    class Seen(FileSystemEventHandler):
        def on_closed(self, event):
            closed.append(event.src_path)
    folder = tempfile.mkdtemp()
    observer = Observer()
    observer.schedule(Seen(), folder, recursive=True)
    observer.start()
    with open(os.path.join(folder, "a.jpg"), "wb") as f:
        f.write(b"x")
    deadline = time.monotonic() + 10
    while not closed and time.monotonic() < deadline:
        time.sleep(0.02)
    observer.stop()
    observer.join()
    assert closed, "no inotify close event"
    print("ok")
    """
)


def test_dependencies_run_without_writable_executable_memory() -> None:
    """MemoryDenyWriteExecute=yes is only safe if nothing needs W+X pages (PITFALLS)."""
    assert one("bgsyncd.service", "MemoryDenyWriteExecute") == "yes"
    if not hasattr(ctypes, "CDLL") or sys.platform != "linux":
        pytest.skip("Linux only")
    result = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode == 77:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
