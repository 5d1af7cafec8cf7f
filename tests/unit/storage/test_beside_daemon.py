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

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from bgsyncd.storage.sqlite.request_log import SqliteRequestLog
from bgsyncd.storage.sqlite.store import SqliteStore
from tests.support.journals import deleted_journals

# What a command does: open, read, write and close its own connection.
_COMMAND = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("INSERT INTO state (key, value) VALUES ('command', 'was here')")
conn.close()
"""


def test_a_second_connection_in_the_daemons_process_keeps_its_locks(tmp_path: Path) -> None:
    # The daemon opens the file twice (queue, then request log). Had the second
    # open touched the file by hand, the command closing afterwards would find
    # no other user, checkpoint and delete the WAL the daemon still writes to.
    database = tmp_path / "queue.sqlite3"
    queue = SqliteStore(database)
    log = SqliteRequestLog(database)
    try:
        queue.set_state("daemon", "1")
        subprocess.run([sys.executable, "-c", _COMMAND, str(database)], check=True, timeout=60)
        assert Path(f"{database}-wal").exists()
        assert deleted_journals(os.getpid(), database) == []
        queue.set_state("daemon", "2")
        log.record(1.0)
        assert queue.get_state("command") == "was here"  # what a command writes, seen at once
        other = sqlite3.connect(database)  # and what the daemon writes, seen by the others
        try:
            assert other.execute("SELECT value FROM state WHERE key = 'daemon'").fetchone() == (
                "2",
            )
            assert other.execute("SELECT count(*) FROM request_log").fetchone() == (1,)
        finally:
            other.close()
    finally:
        log.close()
        queue.close()
