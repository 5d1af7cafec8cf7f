"""libpq's reading of ``queue.dsn``, and the DSN a connection is opened with.

Whether a DSN carries a password is libpq's answer, not a pattern's: a URI may
spell the key ``pass%77ord``, and libpq decodes it. The configuration's rules
get :func:`carries_password` handed in by the backend choice. psycopg is imported inside
the functions, and only once a PostgreSQL configuration asks: the SQLite
backend never loads it.
"""

from __future__ import annotations

import os
from pathlib import Path

from bgsyncd.errors import ConfigError

CREDENTIAL_PASSWORD = "db_password"  # noqa: S105 (a file name)
INSTALL_HINT = (
    'queue.backend = "postgresql" needs psycopg 3 and psycopg_pool:'
    " install bgsyncd[postgresql] (pip install 'bgsyncd[postgresql]')"
)


class UnreadableDsn(ValueError):
    """libpq cannot parse the DSN (its own message is not kept: it may quote a password)."""


def carries_password(dsn: str) -> bool:
    """The DSN, as libpq reads it, sets a password (even an empty one): the
    configuration's ``DsnReader``.

    Raises :class:`~bgsyncd.errors.ConfigError` when the PostgreSQL extra is
    missing and :class:`UnreadableDsn` when libpq cannot parse ``dsn``.
    """
    require_psycopg()
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except ProgrammingError:
        raise UnreadableDsn("libpq cannot parse it") from None
    return "password" in params


def require_psycopg() -> None:
    """psycopg 3 and psycopg_pool can be imported, else one clear line (exit 2)."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None


def connection_dsn(dsn: str, environ: dict[str, str] | None = None) -> str:
    """``dsn`` with the credential ``db_password`` as its password, when there is one.

    PGPASSWORD, PGPASSFILE and ``~/.pgpass`` are libpq's own: left to it.
    """
    env = os.environ if environ is None else environ
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory or env.get("PGPASSWORD"):
        return dsn
    path = Path(directory) / CREDENTIAL_PASSWORD
    try:
        password = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return dsn
    except OSError as exc:
        message = f"cannot read the credential {CREDENTIAL_PASSWORD}: {exc.strerror}"
        raise ConfigError(message) from None
    from psycopg.conninfo import make_conninfo  # the extra is checked by the caller

    return make_conninfo(dsn, password=password)
