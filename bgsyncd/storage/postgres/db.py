"""The PostgreSQL connection pool: migrations, transactions, errors mapped, secrets kept.

Only the modules of this folder (``storage/postgres/``) import psycopg (the
``postgresql`` extra); the SQLite backend never loads them. Every time that
hosts compare is the database server's clock (``clock_timestamp()``): hosts'
clocks disagree. A time crossing the contract (``retry_later``'s ``at``,
``next_ready_at``'s answer) is a host's clock, translated by the offset
between the two measured in the same statement.

Database failures surface as the SQLite backend's do: a server that cannot be
reached, has shut down, hangs or is out of resources, and a database that
lost our rights or a table (SPEC §8: the database failing), is
:class:`~bgsyncd.errors.QueueUnavailable` (fail closed; the pool makes new
connections when it is back), anything else :class:`~bgsyncd.storage.contract.QueueError`.
No call waits on the server longer than ``guard.CALL_SECONDS``, and while
it does not answer the calls fail at once (``guard``).
The DSN's password never reaches a message: libpq echoes a malformed DSN in
its errors, so every message is scrubbed of it.
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeAlias

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from bgsyncd.errors import BgsyncdError, QueueUnavailable
from bgsyncd.storage.contract import QueueError
from bgsyncd.storage.postgres.guard import (
    CALL_SECONDS,
    CHECK_SECONDS,
    LOOK_CONNECT_SECONDS,
    WATCHDOG,
    Outage,
    after,
    bounded_dsn,
    not_answering,
)

# Migration n (1-based) brings a database from version n-1 to n.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            id BIGSERIAL PRIMARY KEY,
            folder TEXT NOT NULL, relpath TEXT NOT NULL,
            size BIGINT NOT NULL, mtime_ns BIGINT NOT NULL, inode BIGINT NOT NULL,
            sha256 TEXT,
            state TEXT NOT NULL CHECK (state IN
                ('pending', 'in_flight', 'retry_wait', 'done', 'quarantined')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at DOUBLE PRECISION, lease_until DOUBLE PRECISION, owner TEXT,
            resend BOOLEAN NOT NULL DEFAULT FALSE,
            last_error TEXT, http_status INTEGER, reason TEXT,
            first_seen DOUBLE PRECISION NOT NULL, queued_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            outputs TEXT NOT NULL DEFAULT '[]',
            UNIQUE (folder, relpath))""",
        "CREATE INDEX jobs_by_state_folder ON jobs (state, folder, queued_at, id)",
        "CREATE INDEX jobs_by_state_retry ON jobs (state, next_attempt_at)",
        "CREATE INDEX jobs_by_owner ON jobs (owner) WHERE state = 'in_flight'",
        """CREATE TABLE output_claims (
            folder TEXT NOT NULL, outpath TEXT NOT NULL,
            job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            PRIMARY KEY (folder, outpath))""",
        "CREATE INDEX output_claims_by_job ON output_claims (job_id)",
        """CREATE TABLE request_log (
            account TEXT NOT NULL, t DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX request_log_by_account_t ON request_log (account, t)",
        "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE hosts (
            id TEXT PRIMARY KEY, folders TEXT NOT NULL DEFAULT '[]',
            last_seen DOUBLE PRECISION NOT NULL, in_flight INTEGER NOT NULL DEFAULT 0,
            instance TEXT NOT NULL DEFAULT '')""",
        """CREATE TABLE results (
            key TEXT PRIMARY KEY, data BYTEA NOT NULL, size BIGINT NOT NULL,
            used_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX results_by_use ON results (used_at)",
    ),
    # 2: the fleet's credit count and pauses (IF NOT EXISTS: a database where an
    # earlier build created them beside version 1 migrates too).
    (
        # One row per account: the balance the last credit check of any host saw,
        # less what every host spent since.
        """CREATE TABLE IF NOT EXISTS credit_state (
            account TEXT PRIMARY KEY, available INTEGER, expires_at DOUBLE PRECISION,
            checked_at DOUBLE PRECISION)""",
        # One row per image request in flight, tied to its host's life (instance).
        """CREATE TABLE IF NOT EXISTS credit_reservations (
            id BIGSERIAL PRIMARY KEY, account TEXT NOT NULL, host TEXT NOT NULL,
            instance TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS credit_reservations_by_account"
        " ON credit_reservations (account, host)",
        # The pause reasons that hold for the whole fleet, per account.
        """CREATE TABLE IF NOT EXISTS fleet_pauses (
            account TEXT NOT NULL, reason TEXT NOT NULL, raised_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (account, reason))""",
        # The settings each host gives a shared folder: hosts must agree.
        """CREATE TABLE IF NOT EXISTS shared_folders (
            name TEXT PRIMARY KEY, settings TEXT NOT NULL, host TEXT NOT NULL)""",
    ),
    # 3: paths compared bytewise (COLLATE "C"), for "is anything inside the
    # folder `a.png/`" when an output name is claimed (pg_claims).
    (
        'CREATE INDEX IF NOT EXISTS jobs_by_path_bytes ON jobs (folder, relpath COLLATE "C")',
        "CREATE INDEX IF NOT EXISTS output_claims_by_path_bytes"
        ' ON output_claims (folder, outpath COLLATE "C")',
    ),
    # 4: fencing and the fleet-wide content claim.
    (
        # The token of the claim that holds a job in flight: every change to the
        # job is conditional on it (storage.JobStore's fencing).
        "ALTER TABLE jobs ADD COLUMN IF NOT EXISTS claim_token TEXT",
        # A content hash whose request is in flight on a host (which life of it:
        # instance): the others wait for its answer (cache.PostgresResultCache).
        """CREATE TABLE IF NOT EXISTS content_claims (
            sha256 TEXT PRIMARY KEY, host TEXT NOT NULL, instance TEXT NOT NULL,
            claimed_at DOUBLE PRECISION NOT NULL)""",
    ),
    # 5: output names claimed per tree (SPEC §9 renditions): '' is the folder's own
    # outbox (every older claim), a rendition's resolved outbox path its tree.
    (
        "ALTER TABLE output_claims ADD COLUMN IF NOT EXISTS tree TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE output_claims DROP CONSTRAINT IF EXISTS output_claims_pkey",
        "ALTER TABLE output_claims ADD PRIMARY KEY (folder, tree, outpath)",
        "DROP INDEX IF EXISTS output_claims_by_path_bytes",
        "CREATE INDEX output_claims_by_path_bytes"
        ' ON output_claims (folder, tree, outpath COLLATE "C")',
    ),
    # 6: hooks waiting to be delivered (SPEC §10), written with their job's
    # transition; any host delivers them. ``next_at`` (the server's clock) is
    # when one is due: a claim moves it to the end of its lease, so a host
    # that dies leaves it due again; ``owner`` gives a restarted host its own back.
    (
        """CREATE TABLE IF NOT EXISTS hooks (
            id BIGSERIAL PRIMARY KEY,
            event_id TEXT NOT NULL, folder TEXT NOT NULL, kind TEXT NOT NULL,
            payload TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at DOUBLE PRECISION NOT NULL, claim_token TEXT, owner TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            UNIQUE (event_id, kind))""",
        "CREATE INDEX IF NOT EXISTS hooks_by_next ON hooks (next_at)",
    ),
    # 7: the status page's recent jobs (newest change first) without a scan of the table.
    ("CREATE INDEX IF NOT EXISTS jobs_by_updated ON jobs (updated_at)",),
)
SCHEMA_VERSION = len(MIGRATIONS)
# pg_advisory_xact_lock keys: fixed, and far from hashtext() values of account hashes.
MIGRATION_LOCK = 0x62677379_6E630001  # "bgsync" + 1
# pg_advisory_lock (session) class for a host_id: held for a daemon's whole life.
HOST_LOCK_CLASS = 0x62677379

NOW = "extract(epoch from clock_timestamp())"

# A connection of the pool, as the fleet's SQL (which runs on the engine's
# transactions) names it: psycopg itself stays inside the engine.
Connection: TypeAlias = "psycopg.Connection[Any]"


def server_now(conn: Connection) -> float:
    """The database server's clock (``NOW``), which leases and the shared log use."""
    row = conn.execute(f"SELECT {NOW}").fetchone()
    assert row is not None
    return float(row[0])


# SQLSTATE classes that mean the server, not the statement: connection exception,
# insufficient resources (disk full, too many connections), operator
# intervention (shutdown, cannot connect now), system error (I/O).
_UNAVAILABLE_CLASSES = frozenset({"08", "53", "57", "58"})
READ_ONLY = "-c default_transaction_read_only=on"
# SQLSTATEs of the database failing under us rather than a statement's fault:
# our rights revoked, a table or the schema gone (SPEC §8: a pause while it lasts).
_LOST_STATES = frozenset({"42501", "42P01", "3F000"})


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Create or upgrade the schema under an advisory lock; return the version found.

    A schema newer than this bgsyncd knows is refused: its rows may mean
    things this code would get wrong.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bgsyncd_schema"
            " (version INTEGER NOT NULL, database_id TEXT NOT NULL)"
        )
        row = conn.execute("SELECT version FROM bgsyncd_schema").fetchone()
        version = 0 if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise QueueError(
                f"the PostgreSQL queue has schema version {version}, but this bgsyncd knows"
                f" only up to {SCHEMA_VERSION}: upgrade bgsyncd on this host"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[number - 1]:
                conn.execute(statement)
        if row is None:
            conn.execute(
                "INSERT INTO bgsyncd_schema (version, database_id) VALUES (%s, %s)",
                (SCHEMA_VERSION, uuid.uuid4().hex),
            )
        else:
            conn.execute("UPDATE bgsyncd_schema SET version = %s", (SCHEMA_VERSION,))
    return version


def check_current(conn: psycopg.Connection[Any]) -> int:
    """The schema version, which must be this bgsyncd's (a read-only view migrates nothing)."""
    with conn.transaction():
        exists = conn.execute("SELECT to_regclass('bgsyncd_schema') IS NOT NULL").fetchone()
        if exists is None or not exists[0]:
            raise QueueError(
                "the PostgreSQL queue is not initialised yet: no bgsyncd has started on it"
            )
        row = conn.execute("SELECT version FROM bgsyncd_schema").fetchone()
    version = 0 if row is None else int(row[0])
    if version != SCHEMA_VERSION:
        raise QueueError(
            f"the PostgreSQL queue has schema version {version}, but this bgsyncd reads"
            f" version {SCHEMA_VERSION}: upgrade bgsyncd on this host"
        )
    return version


def dsn_secrets(dsn: str) -> list[str]:
    """The password(s) written in ``dsn``, as they may be echoed back, longest first."""
    found: set[str] = set()
    try:
        password = conninfo_to_dict(dsn).get("password")
        if password:
            found.add(str(password))
    except psycopg.Error:
        pass  # malformed: the patterns below still find what libpq would echo
    for match in re.finditer(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn):
        found.add(match.group(1))
        found.add(match.group(1).strip("'"))
    for match in re.finditer(r"://[^:/@\s]*:([^@\s]*)@", dsn):
        found.add(match.group(1))
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` on one line with every secret replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return " ".join(text.split())


def is_unavailable(exc: psycopg.Error) -> bool:
    """The server is unreachable, shut down or out of resources (not the statement's fault)."""
    if isinstance(exc, psycopg.InterfaceError):  # the connection is closed
        return True
    if exc.sqlstate in _LOST_STATES:
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state[:2] in _UNAVAILABLE_CLASSES  # None: libpq, no server answer


def failure(exc: psycopg.Error, secrets: Sequence[str]) -> BgsyncdError:
    """The project's error for a psycopg failure, its text free of the DSN's password."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = scrub(primary or str(exc) or type(exc).__name__, secrets)
    if is_unavailable(exc):
        return QueueUnavailable(f"PostgreSQL queue unavailable: {text}")
    return QueueError(f"PostgreSQL queue: {text}")


class PgBase:
    """A pool of connections to one database, shared by the parts of the PostgreSQL queue."""

    host_id: str
    created: bool
    _pool: ConnectionPool[psycopg.Connection[Any]]
    _secrets: list[str]
    _clock: Callable[[], float]
    _last_folder: str | None
    _database_id: str | None

    def _open(
        self,
        dsn: str,
        host_id: str,
        *,
        pool_size: int,
        timeout: float,
        clock: Callable[[], float] = time.time,
        readonly: bool = False,
    ) -> None:
        self.host_id = host_id
        self._secrets = dsn_secrets(dsn)
        self._clock = clock
        self._last_folder = None  # this host's round-robin position
        self._outage = Outage()
        self._local = threading.local()  # the deadline of this thread's call, for the check
        # A first connection of our own, outside the pool: a wrong DSN, role or
        # database is named at once (the pool would only say it timed out).
        try:
            # Readonly: every transaction of the session is; a write is refused.
            dsn = bounded_dsn(dsn, options=READ_ONLY if readonly else "")
            # Autocommit: each statement answered within the bound, no commit after it.
            with (
                psycopg.connect(dsn, autocommit=True) as conn,
                WATCHDOG.bound(conn, after(3 * CALL_SECONDS)),
            ):
                found = check_current(conn) if readonly else migrate(conn)
                row = conn.execute("SELECT database_id FROM bgsyncd_schema").fetchone()
        except psycopg.Error as exc:
            raise failure(exc, self._secrets) from None
        self._dsn = dsn
        self._pool_size = pool_size
        self._timeout = timeout
        self._swap_lock = threading.Lock()
        self._pool = self._new_pool()
        # New: its inputs' outputs may already exist and are adopted (SPEC §4).
        self.created = found == 0
        self._database_id = None if row is None else str(row[0])

    def _new_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        try:
            pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
                self._dsn, min_size=1, max_size=self._pool_size, open=False,
                timeout=self._timeout, check=self._check, name="bgsyncd",
            )  # fmt: skip
            pool.open(wait=False)
        except psycopg.Error as exc:
            raise failure(exc, self._secrets) from None
        return pool

    def _check(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's check of a connection it hands out, within the call's deadline."""
        deadline = min(getattr(self._local, "deadline", math.inf), after(CHECK_SECONDS))
        with WATCHDOG.bound(conn, deadline):
            ConnectionPool.check_connection(conn)

    def _look(self, deadline: float) -> None:
        """While the server was not answering: a connection of our own says whether it
        answers now (raises if not); if so the pool is renewed, since after a long
        outage its reconnection backoff runs tens of seconds."""
        psycopg.connect(self._dsn, connect_timeout=LOOK_CONNECT_SECONDS).close()
        self._renew_pool()

    def _renew_pool(self) -> None:
        """Replace the pool with a fresh one that connects at once.

        Calls waiting on the old one fail as unavailable and are tried again
        by their callers.
        """
        with self._swap_lock:
            old, self._pool = self._pool, self._new_pool()
        old.close(timeout=0)

    def close(self) -> None:
        """Close every connection of the pool."""
        self._pool.close()

    @property
    def outage(self) -> Outage:
        """Whether the server answers (the daemon is told when it stops: ``on_down``)."""
        return self._outage

    @contextmanager
    def connection(
        self, seconds: float = CALL_SECONDS, *, look: bool = False
    ) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on a pooled connection, every wait within ``seconds``.

        psycopg's errors pass as they are (see :meth:`transaction`). While the
        server does not answer, :class:`QueueUnavailable` at once, unless this
        call is the one to look again (``look``: always, the resume probe).
        """
        deadline = after(seconds)
        looking = self._outage.admit(force=look)
        down: str | None = None
        try:
            if looking:
                self._look(deadline)
            self._local.deadline = deadline
            wait = min(self._timeout, deadline - time.monotonic())
            with self._pool.connection(timeout=max(0.001, wait)) as conn:
                self._local.deadline = math.inf
                with WATCHDOG.bound(conn, deadline), conn.transaction():
                    yield conn
        except psycopg.Error as exc:
            if not_answering(exc):
                down = str(failure(exc, self._secrets))
            raise
        finally:
            self._local.deadline = math.inf
            self._outage.ended(looking, down)

    @contextmanager
    def transaction(self, *, look: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on a pooled connection; database errors become ours.

        Public for the fleet's other tables (``fleet``), which share the pool.
        """
        try:
            with self.connection(look=look) as conn:
                yield conn
        except psycopg.Error as exc:
            raise failure(exc, self._secrets) from None
        except UnicodeError as exc:  # a name that is not valid UTF-8 cannot be stored
            raise QueueError(f"PostgreSQL queue: {exc}") from None

    def now(self) -> float:
        """The database server's clock, in Unix seconds."""
        with self.transaction() as conn:
            return server_now(conn)


@contextmanager
def fleet_transaction(base: PgBase) -> Iterator[Connection]:
    """One transaction of ``base``'s pool for the fleet's credit and pause tables
    (migration 2); a database that cannot answer is QueueUnavailable.

    The dispatcher pauses ``queue_unavailable`` on it and no request starts
    (fail closed) until the daemon sees the database answer again.
    """
    try:
        with base.transaction() as conn:
            yield conn
    except QueueError as exc:
        raise QueueUnavailable(str(exc)) from None
