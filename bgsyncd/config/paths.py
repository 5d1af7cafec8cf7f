"""Where the configuration's paths point: the file's folder, the working directory, no symlink.

Part of loading the configuration (``config.loading.load_settings`` calls each step):
relative paths in the file are taken from the file's folder, relative ones
from the environment from the working directory, and each folder's roots have
their symlinks resolved.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bgsyncd.config.schema import Settings

_PATH_KEYS = {"api": ("key_file",), "queue": ("database",), "metrics": ("page_token_file",)}
_FOLDER_PATH_KEYS = ("inbox", "outbox", "quarantine", "done")


def resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Paths in the file: ``~`` expanded, relative ones taken from the file's folder."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value.strip():
            return str(base / os.path.expanduser(value))  # an absolute right side wins
        return value

    out = dict(raw)
    for section, keys in _PATH_KEYS.items():
        table = out.get(section)
        if isinstance(table, dict):
            out[section] = {k: fix(v) if k in keys else v for k, v in table.items()}

    def fix_folder(table: Any) -> Any:
        if not isinstance(table, dict):
            return table
        fixed = {k: fix(v) if k in _FOLDER_PATH_KEYS else v for k, v in table.items()}
        if isinstance(fixed.get("rendition"), list):
            fixed["rendition"] = [fix_folder(r) for r in fixed["rendition"]]
        return fixed

    folders = out.get("folder")
    if isinstance(folders, list):
        out["folder"] = [fix_folder(f) for f in folders]
    return out


def with_env_paths_resolved(settings: Settings) -> Settings:
    """Paths from the environment: ``~`` expanded, relative ones from the working directory.

    The file's paths are absolute by now (``resolve_paths``); a relative one
    left can only be an override such as ``BGSYNCD_QUEUE__DATABASE=rel/q.sqlite3``,
    meant as a shell user means it. Resolved here, ``check-config`` shows what
    the daemon will use.
    """

    def absolute(path: str) -> str:
        return str(Path.cwd() / os.path.expanduser(path))  # an absolute right side wins

    api = settings.api
    if api.key_file.strip():
        api = api.model_copy(update={"key_file": absolute(api.key_file)})
    metrics = settings.metrics
    if metrics.page_token_file.strip():
        metrics = metrics.model_copy(update={"page_token_file": absolute(metrics.page_token_file)})
    queue = settings.queue.model_copy(
        update={"database": Path(absolute(str(settings.queue.database)))}
    )
    return settings.model_copy(update={"api": api, "queue": queue, "metrics": metrics})


def with_resolved_roots(settings: Settings) -> Settings:
    """Each folder's roots, and the state folder, with their symlinks resolved at load.

    At start and on reload. From then on nothing follows a symlink at any
    level (``rootfd`` opens the roots through a symlink-free path, the state
    folder's probe and cache too): a root, or a folder above it, replaced by
    a symlink later is a lost folder.
    """
    keys = _FOLDER_PATH_KEYS
    folders = tuple(
        f.model_copy(
            update={
                **{k: getattr(f, k).resolve() for k in keys if getattr(f, k) is not None},
                "rendition": tuple(
                    r.model_copy(update={"outbox": r.outbox.resolve()}) for r in f.rendition
                ),
            }
        )
        for f in settings.folder
    )
    queue = settings.queue.model_copy(update={"database": settings.queue.database.resolve()})
    return settings.model_copy(update={"folder": folders, "queue": queue})
