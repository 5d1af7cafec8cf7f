"""The database lock: one daemon (``run`` or ``once``) per queue database.

And whether the database is still the one the daemon opened: one deleted or
replaced under it (or its lock) would let another daemon start beside it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from bgsyncd.errors import BgsyncdError, describe_os_error
from bgsyncd.logs import get_logger
from bgsyncd.storage.contract import StoreHealth
from bgsyncd.storage.sqlite.faults import identity_of_fd, lost_reason

log = get_logger("bgsyncd.daemon")  # the main loop's events, named as they always were


class DatabaseLock:
    """The lock on a SQLite queue database, held for the life of the process."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.fd = lock_database(database)
        self.identity = identity_of_fd(self.fd)


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


def database_lost(queue: StoreHealth, lock: DatabaseLock | None) -> str | None:
    """Why to exit when the database or its lock was deleted or replaced, else None.

    Another daemon could then open a fresh queue and take the lock beside us:
    exit 1, and systemd restarts this one on whatever is there now. ``lock``
    is None on PostgreSQL, whose hosts are told apart by the host lock
    (``storage.postgres.hostlock``).
    """
    if lock is None:
        what = queue.lost()
        if what is None:
            return None
        log.error("queue.lost", database="postgresql", what=what)
        return f"the PostgreSQL queue's schema was {what} while bgsyncd ran; exiting"
    database = lock.database
    lock_file = lock_path(database)
    checks = ((database, queue.lost()), (lock_file, lost_reason(lock_file, lock.identity)))
    for path, what in checks:
        if what is not None:
            log.error("queue.lost", database=str(database), file=str(path), what=what)
            return (
                f"the queue database file {path} was {what} while bgsyncd ran;"
                " exiting so that a restart opens the database that is there now"
            )
    return None
