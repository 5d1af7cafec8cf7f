"""libpq's own reading of ``queue.dsn``, for the configuration's rules.

Whether a DSN carries a password is libpq's answer, not a pattern's: a URI may
spell the key ``pass%77ord``, and libpq decodes it. ``config_rules`` imports
this module only when ``backend = "postgresql"`` (the SQLite backend never
loads psycopg).
"""

from __future__ import annotations

from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict


class UnreadableDsn(ValueError):
    """libpq cannot parse the DSN (its own message is not kept: it may quote a password)."""


def carries_password(dsn: str) -> bool:
    """The DSN, as libpq reads it, sets a password (even an empty one).

    Raises :class:`UnreadableDsn` when libpq cannot parse it at all.
    """
    try:
        params = conninfo_to_dict(dsn)
    except ProgrammingError:
        raise UnreadableDsn("libpq cannot parse it") from None
    return "password" in params
