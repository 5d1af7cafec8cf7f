"""``queue.dsn`` read by libpq's own parser (issue 15 item 5): a password in any
spelling libpq accepts is refused at load, naming the key, never printed.
``bgsyncd check-config`` as a real subprocess."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.daemons import make_folder, run_cli, write_config

SECRET = "s3cr3t-pw-4711"

REFUSED = {
    "percent-encoded key": f"postgresql://bgsyncd@db.internal/bgsyncd?pass%77ord={SECRET}",
    "all of the key encoded": f"postgresql://bgsyncd@db.internal/bgsyncd?%70%61ssword={SECRET}",
    "user:password@": f"postgresql://bgsyncd:{SECRET}@db.internal/bgsyncd",
    "encoded user:password@": f"postgres://%62gsyncd:{SECRET}@db.internal/bgsyncd",
    "password=": f"host=db.internal user=bgsyncd password={SECRET}",
    "quoted password=": f"host=db.internal password = '{SECRET} x'",
    "?password=": f"postgresql://bgsyncd@db.internal/bgsyncd?password={SECRET}",
}


def _check_config(tmp_path: Path, dsn: str) -> subprocess.CompletedProcess[str]:
    config = write_config(
        tmp_path / "c.toml",
        base_url="http://127.0.0.1:9",
        folders=[make_folder(tmp_path, "f")],
        queue={"backend": "postgresql", "dsn": dsn},
    )
    return run_cli("check-config", "--config", str(config))


@pytest.mark.parametrize("dsn", list(REFUSED.values()), ids=list(REFUSED))
def test_a_dsn_libpq_reads_a_password_from_is_refused_naming_the_key(
    tmp_path: Path, dsn: str
) -> None:
    result = _check_config(tmp_path, dsn)
    assert result.returncode == 2, result.stdout
    assert "queue.dsn" in result.stderr and "must not carry a password" in result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_a_dsn_libpq_cannot_parse_is_refused_without_echoing_it(tmp_path: Path) -> None:
    # libpq's own message would quote the token after the password: "missing "=" after ...".
    result = _check_config(tmp_path, f"host=db.internal password=x {SECRET}")
    assert result.returncode == 2, result.stdout
    assert "queue.dsn" in result.stderr and "cannot read it" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_a_dsn_without_a_password_is_shown(tmp_path: Path) -> None:
    dsn = "postgresql://bgsyncd@db.internal/bgsyncd?sslmode=verify-full&passfile=/etc/pgpass"
    result = _check_config(tmp_path, dsn)
    assert result.returncode == 0, result.stderr
    assert dsn in result.stdout
