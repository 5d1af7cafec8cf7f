"""``bgsyncd once`` (SPEC §3) under a real pseudo-terminal: what the screen shows,
what the bar counts, what it says while it waits, and the exit status."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

from bgsyncd.emulator import Emulator
from tests.support.daemons import TEST_KEY, make_folder, run_cli, write_config
from tests.support.helpers import product_image

COLUMNS = 120
BAR = re.compile(r"^\[[#-]+\] (\d+)/(\d+)(.*)$")
REDRAW = re.compile(r"\r\x1b\[K(\[[#-]+\] [^\r\n\x1b]*)")


@dataclass
class PtyRun:
    code: int
    raw: str  # everything written to the terminal
    screen: list[str]  # the lines left on screen, as a terminal shows them
    seconds: float

    def bars(self) -> list[str]:
        """Every state of the bar that was drawn, in order."""
        return REDRAW.findall(self.raw)


def render_screen(raw: str) -> list[str]:
    """A small terminal: carriage return, newline, erase to end of line, printable text."""
    lines: list[list[str]] = [[]]
    col = 0
    i = 0
    while i < len(raw):
        ch = raw[i]
        if raw.startswith("\x1b[K", i):
            del lines[-1][col:]
            i += 3
            continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append([])
            col = 0
        else:
            line = lines[-1]
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
        i += 1
    return ["".join(line) for line in lines if line]


def run_once_on_pty(
    config: Path,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    interrupt_at: str | None = None,
) -> PtyRun:
    """``bgsyncd once`` with stdin, stdout and stderr on a pseudo-terminal; read to the end.

    With ``interrupt_at``, SIGINT (Ctrl-C) is sent once that text is on screen.
    """
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, COLUMNS, 0, 0))
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bgsyncd", "once", "--config", str(config)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "BGSYNCD_API_KEY": TEST_KEY, **(env or {})},
        start_new_session=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = t0 + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the other end is closed
                break
            if not data:
                break
            chunks.append(data)
            if interrupt_at and interrupt_at.encode() in b"".join(chunks):
                proc.send_signal(signal.SIGINT)
                interrupt_at = None
        code = proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    raw = b"".join(chunks).decode("utf-8", errors="replace")
    return PtyRun(code, raw, render_screen(raw), time.monotonic() - t0)


def assert_nothing_torn(run: PtyRun) -> None:
    """Every line left on screen is a whole JSON log line, a bar, or the summary."""
    for line in run.screen:
        if BAR.match(line) or line.startswith(("once: ", "  ")):
            continue
        assert line.startswith("{") and line.endswith("}"), f"torn line: {line!r}\n{run.raw!r}"
        json.loads(line)


def summary(run: PtyRun) -> str:
    return next(line for line in run.screen if line.startswith("once: "))


def drop(inbox: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        (inbox / name).write_bytes(product_image(20 + i, 20 + i))


def test_once_counts_this_runs_files_and_says_it_waits_for_the_rate_limit(tmp_path: Path) -> None:
    # Three requests in any 4 s: the credit check and four images need a wait.
    with Emulator(keys=[TEST_KEY], credits=100, rate_limit=3, rate_window=4.0) as emu:
        folder = make_folder(tmp_path, "shop")
        inbox = Path(folder["inbox"])
        config = write_config(
            tmp_path / "c.toml",
            base_url=emu.url,
            folders=[folder],
            api={"rate_limit": 3, "rate_window_seconds": 4},
        )
        drop(inbox, [f"a{i}.jpg" for i in range(4)])
        first = run_once_on_pty(config)
        assert first.code == 0, first.raw
        assert_nothing_torn(first)
        assert [b for b in first.bars() if "rate limit: next request in" in b], first.bars()
        assert BAR.match(first.bars()[-1]).groups()[:2] == ("4", "4")  # type: ignore[union-attr]
        assert summary(first) == "once: 4/4 files finished"
        # The total grows as the scan finds files, and never counts more than this run's.
        assert max(int(b.split()[1].split("/")[1]) for b in first.bars()) == 4, first.bars()
        assert all(r.status != 429 for r in emu.requests())

        # A second run counts its own two files, not the four of the first.
        drop(inbox, ["b0.jpg", "b1.jpg"])
        second = run_once_on_pty(config)
        assert second.code == 0, second.raw
        assert_nothing_torn(second)
        counted = {b.split()[1] for b in second.bars()}
        assert counted <= {"0/0", "0/1", "0/2", "1/2", "2/2"}, counted
        assert second.bars()[-1].split()[1] == "2/2"
        assert summary(second) == "once: 2/2 files finished"


def test_once_ends_on_a_pause_it_cannot_outwait_with_exit_3_and_names_it(tmp_path: Path) -> None:
    with Emulator(keys=[TEST_KEY], credits=100, rate_limit=1000) as emu:
        folder = make_folder(tmp_path, "shop")
        drop(Path(folder["inbox"]), ["a.jpg"])
        config = write_config(tmp_path / "c.toml", base_url=emu.url, folders=[folder])
        run = run_once_on_pty(config, env={"BGSYNCD_API_KEY": "a-key-the-emulator-refuses"})
        assert run.code == 3, run.raw
        # The next credit check is ten minutes away: no point waiting a minute.
        assert run.seconds < 20
        assert_nothing_torn(run)
        assert summary(run) == "once: 0/1 files finished; paused: invalid_api_key"
        assert "a-key-the-emulator-refuses" not in run.raw


def test_once_quarantines_are_outcomes_and_it_waits_for_retries_due_soon(tmp_path: Path) -> None:
    # Seed 2 with half the requests failing: the credit check is answered, the
    # image's first request gets a 500 (an attempt, a retry 0-1 s away), its second
    # an answer. (500s in a row are an outage: api_unreachable, test_outage.py.)
    with Emulator(keys=[TEST_KEY], credits=100, rate_limit=1000, fail_rate=0.5, seed=2) as emu:
        folder = make_folder(tmp_path, "shop")
        drop(Path(folder["inbox"]), ["a.jpg"])
        (Path(folder["inbox"]) / "notes.jpg").write_text("not an image\n")
        config = write_config(
            tmp_path / "c.toml",
            base_url=emu.url,
            folders=[folder],
            queue={"max_attempts": 3, "retry_base_seconds": 1.0, "retry_max_seconds": 2.0},
        )
        run = run_once_on_pty(config)
        assert run.code == 0, run.raw
        assert_nothing_torn(run)
        assert summary(run) == "once: 2/2 files finished"
        assert (Path(folder["quarantine"]) / "notes.jpg").exists()
        assert (Path(folder["outbox"]) / "a.png").exists()
        images = [r.status for r in emu.requests() if r.image_sha256]
        assert images == [500, 200]  # the retry was waited for, not left behind


def test_once_without_a_terminal_prints_one_summary_line_and_no_bar(tmp_path: Path) -> None:
    with Emulator(keys=[TEST_KEY], credits=100, rate_limit=1000) as emu:
        folder = make_folder(tmp_path, "shop")
        drop(Path(folder["inbox"]), ["a.jpg", "b.jpg"])
        config = write_config(tmp_path / "c.toml", base_url=emu.url, folders=[folder])
        result = run_cli("once", "--config", str(config))
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["once: 2/2 files finished"]
        assert "\r" not in result.stderr and "\x1b" not in result.stderr
        assert all(line.startswith("{") for line in result.stderr.splitlines())


def test_once_interrupted_by_ctrl_c_leaves_a_clean_screen_and_exits_1(tmp_path: Path) -> None:
    with Emulator(keys=[TEST_KEY], credits=100, rate_limit=1000, latency=3.0) as emu:
        folder = make_folder(tmp_path, "shop")
        drop(Path(folder["inbox"]), ["a.jpg"])
        config = write_config(tmp_path / "c.toml", base_url=emu.url, folders=[folder])
        run = run_once_on_pty(config, interrupt_at="0/1")
        assert run.code == 1, run.raw
        assert_nothing_torn(run)
        assert summary(run) == "once: 0/1 files finished; interrupted"
        assert run.raw.endswith("\n")  # no bar left dangling under the prompt
