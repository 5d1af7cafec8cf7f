"""A host frozen past its lease changes nothing another host took over (SPEC §8).

Real ``bgsyncd run`` hosts on a real PostgreSQL, the emulator over loopback:
host a is stopped (SIGSTOP) while its requests are in flight, host b takes
its jobs over and finishes them, then a is let go (SIGCONT). Its requests
have timed out by then: every change it would make (a retry, a release...)
is refused, each output stays written once and every job stays done.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemons import TEST_KEY, DaemonProcess, make_folder, outputs, start_daemon
from tests.support.fleet import CountingEmulator, db_rows, drop, events, host_config
from tests.support.helpers import wait_until


def stays(condition: Any, seconds: float) -> bool:
    """``condition()`` holds throughout ``seconds`` (for what must NOT happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(0.05)
    return bool(condition())


def written(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file under ``folder``: its inode and mtime (a second write changes both)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


@pytest.mark.parametrize("after_success", ["keep", "move", "delete"])
def test_a_host_frozen_past_its_lease_changes_nothing_another_host_finished(
    tmp_path: Path, pg_dsn: str, daemons: list[DaemonProcess], after_success: str
) -> None:
    lease, held, files, timeout = 3.0, 2, 4, 4.0
    extra: dict[str, Any] = {"after_success": after_success}
    if after_success == "move":
        extra["done"] = str(tmp_path / "shared" / "done")
    folder = make_folder(tmp_path, "shared", shared=True, polling=True, **extra)
    inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
    # a's requests hang in the emulator (they time out while a is stopped); b's are quick.
    emu = CountingEmulator(keys=[TEST_KEY], credits=1000, rate_limit=1000)
    with emu:
        api = {"max_in_flight": held, "timeout_seconds": timeout}
        a = start_daemon(
            daemons, host_config(tmp_path, "a", emu, pg_dsn, [folder], api=api, lease=lease)
        )
        wait_until(lambda: a.saw("credits.checked"), 20, what="a's credit check at start")
        emu.configure(latency=60.0)
        for n in range(files):
            drop(inbox, f"p{n}.jpg", 30 + n)

        def held_by_a() -> int:
            sql = "SELECT COUNT(*) FROM jobs WHERE state = 'in_flight' AND owner = 'a'"
            return int(db_rows(pg_dsn, sql)[0][0])

        wait_until(
            lambda: held_by_a() == held and emu.admitted == held,
            30,
            what="host a's two requests in flight at the emulator",
        )
        a.signal(signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            emu.configure(latency=0.3)
            b = start_daemon(
                daemons, host_config(tmp_path, "b", emu, pg_dsn, [folder], lease=lease)
            )

            def all_done() -> bool:
                rows = db_rows(pg_dsn, "SELECT state, owner FROM jobs")
                return len(rows) == files and all(r == ("done", None) for r in rows)

            names = sorted(f"p{n}.png" for n in range(files))
            wait_until(
                lambda: outputs(folder) == names and all_done(), 60, what="b finished every job"
            )
            assert b.saw("fleet.takeover")
            sent_by_b = emu.admitted - held
            before = written(outbox)
            done_before = written(Path(extra["done"])) if after_success == "move" else {}
            # a's requests have passed their deadline: they time out when a wakes.
            wait_until(lambda: time.monotonic() > stopped + timeout + 1.0, 30, what="a's deadline")
        finally:
            a.signal(signal.SIGCONT)
        wait_until(
            lambda: len(events(a, "job.lease_lost")) == held,
            30,
            what="host a dropping both of its results (job.lease_lost)",
        )

        def unchanged() -> bool:
            return written(outbox) == before and all_done()

        assert stays(unchanged, 3.0), (written(outbox), before)
        assert emu.admitted == held + sent_by_b  # nothing sent again after a woke
    assert a.proc.poll() is None and b.proc.poll() is None
    assert not events(a, "job.done")  # a finished nothing and claimed nothing again
    done = [e["path"] for e in events(b, "job.done")]
    assert sorted(done) == sorted(f"p{n}.jpg" for n in range(files))
    assert not events(a, "job.error") and not events(b, "job.error")
    if after_success == "move":
        assert written(Path(extra["done"])) == done_before
        assert sorted(done_before) == sorted(f"p{n}.jpg" for n in range(files))  # each once
        assert not list(inbox.iterdir())
    elif after_success == "delete":
        assert not [p for p in os.listdir(inbox) if not p.startswith(".")]
    else:
        assert sorted(os.listdir(inbox)) == sorted(f"p{n}.jpg" for n in range(files))
