"""Configuration: the schema, environment overrides, the folder rules and the API key.

``load_settings`` on real files in ``tmp_path``; ``bgsyncd check-config`` as a
real subprocess for the end-to-end promise (exit 2, the key named, no traceback).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.configs import FOLDER, SECRET
from tests.support.paths import ROOT

# No BGSYNCD_* variable of the runner's leaks into any test here (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("clean_env")

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass


# --- bgsyncd check-config, end to end -------------------------------------------


def check_config(path: Path, text: str, **env: str) -> subprocess.CompletedProcess[str]:
    path.write_text(text, encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("BGSYNCD_")}
    clean.pop("CREDENTIALS_DIRECTORY", None)
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "bgsyncd", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[api]\nrate_limt = 5\n", "api.rate_limt"),
        ('[api]\nrate_limit = "fast"\n', "api.rate_limit"),
        (FOLDER + 'output = "alpha"\n', "folder[0].output"),
        (FOLDER + 'format = "jpeg"\n', "folder[0].background"),
        (FOLDER + 'after_success = "move"\n', "folder[0].done"),
        ("[api\nrate_limit = 5\n", "line 1"),
        (FOLDER.replace('"in"', '"nowhere"'), "folder[0].inbox"),
    ],
    ids=["unknown", "type", "enum", "jpeg", "move", "toml", "inbox"],
)
def test_check_config_rejects_with_exit_2_naming_the_key(cfg: Path, text: str, key: str) -> None:
    result = check_config(cfg, text, BGSYNCD_API_KEY=SECRET)
    assert result.returncode == 2, result
    assert key in result.stderr and str(cfg) in result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1


def test_check_config_prints_the_resolved_settings_with_the_key_masked(cfg: Path) -> None:
    result = check_config(cfg, FOLDER, BGSYNCD_API_KEY=SECRET, BGSYNCD_API__RATE_LIMIT="5")
    assert result.returncode == 0, result
    assert SECRET not in result.stdout + result.stderr
    assert "********" in result.stdout
    assert "rate_limit = 5" in result.stdout
    assert f'inbox = "{cfg.parent / "in"}"' in result.stdout


def test_check_config_shows_a_relative_path_from_the_environment_resolved(
    cfg: Path, tmp_path: Path
) -> None:
    cfg.write_text(FOLDER)
    result = subprocess.run(
        [sys.executable, "-m", "bgsyncd", "check-config", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=tmp_path / "in",
        env={
            **{k: v for k, v in os.environ.items() if not k.upper().startswith("BGSYNCD_")},
            "PYTHONPATH": str(ROOT),
            "BGSYNCD_QUEUE__DATABASE": "rel/q.sqlite3",
        },
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result
    assert f'database = "{tmp_path / "in" / "rel" / "q.sqlite3"}"' in result.stdout


def test_check_config_by_hand_finds_the_key_where_the_readme_says(
    cfg: Path, tmp_path: Path
) -> None:
    """README "Install on a server" step 5: the credential's folder names the key file."""
    etc = tmp_path / "etc-bgsyncd"
    etc.mkdir()
    (etc / "api_key").write_text(SECRET + "\n")
    (etc / "api_key").chmod(0o600)
    without = check_config(cfg, FOLDER)
    assert without.returncode == 0, without
    assert "# api key: not set" in without.stdout  # what step 5 explains
    with_credential = check_config(cfg, FOLDER, CREDENTIALS_DIRECTORY=str(etc))
    assert with_credential.returncode == 0, with_credential
    assert "# api key: ******** (from" in with_credential.stdout
    assert SECRET not in with_credential.stdout + with_credential.stderr
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "sudo CREDENTIALS_DIRECTORY=/etc/bgsyncd \\\n" in readme
    assert "/opt/bgsyncd/bin/bgsyncd check-config --config /etc/bgsyncd/config.toml" in readme
