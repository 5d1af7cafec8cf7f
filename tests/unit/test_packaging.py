"""The quick start: ``bgsyncd demo`` and ``scripts/demo.sh`` as a user runs them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.paths import ROOT


def test_the_package_builds_without_warnings_and_ships_every_module(tmp_path: Path) -> None:
    """What a first ``scripts/venv.sh`` builds: no deprecation noise, no module left out."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deprecated" not in (result.stdout + result.stderr).lower(), result.stderr
    (wheel,) = tmp_path.glob("bgsyncd-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.endswith(".py")}
        metadata = next(n for n in archive.namelist() if n.endswith("/METADATA"))
        assert "License-Expression: MIT" in archive.read(metadata).decode()
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "bgsyncd").rglob("*.py")}
    assert sources == shipped
