"""``queue.dsn`` read by libpq's own parser (issue 15 item 5): a password in any
spelling libpq accepts is refused at load, naming the key, never printed.
``bgsyncd check-config`` as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.daemons import make_folder, write_config


def test_a_sqlite_configuration_never_loads_psycopg(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.toml", base_url="http://127.0.0.1:9", folders=[make_folder(tmp_path, "f")]
    )
    probe = (
        "import sys\n"
        "from bgsyncd.service.backends import load_settings\n"
        "load_settings(sys.argv[1], create_folders=False)\n"
        "print(sorted(m for m in sys.modules if m.startswith('psycopg')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
