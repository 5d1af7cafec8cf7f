"""Hook commands run for real: argv without a shell, the event on stdin and in the
environment, the working folder by descriptor, output cut, the process group killed."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgsyncd.hooks.commands import OUTPUT_LIMIT, child_environment, run_command
from bgsyncd.hooks.events import environment
from tests.support.helpers import wait_until

PY = sys.executable


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    where = tmp_path / "outbox"
    where.mkdir()
    fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    yield where, fd
    os.close(fd)


def _payload(name: str) -> dict[str, object]:
    return {
        "event": "done", "event_id": "e-1", "folder": "f", "relpath": name,
        "input": f"/in/{name}", "outputs": [f"/out/{name}.png", "/r/x.png"],
        "reason": None, "message": None, "sidecar": None, "sha256": "ab",
    }  # fmt: skip


def test_the_event_reaches_the_command_in_its_environment_and_on_stdin_in_the_outbox(
    folder: tuple[Path, int],
) -> None:
    where, fd = folder
    payload = _payload("a.jpg")
    script = (
        "import json, os, sys; d = json.load(sys.stdin);"
        " env = {k: v for k, v in os.environ.items() if k.startswith('BGSYNCD_')};"
        " open('seen.json', 'w').write(json.dumps({'stdin': d, 'env': env, 'cwd': os.getcwd(),"
        " 'key': os.environ.get('SECRET_THING')}))"
    )
    env = child_environment(environment(payload), {"PATH": "/usr/bin", "SECRET_THING": "x"})
    result = run_command([PY, "-c", script], stdin=json.dumps(payload).encode(), env=env,
                         cwd_fd=fd, timeout=30)  # fmt: skip
    assert result.ok and not result.timed_out
    seen = json.loads((where / "seen.json").read_text())
    assert seen["stdin"] == payload
    assert seen["cwd"] == str(where)
    assert seen["key"] is None  # only a few of the daemon's variables are passed on
    assert seen["env"]["BGSYNCD_EVENT"] == "done"
    assert seen["env"]["BGSYNCD_EVENT_ID"] == "e-1"
    assert seen["env"]["BGSYNCD_OUTPUTS"] == "/out/a.jpg.png\n/r/x.png"
    assert seen["env"]["BGSYNCD_INPUT"] == "/in/a.jpg"
    assert seen["env"]["BGSYNCD_REASON"] == ""


def test_a_hostile_file_name_is_data_never_a_command(folder: tuple[Path, int]) -> None:
    where, fd = folder
    name = "$(touch PWNED);x.jpg"
    payload = _payload(name)
    env = child_environment(environment(payload), {"PATH": os.environ["PATH"]})
    # Even a hook that is itself a shell script reads the name as data ("$VAR" quoted).
    result = run_command(
        ["sh", "-c", 'printf "%s" "$BGSYNCD_INPUT" > got; cat > stdin.json'],
        stdin=json.dumps(payload).encode(), env=env, cwd_fd=fd, timeout=30,
    )  # fmt: skip
    assert result.ok
    assert (where / "got").read_text() == f"/in/{name}"
    assert json.loads((where / "stdin.json").read_text())["relpath"] == name
    assert not (where / "PWNED").exists()
    assert not any(p.name == "PWNED" for p in where.parent.rglob("*"))


def test_output_is_kept_up_to_4_kb_and_a_failure_is_its_exit_status(
    folder: tuple[Path, int],
) -> None:
    _, fd = folder
    script = "import sys; sys.stdout.write('x' * 100000); sys.stderr.write('E'); sys.exit(3)"
    result = run_command([PY, "-c", script], stdin=b"{}", env={}, cwd_fd=fd, timeout=30)
    assert result.returncode == 3 and not result.ok
    assert len(result.output) == OUTPUT_LIMIT and result.truncated


def test_a_command_past_the_timeout_is_killed_with_its_whole_process_group(
    folder: tuple[Path, int],
) -> None:
    where, fd = folder
    # The child starts a grandchild that would outlive it, then sleeps forever.
    script = "sleep 1000 & echo $! > grandchild; exec sleep 1000"
    began = time.monotonic()
    result = run_command(["sh", "-c", script], stdin=b"", env={"PATH": os.environ["PATH"]},
                         cwd_fd=fd, timeout=1.0)  # fmt: skip
    assert result.timed_out and not result.ok
    assert time.monotonic() - began < 10
    grandchild = int((where / "grandchild").read_text())

    def gone() -> bool:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            return True
        # A zombie waiting for init to reap it is dead too.
        state = Path(f"/proc/{grandchild}/stat").read_text().split(") ")[-1][0]
        return state == "Z"

    wait_until(gone, 10, what="the grandchild killed")


def test_a_command_that_cannot_start_raises(folder: tuple[Path, int]) -> None:
    _, fd = folder
    with pytest.raises(OSError):
        run_command(["/nonexistent/hook"], stdin=b"", env={}, cwd_fd=fd, timeout=5)


def test_a_process_that_escapes_the_group_holding_the_output_never_hangs_the_hook(
    folder: tuple[Path, int],
) -> None:
    where, fd = folder
    # setsid: a session of its own, out of reach of the group kill, holding stdout.
    script = "setsid sleep 30 & echo $! > escaped; echo hi; exit 3"
    began = time.monotonic()
    try:
        result = run_command(["sh", "-c", script], stdin=b"{}",
                             env={"PATH": os.environ["PATH"]}, cwd_fd=fd, timeout=2.0)  # fmt: skip
        took = time.monotonic() - began
    finally:
        wait_until((where / "escaped").exists, 10, what="the pid written")
        os.kill(int((where / "escaped").read_text()), 9)
    assert took < 2.0 + 2.0
    assert result.returncode == 3 and result.output == b"hi\n"  # it exited: its status counts
