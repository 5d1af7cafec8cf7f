"""Several ``bgsyncd run`` processes, one emulator key, one real PostgreSQL (SPEC §8).

Each host is a real daemon subprocess with its own ``host_id`` and config; the
emulator records every request it saw (the referee for the rate limit and the
credits), and the database is the one the test server started.
"""

from __future__ import annotations

from pathlib import Path

from bench.rate import peak


def test_peak_counts_the_busiest_window() -> None:
    assert peak([0.0, 1.0, 1.9, 2.5], 2.0) == 3
    assert peak([0.0, 1.0, 2.0], 2.0) == 2


def test_the_credential_db_password_reaches_libpq_and_nothing_else(tmp_path: Path) -> None:
    from psycopg.conninfo import conninfo_to_dict

    from bgsyncd.storage.postgres.dsn import connection_dsn

    dsn = "host=db.internal user=bgsyncd dbname=bgsyncd"
    (tmp_path / "db_password").write_text("pw-from-credential\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert conninfo_to_dict(connection_dsn(dsn, env))["password"] == "pw-from-credential"
    # libpq's own sources win, and without a credential the DSN is as written.
    assert connection_dsn(dsn, {**env, "PGPASSWORD": "x"}) == dsn
    assert connection_dsn(dsn, {}) == dsn
    assert connection_dsn(dsn, {"CREDENTIALS_DIRECTORY": str(tmp_path / "none")}) == dsn
