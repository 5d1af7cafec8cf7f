"""Hooks (SPEC §10) on the real daemon and the emulator: commands and webhooks after
a file is done or quarantined, at least once across kill -9, never in the way."""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from pathlib import Path
from typing import Any

from bgsyncd.emulator import Emulator
from tests.support.daemons import DaemonProcess, make_folder, outputs, start_daemon, write_config
from tests.support.helpers import product_image, wait_until
from tests.support.receiver import Receiver

# A hook that writes what it was told (stdin, BGSYNCD_*, cwd) as one line to the
# log named in its argv; for a name in BLOCK it waits for the file `release` there.
HOOK = """
import json, os, sys, time
log, release = sys.argv[1], sys.argv[2]
event = json.load(sys.stdin)
env = {k: v for k, v in os.environ.items() if k.startswith("BGSYNCD_")}
line = {"stdin": event, "env": env, "cwd": os.getcwd(), "phase": "start"}
with open(log, "a") as fh:
    fh.write(json.dumps(line) + "\\n")
if event["relpath"].startswith("block"):
    while not os.path.exists(release):
        time.sleep(0.05)
with open(log, "a") as fh:
    fh.write(json.dumps({**line, "phase": "end"}) + "\\n")
"""


def _hook(tmp_path: Path) -> tuple[list[str], Path]:
    script = tmp_path / "hook.py"
    script.write_text(HOOK, encoding="utf-8")
    log = tmp_path / "hooks.log"
    return [sys.executable, str(script), str(log), str(tmp_path / "release")], log


def _lines(log: Path, phase: str = "start") -> list[dict[str, Any]]:
    if not log.exists():
        return []
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]
    return [r for r in rows if r["phase"] == phase]


def _by_path(log: Path, phase: str = "start") -> dict[str, list[dict[str, Any]]]:
    got: dict[str, list[dict[str, Any]]] = {}
    for row in _lines(log, phase):
        got.setdefault(row["stdin"]["relpath"], []).append(row)
    return got


def test_done_and_quarantine_hooks_get_the_event_and_a_hostile_name_runs_nothing(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    argv, log = _hook(tmp_path)
    folder = make_folder(tmp_path, "products", on_done=argv, on_quarantine=argv)
    inbox = Path(folder["inbox"])
    config = write_config(tmp_path / "config.toml", base_url=emulator.url, folders=[folder])
    start_daemon(daemons, config)
    hostile = "$(touch PWNED);x.jpg"
    (inbox / "a.jpg").write_bytes(product_image(320, 240))
    (inbox / hostile).write_bytes(product_image(320, 240))
    (inbox / "bad.jpg").write_bytes(b"not an image at all")
    wait_until(lambda: len(_lines(log)) == 3, 30, what="three hooks")
    got = _by_path(log)
    done = got["a.jpg"][0]
    assert done["stdin"]["event"] == "done" and done["env"]["BGSYNCD_EVENT"] == "done"
    assert done["cwd"] == folder["outbox"]
    assert done["env"]["BGSYNCD_INPUT"] == str(inbox / "a.jpg") == done["stdin"]["input"]
    assert done["env"]["BGSYNCD_OUTPUTS"] == str(Path(folder["outbox"]) / "a.png")
    assert done["env"]["BGSYNCD_EVENT_ID"] == done["stdin"]["event_id"]
    assert (
        done["env"]["BGSYNCD_SHA256"] == hashlib.sha256((inbox / "a.jpg").read_bytes()).hexdigest()
    )
    bad = got["bad.jpg"][0]
    assert bad["env"]["BGSYNCD_EVENT"] == "quarantined"
    assert bad["env"]["BGSYNCD_REASON"] == "unsupported_media"
    assert bad["cwd"] == folder["quarantine"]
    assert bad["env"]["BGSYNCD_INPUT"] == str(Path(folder["quarantine"]) / "bad.jpg")
    assert Path(bad["env"]["BGSYNCD_SIDECAR"]).is_file()
    assert got[hostile][0]["env"]["BGSYNCD_INPUT"] == str(inbox / hostile)
    assert not any(p.name == "PWNED" for p in tmp_path.rglob("*"))


def test_kill_9_while_a_hook_runs_then_a_restart_runs_it_again_and_the_others_once(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    argv, log = _hook(tmp_path)
    folder = make_folder(tmp_path, "products", on_done=argv)
    inbox = Path(folder["inbox"])
    config = write_config(tmp_path / "config.toml", base_url=emulator.url, folders=[folder])
    daemon = start_daemon(daemons, config)
    (inbox / "block.jpg").write_bytes(product_image(320, 240))
    wait_until(lambda: "block.jpg" in _by_path(log), 30, what="the blocking hook started")
    for name in ("b.jpg", "c.jpg"):
        (inbox / name).write_bytes(product_image(320, 240))
    # Delivered: the daemon logged it once the row was deleted.
    wait_until(
        lambda: daemon.saw("hook.done", path="b.jpg") and daemon.saw("hook.done", path="c.jpg"),
        30,
        what="two hooks delivered",
    )
    daemon.kill9()
    (tmp_path / "release").touch()  # the next try of block.jpg's hook goes through
    again = start_daemon(daemons, config)
    wait_until(lambda: len(_by_path(log)["block.jpg"]) == 2, 30, what="the hook run again")
    wait_until(lambda: again.saw("hook.done", path="block.jpg"), 30, what="hook.done")
    starts = _by_path(log)
    first, second = starts["block.jpg"]
    assert first["stdin"]["event_id"] == second["stdin"]["event_id"]
    assert len(starts["b.jpg"]) == 1 and len(starts["c.jpg"]) == 1
    assert again.saw("hooks.recovered", hooks=1)


def test_a_receiver_failing_three_times_gets_the_same_signed_event_each_time(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    receiver = Receiver(answer=lambda n: 503 if n < 3 else 204).start()
    try:
        secret = tmp_path / "secret"
        secret.write_text("webhook-secret-42\n")
        secret.chmod(0o600)
        folder = make_folder(tmp_path, "products", webhook=receiver.url)
        config = write_config(
            tmp_path / "config.toml", base_url=emulator.url, folders=[folder],
            hooks={"secret_file": str(secret)},
        )  # fmt: skip
        daemon = start_daemon(daemons, config)
        (Path(folder["inbox"]) / "a.jpg").write_bytes(product_image(320, 240))
        wait_until(lambda: daemon.saw("hook.done", path="a.jpg"), 30, what="hook.done")
        assert len(receiver.calls) == 4
        ids = {c.headers["X-Bgsyncd-Event-Id"] for c in receiver.calls}
        assert len(ids) == 1
        for call in receiver.calls:
            mac = hmac.new(b"webhook-secret-42", call.body, hashlib.sha256).hexdigest()
            assert call.headers["X-Bgsyncd-Signature"] == f"sha256={mac}"
            assert json.loads(call.body)["event_id"] in ids
        assert "webhook-secret-42" not in daemon.output()
    finally:
        receiver.stop()


def test_a_hook_that_hangs_is_killed_and_a_failing_hook_never_stops_the_files(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    hangs = make_folder(tmp_path, "hangs", on_done=["sleep", "100000"])
    fails = make_folder(tmp_path, "fails", on_done=["false"], on_quarantine=["false"])
    config = write_config(
        tmp_path / "config.toml", base_url=emulator.url, folders=[hangs, fails],
        hooks={"timeout_seconds": 1, "max_attempts": 2, "max_running": 1},
    )  # fmt: skip
    daemon = start_daemon(daemons, config)
    for i in range(3):
        (Path(hangs["inbox"]) / f"h{i}.jpg").write_bytes(product_image(200, 150))
        (Path(fails["inbox"]) / f"f{i}.jpg").write_bytes(product_image(200, 150))
    wait_until(lambda: len(outputs(hangs)) == 3 and len(outputs(fails)) == 3, 30, what="outputs")

    def failed(folder: str) -> int:
        return sum(
            1 for e in daemon.events() if e.get("event") == "hook.failed" and e["folder"] == folder
        )

    wait_until(lambda: failed("hangs") == 3 and failed("fails") == 3, 30, what="hook.failed")
    timeouts = [
        e for e in daemon.events() if e.get("event") == "hook.failed" and e["folder"] == "hangs"
    ]
    assert all(e["result"] == "timeout" for e in timeouts)
