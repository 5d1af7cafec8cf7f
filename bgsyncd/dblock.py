"""The database lock: one daemon (``run`` or ``once``) per queue database."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from bgsyncd.errors import BgsyncdError, describe_os_error


def lock_database(database: Path) -> int:
    """Hold an exclusive lock beside the database for the life of the process.

    Two daemons (or `once` beside the service) on one queue would take each
    other's jobs for crashed ones and send them again, and each would count
    credits on its own.
    """
    path = lock_path(database)
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BgsyncdError(
            f"cannot open the queue database's lock {path}: {describe_os_error(exc)}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise BgsyncdError(
            f"another bgsyncd is already running on {database} (it holds {path})"
        ) from None
    return fd


def lock_path(database: Path) -> Path:
    """The lock file beside ``database``."""
    return database.with_name(database.name + ".lock")
