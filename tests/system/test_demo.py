"""The quick start: ``bgsyncd demo`` and ``scripts/demo.sh`` as a user runs them."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import open_image, wait_until
from tests.support.paths import ROOT

SAMPLES = {  # input in the inbox -> its cut-out in the outbox
    "product.jpg": "product.png",
    "portrait.png": "portrait.png",
    "logo-transparent.png": "logo-transparent.png",
    "catalogue/spring/mug.webp": "catalogue/spring/mug.png",
}
TEXT_SAMPLE = "not-an-image.jpg"
SHELL_ENV = {"PATH": "/usr/bin:/bin"}  # the virtualenv is not activated


class Demo:
    """A demo subprocess with its stdout and stderr in files."""

    def __init__(self, argv: list[str], workdir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "BGSYNCD_API_KEY"}
        env.update(SHELL_ENV)  # started from a fresh shell, as a newcomer would
        env.pop("VIRTUAL_ENV", None)
        self.out_path = workdir / "demo.stdout"
        self.err_path = workdir / "demo.stderr"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=workdir)

    def stdout(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    def output(self) -> str:
        return self.stdout() + self.err_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def demos() -> Iterator[list[Demo]]:
    started: list[Demo] = []
    yield started
    for demo in started:
        demo.kill()


@pytest.fixture
def port_9808_busy() -> Iterator[None]:
    """Hold 127.0.0.1:9808 (the default metrics port), as another exporter would.

    Held by this test itself: a port someone else holds now (another suite's
    demo on the same machine) may be free again before the demo starts.
    """
    sock = socket.socket()
    deadline = time.monotonic() + 120
    while True:
        try:
            sock.bind(("127.0.0.1", 9808))
            sock.listen()
            break
        except OSError:
            if time.monotonic() > deadline:
                break  # held by someone else for good: busy all the same
            time.sleep(0.2)  # polling for a port another process holds; no event to wait on
    try:
        yield
    finally:
        sock.close()


def run_and_check(demos: list[Demo], argv: list[str], root: Path, workdir: Path) -> str:
    """Start the demo, check what it produces, stop it with Ctrl-C; return the metrics URL."""
    demo = Demo(argv, workdir)
    demos.append(demo)
    wait_until(
        lambda: "Press Ctrl-C" in demo.stdout() or demo.proc.poll() is not None,
        60,
        what="the demo's banner",
    )
    assert demo.proc.poll() is None, demo.output()
    banner = demo.stdout()
    for name in ("inbox", "outbox", "marketplace", "quarantine"):
        assert str(root / name) in banner, banner
    match = re.search(r"metrics:\s+(http://127\.0\.0\.1:(\d+))/metrics", banner)
    assert match, banner
    base = match.group(1)

    inbox, outbox, quarantine = root / "inbox", root / "outbox", root / "quarantine"
    wait_until(
        lambda: (
            all((outbox / out).exists() for out in SAMPLES.values())
            and (quarantine / f"{TEXT_SAMPLE}.error.json").exists()
        ),
        40,
        what="the demo's cut-outs and its quarantined text file",
    )
    for sample, out in SAMPLES.items():
        result = open_image((outbox / out).read_bytes())
        source = open_image((inbox / sample).read_bytes())
        assert result.format == "PNG" and result.mode == "RGBA", out
        assert result.size == source.size, out
    files = sorted(str(p.relative_to(outbox)) for p in outbox.rglob("*") if p.is_file())
    assert files == sorted(SAMPLES.values())
    # The rendition: the same inputs as JPEGs on white in their own tree (preset amazon).
    marketplace = root / "marketplace"
    wait_until(
        lambda: all((marketplace / out).with_suffix(".jpg").exists() for out in SAMPLES.values()),
        20,
        what="the demo's marketplace rendition",
    )
    for out in SAMPLES.values():
        shot = open_image((marketplace / out).with_suffix(".jpg").read_bytes())
        assert shot.format == "JPEG" and shot.mode == "RGB", out
        assert shot.size == (2000, 2000), out  # the amazon preset's canvas
        assert shot.getpixel((3, 3)) == (255, 255, 255), out  # on white
    assert (quarantine / TEXT_SAMPLE).read_bytes() == b"this is text, not a JPEG\n"
    sidecar = json.loads((quarantine / f"{TEXT_SAMPLE}.error.json").read_text())
    assert (sidecar["reason"], sidecar["path"]) == ("unsupported_media", TEXT_SAMPLE)
    assert not (inbox / TEXT_SAMPLE).exists()
    with urllib.request.urlopen(base + "/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert (
            'bgsyncd_jobs_finished_total{folder="demo",outcome="success"}' in answer.read().decode()
        )

    check_banner_commands(banner, workdir)

    demo.proc.send_signal(signal.SIGINT)
    assert demo.proc.wait(30) == 0, demo.output()
    assert "Traceback" not in demo.output()
    return base


def check_banner_commands(banner: str, workdir: Path) -> None:
    """The banner's command works pasted into the demo's shell (bgsyncd not on its PATH)."""
    match = re.search(r"^\s*status:\s+(.+)$", banner, re.MULTILINE)
    assert match, banner
    command = match.group(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BGSYNCD_")}
    env.update(SHELL_ENV)  # the shell the demo was started from
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (command, result.stdout, result.stderr)
    assert "demo" in result.stdout, result.stdout  # the demo's folder is in the status


def test_demo_command_runs_without_a_key_beside_a_busy_9808(
    tmp_path: Path, demos: list[Demo], port_9808_busy: None
) -> None:
    root = tmp_path / "demo"
    argv = [sys.executable, "-m", "bgsyncd", "demo", "--dir", str(root)]
    base = run_and_check(demos, argv, root, tmp_path)
    assert not base.endswith(":9808")
    # Its emulator key stays in the state folder, readable by its owner only.
    assert (root / "state" / "api_key").stat().st_mode & 0o077 == 0

    # A second run in the same folder reuses it: the text sample is not put back
    # into the inbox to be quarantined again as not-an-image~2.jpg.
    again = Demo(argv, tmp_path)
    demos.append(again)
    wait_until(
        lambda: "daemon.ready" in again.output() or again.proc.poll() is not None,
        60,
        what="the second run ready",
    )
    assert again.proc.poll() is None, again.output()
    assert not (root / "inbox" / TEXT_SAMPLE).exists()
    assert sorted(p.name for p in (root / "quarantine").iterdir()) == [
        TEXT_SAMPLE,
        f"{TEXT_SAMPLE}.error.json",
    ]
    again.proc.send_signal(signal.SIGINT)
    assert again.proc.wait(30) == 0, again.output()


def test_demo_script(tmp_path: Path, demos: list[Demo]) -> None:
    root = tmp_path / "elsewhere"
    run_and_check(demos, [str(ROOT / "scripts" / "demo.sh"), "--dir", str(root)], root, tmp_path)
