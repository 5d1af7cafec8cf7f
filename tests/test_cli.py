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

from tests.conftest import make_folder, run_cli, write_config
from tests.helpers import open_image, product_image, wait_until

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
