"""The storage a daemon runs on, built for its ``[queue] backend`` (SPEC §2, §8).

One place decides what the queue, the request log, the credit guard, the
pause store, the result cache and (in a fleet) the host membership are:

- ``sqlite``: one host alone. The queue file, its request log, the local
  credit guard and pauses, the cache on disk. Nothing here imports psycopg.
- ``postgresql``: every daemon on one database is one fleet. The PostgreSQL
  engine and the fleet are imported here, lazily (``storage.postgres.dsn``
  alone at the top: it loads psycopg only when called); psycopg missing is
  one clear line (:class:`~bgsyncd.errors.ConfigError`, exit 2).

It also hands the configuration libpq's reading of ``queue.dsn``
(:func:`load_settings`), and takes the SQLite database's lock.

The database password never comes from the configuration (a DSN carrying one
is refused at load): libpq finds it in PGPASSFILE, ``~/.pgpass`` or
PGPASSWORD, or it is read from the systemd credential ``db_password`` and
handed to libpq as a connection parameter, never logged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bgsyncd.config import loading
from bgsyncd.config.schema import Settings, host_id
from bgsyncd.dispatch.credits import CreditGuard
from bgsyncd.dispatch.pauses import Pauses
from bgsyncd.storage.cache import ResultCache
from bgsyncd.storage.contract import RequestLog, ResultStore, SharedRequestLog, Store
from bgsyncd.storage.postgres.dsn import (
    CREDENTIAL_PASSWORD,
    carries_password,
    connection_dsn,
    require_psycopg,
)
from bgsyncd.storage.sqlite.lock import DatabaseLock, database_lost
from bgsyncd.storage.sqlite.request_log import SqliteRequestLog
from bgsyncd.storage.sqlite.store import SqliteStore

if TYPE_CHECKING:
    from bgsyncd.fleet.membership import Membership
    from bgsyncd.storage.postgres.guard import Outage


@dataclass
class Backend:
    """What the daemon stores things in; ``fleet`` and ``outage`` are None on SQLite.

    ``outage.on_down`` is told, once per outage and at once, when the database
    stops answering (the daemon pauses ``queue_unavailable``, idle or not).
    """

    kind: str
    queue: Store
    request_log: RequestLog | SharedRequestLog
    credits: CreditGuard
    pauses: Pauses
    cache: ResultStore
    claim_lease: float
    fleet: Membership | None = None
    outage: Outage | None = None
    # SQLite: the lock beside the database, held for the life of the process (a
    # fleet's hosts are told apart by the host lock instead).
    lock: DatabaseLock | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def lost(self) -> str | None:
        """Why to exit: the database (or its lock) deleted or replaced while it ran; else None."""
        return database_lost(self.queue, self.lock)

    def close(self) -> None:
        """Close what was opened, last first."""
        for close in reversed(self._closers):
            close()


def load_settings(
    path: str | Path | None = None, *, create_folders: bool = True, check_folders: bool = True
) -> Settings:
    """The configuration (:func:`bgsyncd.config.loading.load_settings`), ``queue.dsn``
    read by libpq through the PostgreSQL engine (psycopg loaded only when it is named)."""
    return loading.load_settings(
        path, read_dsn=carries_password, create_folders=create_folders, check_folders=check_folders
    )


def open_backend(settings: Settings, api_key: str) -> Backend:
    """The storage for ``settings`` (the queue opened and migrated; a fleet joined)."""
    if settings.queue.backend == "postgresql":
        return _open_postgresql(settings, api_key)
    # The database in use until exit, one daemon on it: taken before it is opened.
    lock = DatabaseLock(settings.queue.database)
    queue = SqliteStore(settings.queue.database)
    request_log = SqliteRequestLog(settings.queue.database)
    return Backend(
        kind="sqlite",
        queue=queue,
        request_log=request_log,
        credits=CreditGuard(settings.credits.floor, settings.credits.check_interval_seconds),
        pauses=Pauses(),
        cache=ResultCache(
            settings.state_dir / "cache", settings.queue.cache_max_megabytes * 1024 * 1024
        ),
        # Jobs of a crashed run are given back at the next start, not by lease.
        claim_lease=settings.api.timeout_seconds + 60.0,
        lock=lock,
        _closers=[queue.close, request_log.close],
    )


def open_fleet_queue(settings: Settings) -> Store:
    """The fleet's queue on PostgreSQL for a command beside the daemons (``retry``)."""
    require_psycopg()
    from bgsyncd.storage.postgres.store import PostgresStore

    return PostgresStore(connection_dsn(settings.queue.dsn), host_id(settings), pool_size=1)


def open_request_log(
    settings: Settings, api_key: str
) -> tuple[RequestLog | SharedRequestLog, Callable[[], None]]:
    """The request log a start is recorded in (``credits``), and how to close it.

    On PostgreSQL it is the fleet's: a check from the command line counts
    against the one limit like every host's requests.
    """
    if settings.queue.backend != "postgresql":
        log = SqliteRequestLog(settings.queue.database)
        return log, log.close
    require_psycopg()
    from bgsyncd.storage.postgres.request_log import PostgresRequestLog, account_id
    from bgsyncd.storage.postgres.store import PostgresStore

    pg = PostgresStore(connection_dsn(settings.queue.dsn), host_id(settings), pool_size=1)
    return PostgresRequestLog(pg, account_id(api_key)), pg.close


def database_secrets(settings: Settings, environ: dict[str, str] | None = None) -> list[str]:
    """The database password this daemon may hold (PGPASSWORD, the credential), for redaction."""
    if settings.queue.backend != "postgresql":
        return []
    env = os.environ if environ is None else environ
    found = [env.get("PGPASSWORD", "")]
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        with suppress(OSError):  # unreadable: connection_dsn says so, at the right moment
            found.append((Path(directory) / CREDENTIAL_PASSWORD).read_text("utf-8").strip())
    return [secret for secret in found if secret]


def _open_postgresql(settings: Settings, api_key: str) -> Backend:
    require_psycopg()
    from bgsyncd.fleet.credits import FleetCreditGuard
    from bgsyncd.fleet.membership import Membership
    from bgsyncd.fleet.pauses import FleetPauseStore
    from bgsyncd.storage.postgres.cache import PostgresResultCache
    from bgsyncd.storage.postgres.request_log import PostgresRequestLog, account_id
    from bgsyncd.storage.postgres.store import PostgresStore

    q = settings.queue
    dsn = connection_dsn(q.dsn)
    # Pool: the dispatcher, every worker, ingest, the heartbeat and the main loop.
    pool_size = settings.api.max_in_flight + 4
    pg = PostgresStore(dsn, host_id(settings), pool_size=pool_size)
    closers: list[Callable[[], None]] = [pg.close]
    try:
        account = account_id(api_key)
        fleet = Membership(pg, dsn, q.lease_seconds)
        fleet.join(settings.folders)
        closers.append(fleet.stop)
        credits = FleetCreditGuard(
            pg,
            account,
            settings.credits.floor,
            settings.credits.check_interval_seconds,
            instance=fleet.instance,
            lease_seconds=q.lease_seconds,
        )
        cache = PostgresResultCache(
            pg,
            q.cache_max_megabytes * 1024 * 1024,
            instance=fleet.instance,
            lease_seconds=q.lease_seconds,
            # A request for content another host fetches is waited for this long at most.
            max_wait_seconds=settings.api.timeout_seconds + q.lease_seconds,
        )
    except BaseException:
        for close in reversed(closers):
            close()
        raise
    return Backend(
        kind="postgresql",
        queue=pg,
        request_log=PostgresRequestLog(pg, account),
        credits=credits,
        pauses=Pauses(FleetPauseStore(pg, account)),
        cache=cache,
        claim_lease=q.lease_seconds,
        fleet=fleet,
        outage=pg.outage,
        _closers=closers,
    )
