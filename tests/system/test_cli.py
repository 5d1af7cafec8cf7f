"""The command line end to end: `bgsyncd emulator` as a real subprocess, curl and
`bgsyncd credits` against it, usage errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgsyncd.commands.retry import PICKUP_SECONDS
from bgsyncd.dispatch.dispatcher import IDLE_LOOK_SECONDS
from bgsyncd.emulator import Emulator
from bgsyncd.storage.sqlite.store import SqliteStore
from tests.support.daemons import (
    DaemonProcess,
    make_folder,
    run_cli,
    start_daemon,
    write_config,
)
from tests.support.helpers import open_image, product_image, wait_until

KEY = "emu-key-42"


@pytest.fixture
def emulator_process(tmp_path: Path) -> Iterator[str]:
    """`bgsyncd emulator` on a free port; yields its base URL."""
    log = (tmp_path / "emulator.out").open("w+")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bgsyncd",
            "emulator",
            "--port",
            "0",
            "--key",
            KEY,
            "--credits",
            "42",
            "--expires",
            "2031-01-02T03:04:05Z",
        ],
        stdout=log,
        stderr=subprocess.DEVNULL,
    )
    try:
        line = wait_until(
            lambda: next(
                (ln for ln in Path(log.name).read_text().splitlines() if "listening on" in ln),
                None,
            ),
            20,
            what="emulator listening line",
        )
        assert line is not None  # wait_until returns a truthy value
        yield line.rsplit(" ", 1)[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        log.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_against_the_emulator_command(tmp_path: Path, emulator_process: str) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(product_image(120, 80, "JPEG"))
    out = tmp_path / "result.png"
    subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            f"{emulator_process}/v1.0/image-without-background",
            "-H",
            f"X-API-Key: {KEY}",
            "-F",
            f"image=@{photo}",
            "--output",
            str(out),
        ],
        check=True,
    )
    img = open_image(out.read_bytes())
    assert img.mode == "RGBA" and img.size == (120, 80)
    codes = []
    for _ in range(7):  # with the one above, eight quick calls with one key
        done = subprocess.run(
            [
                "curl",
                "-s",
                "-o",
                os.devnull,
                "-w",
                "%{http_code}",
                "-H",
                f"X-API-Key: {KEY}",
                f"{emulator_process}/available-credit",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        codes.append(done.stdout)
    assert codes[:6] == ["200"] * 6 and codes[6] == "429"
    wrong = subprocess.run(
        [
            "curl",
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            "X-API-Key: nope",
            f"{emulator_process}/available-credit",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    body, code = wrong.stdout.rsplit("\n", 1)
    assert code == "401" and "error" in json.loads(body)


def test_credits_command_against_the_emulator(tmp_path: Path, emulator_process: str) -> None:
    folder = make_folder(tmp_path, "f")
    config = write_config(tmp_path / "c.toml", base_url=emulator_process, folders=[folder])
    env = {"BGSYNCD_API_KEY": KEY}
    human = run_cli("credits", "--config", str(config), env=env)
    assert human.returncode == 0, human.stderr
    assert "42" in human.stdout and "2031-01-02" in human.stdout
    as_json = run_cli("credits", "--json", "--config", str(config), env=env)
    assert json.loads(as_json.stdout) == {
        "available_credits": 42,
        "expiration_date": "2031-01-02T03:04:05+00:00",
    }
    refused = run_cli("credits", "--config", str(config), env={"BGSYNCD_API_KEY": "wrong-key"})
    assert refused.returncode == 1
    assert "wrong-key" not in refused.stderr and "Traceback" not in refused.stderr


def test_credits_without_a_key_is_a_configuration_error(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "f")
    config = write_config(tmp_path / "c.toml", base_url="http://127.0.0.1:9", folders=[folder])
    env = {k: v for k, v in os.environ.items() if k != "BGSYNCD_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "bgsyncd", "credits", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert "no API key" in result.stderr and "Traceback" not in result.stderr


def test_usage_errors_exit_2_without_a_traceback() -> None:
    for args in (["frobnicate"], [], ["status", "--bogus"], ["retry"]):
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_run_without_folders_is_a_configuration_error(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", base_url="http://127.0.0.1:9", folders=[])
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert "folder" in result.stderr and "Traceback" not in result.stderr


def test_credits_before_the_daemon_ever_ran_paces_through_the_queue_database(
    tmp_path: Path,
) -> None:
    # Eight `bgsyncd credits` in a row, the daemon never started: each records
    # its request in the queue's request log (created by the first), so the
    # eighth waits for the window instead of meeting a 429.
    with Emulator(keys=[KEY], credits=42, rate_limit=7, rate_window=3.0) as emu:
        folder = make_folder(tmp_path, "f")
        config = write_config(
            tmp_path / "c.toml",
            base_url=emu.url,
            folders=[folder],
            api={"rate_limit": 7, "rate_window_seconds": 3},
        )
        database = tmp_path / "state" / "queue.sqlite3"
        assert not database.exists()
        env = {"BGSYNCD_API_KEY": KEY}
        results = [run_cli("credits", "--config", str(config), env=env) for _ in range(8)]
        assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results]
        assert all("42" in r.stdout for r in results)
        assert database.exists()
        assert [r.status for r in emu.requests()] == [200] * 8


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A real read-only filesystem (tmpfs mounted ro); root ignores file modes."""
    where = tmp_path / "ro"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root (CI runs as root)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_credits_that_cannot_be_recorded_send_nothing_and_exit_1(
    tmp_path: Path, read_only_folder: Path
) -> None:
    with Emulator(keys=[KEY], credits=42, rate_limit=7) as emu:
        folder = make_folder(tmp_path, "f")
        config = write_config(
            tmp_path / "c.toml",
            base_url=emu.url,
            folders=[folder],
            queue={"database": str(read_only_folder / "queue.sqlite3")},
        )
        result = run_cli("credits", "--config", str(config), env={"BGSYNCD_API_KEY": KEY})
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "queue.sqlite3" in lines[0] and "nothing was sent" in lines[0]
        assert "Traceback" not in result.stderr
        assert emu.requests() == []


def test_status_answers_while_a_quarantine_path_is_a_file(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    folder = make_folder(tmp_path, "f")
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
    d = start_daemon(daemons, config)
    quarantine = Path(folder["quarantine"])
    quarantine.rmdir()
    quarantine.write_text("not a folder")
    result = run_cli("status", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["folders"]["f"]["pending"] == 0
    assert quarantine.is_file()  # status created or changed nothing
    assert d.stop() == 0


def test_retry_says_a_running_daemon_takes_the_files_within_its_dispatch_look(
    tmp_path: Path,
) -> None:
    folder = make_folder(tmp_path, "f")
    config = write_config(tmp_path / "c.toml", base_url="http://127.0.0.1:9", folders=[folder])
    SqliteStore(tmp_path / "state" / "queue.sqlite3").close()
    result = run_cli("retry", "--all", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert PICKUP_SECONDS == IDLE_LOOK_SECONDS
    assert f"takes them within {IDLE_LOOK_SECONDS:g} s" in result.stdout


def test_retry_that_cannot_put_a_file_back_names_the_errno_and_keeps_it_quarantined(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    """An inbox that refuses the move (a real read-only mount) is one line, exit 1."""
    from tests.support.mounts import tmpfs

    with tmpfs(tmp_path / "f" / "inbox", "4m") as inbox:
        folder = make_folder(tmp_path, "f")
        config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
        d = start_daemon(daemons, config)
        (inbox.path / "notes.jpg").write_text("not an image")
        quarantined = Path(folder["quarantine"]) / "notes.jpg"
        wait_until(quarantined.exists, timeout=30, what="the text file quarantined")
        wait_until(lambda: not (inbox.path / "notes.jpg").exists(), timeout=30)
        assert d.stop() == 0
        inbox.readonly()
        try:
            result = run_cli("retry", "--all", "--config", str(config))
        finally:
            inbox.readwrite()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "[Errno 30]" in result.stderr and "notes.jpg" in result.stderr, result.stderr
    assert quarantined.exists()
    assert (quarantined.parent / "notes.jpg.error.json").exists()
