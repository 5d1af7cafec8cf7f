"""What a reload decides from the settings in force and the settings just read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bgsyncd.config.schema import Settings
from bgsyncd.service.backends import load_settings
from bgsyncd.service.reload import restart_needed, watcher_changed, worker_config
from tests.support.daemons import make_folder, write_config


def _settings(tmp_path: Path, name: str = "config.toml", **sections: Any) -> Settings:
    folders = sections.pop("folders", None) or [make_folder(tmp_path, "a")]
    path = write_config(tmp_path / name, base_url="http://127.0.0.1:9", folders=folders, **sections)
    return load_settings(path)


def test_the_same_settings_need_nothing(tmp_path: Path) -> None:
    old, new = _settings(tmp_path), _settings(tmp_path, "again.toml")
    assert restart_needed(old, new) == []
    assert not watcher_changed(old, new)


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        (lambda tmp: {"queue": {"database": str(tmp / "other.sqlite3")}}, "queue.database"),
        (lambda tmp: {"queue": {"cache_max_megabytes": 7}}, "queue.cache_max_megabytes"),
        (lambda tmp: {"api": {"max_in_flight": 9}}, "api.max_in_flight"),
        (lambda tmp: {"api": {"timeout_seconds": 11}}, "api.timeout_seconds"),
        (lambda tmp: {"metrics_listen": "127.0.0.1:9808"}, "metrics.listen"),
    ],
)
def test_a_key_a_running_daemon_cannot_take_needs_a_restart(
    tmp_path: Path, sections: Callable[[Path], dict[str, Any]], key: str
) -> None:
    old, new = _settings(tmp_path), _settings(tmp_path, "new.toml", **sections(tmp_path))
    assert restart_needed(old, new) == [key]
    assert not watcher_changed(old, new)


@pytest.mark.parametrize(
    "sections",
    [{"api": {"rate_limit": 5}}, {"credits": {"floor": 3}}, {"queue": {"max_attempts": 2}}],
)
def test_a_key_taken_at_once_needs_no_restart(tmp_path: Path, sections: dict[str, Any]) -> None:
    old, new = _settings(tmp_path), _settings(tmp_path, "new.toml", **sections)
    assert restart_needed(old, new) == []
    assert not watcher_changed(old, new)


@pytest.mark.parametrize(
    "sections",
    [
        lambda tmp: {"queue": {"settle_seconds": 1.5}},
        lambda tmp: {"queue": {"rescan_interval_seconds": 120}},
        lambda tmp: {"folders": [make_folder(tmp, "a"), make_folder(tmp, "b")]},
    ],
)
def test_folders_or_how_files_are_watched_replace_the_watcher(
    tmp_path: Path, sections: Callable[[Path], dict[str, Any]]
) -> None:
    old, new = _settings(tmp_path), _settings(tmp_path, "new.toml", **sections(tmp_path))
    assert restart_needed(old, new) == []
    assert watcher_changed(old, new)


def test_the_worker_config_follows_the_settings(tmp_path: Path) -> None:
    settings = _settings(tmp_path, queue={"max_attempts": 7, "settle_seconds": 1.25})
    config = worker_config(settings)
    assert list(config.folders) == ["a"]
    assert config.max_attempts == 7
    assert config.settle_seconds == 1.25
    assert config.upload == settings.api.upload
