"""What a process holds open of an SQLite database's journals (WAL and shared memory)."""

from __future__ import annotations

import os
from pathlib import Path

JOURNALS = ("-wal", "-shm")


def journals_open(pid: int, database: Path) -> list[str]:
    """What ``pid`` holds open of the database's WAL and shared memory, as /proc names it."""
    names = []
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue  # closed while we looked
        if target.startswith(str(database)) and any(j in target for j in JOURNALS):
            names.append(target)
    return names


def deleted_journals(pid: int, database: Path) -> list[str]:
    """The journals ``pid`` still holds open after they were deleted."""
    return [name for name in journals_open(pid, database) if name.endswith("(deleted)")]
