"""The commands beside a live daemon on one SQLite database (SPEC §4, issue 15 item 2).

`bgsyncd credits`, `retry` and `status` as real subprocesses beside a real
`bgsyncd run` on the emulator: none may delete the daemon's WAL or shared
memory file under it (a process that opens and closes a second descriptor of
the database file drops its POSIX locks, and the next command to close then
believes it is the last user). Once that happened, status froze, a retried
file was never taken, the request logs split (429s) and the database lost
index rows.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from bgsyncd.emulator import Emulator
from tests.support.daemons import (
    TEST_KEY,
    DaemonProcess,
    make_folder,
    run_cli,
    start_daemon,
    write_config,
)
from tests.support.helpers import product_image, wait_until
from tests.support.journals import deleted_journals, journals_open

# Tight enough that a command and the daemon keeping separate request logs
# would push the account over its limit.
LIMIT = 6
WINDOW = 3.0


def _credits(config: Path) -> None:
    result = run_cli("credits", "--config", str(config))
    assert result.returncode == 0, result.stderr


def _status(config: Path) -> dict[str, int]:
    result = run_cli("status", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    loaded: dict[str, int] = json.loads(result.stdout)["jobs"]
    return loaded


def test_credits_retry_and_status_beside_a_daemon_leave_its_database_alone(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    with Emulator(
        keys=[TEST_KEY], credits=10_000, rate_limit=LIMIT, rate_window=WINDOW, seed=1
    ) as emu:
        folder = make_folder(tmp_path, "f")
        config = write_config(
            tmp_path / "c.toml",
            base_url=emu.url,
            folders=[folder],
            api={"rate_limit": LIMIT, "rate_window_seconds": WINDOW},
        )
        database = tmp_path / "state" / "queue.sqlite3"
        inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
        quarantine = Path(folder["quarantine"])
        # Refused by the API as too large (500s in a row would be an outage: a pause).
        emu.configure(max_bytes=100)
        d = start_daemon(daemons, config)
        pid = d.proc.pid
        (inbox / "p.jpg").write_bytes(product_image())
        wait_until((quarantine / "p.jpg").exists, 60, what="p.jpg quarantined")
        emu.configure(max_bytes=10 * 1024 * 1024)
        assert any(n.endswith("-wal") for n in journals_open(pid, database))

        for _ in range(3):
            _credits(config)
            assert _status(config)["quarantined"] == 1
            assert deleted_journals(pid, database) == []

        retried = run_cli("retry", "--config", str(config), str(quarantine / "p.jpg"))
        assert retried.returncode == 0, retried.stderr
        assert deleted_journals(pid, database) == []
        # The daemon sees what retry wrote: it takes the file and finishes it.
        wait_until((outbox / "p.png").exists, 60, what="the retried file's output")
        wait_until(lambda: _status(config)["done"] == 1, 30, what="status shows it done")

        # A load the daemon must pace beside the commands through one request log.
        for i in range(8):
            (inbox / f"n{i}.jpg").write_bytes(product_image(64 + i, 48))
        for _ in range(3):
            _credits(config)
            assert deleted_journals(pid, database) == []
        wait_until(lambda: _status(config)["done"] == 9, 90, what="status shows all nine done")
        assert deleted_journals(pid, database) == []
        assert d.stop() == 0, d.output()
        statuses = [r.status for r in emu.requests()]
    assert statuses.count(429) == 0, statuses
    conn = sqlite3.connect(database)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*) FROM jobs WHERE state = 'done'").fetchone()[0] == 9
    finally:
        conn.close()
