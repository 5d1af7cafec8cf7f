"""Loading the configuration: the file, the environment, the key, the folders.

``load_settings`` is the only place that reads the configuration file or the
environment. It returns one frozen ``Settings`` object that the rest of the
code receives; every problem becomes a one-paragraph ``ConfigError`` that
names the key (``api.rate_limit``, ``folder[1].format``) and the file, and
never contains the API key. Its steps live beside it: the messages in
``messages``, the cross-key rules in ``rules``, where the paths point in
``paths``, the folders in ``layout``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from bgsyncd.config import layout
from bgsyncd.config.apikey import (
    KEY_ENV,
    resolve_api_key,
    resolve_page_token,
    resolve_webhook_secret,
)
from bgsyncd.config.messages import check_top_level, explain, explain_env
from bgsyncd.config.paths import resolve_paths, with_env_paths_resolved, with_resolved_roots
from bgsyncd.config.rules import DsnReader, check_rules
from bgsyncd.config.schema import DEFAULT_CONFIG_PATH, SECTIONS, TABLES, Settings
from bgsyncd.errors import ConfigError, describe_os_error

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def config_path(explicit: str | Path | None, environ: Mapping[str, str] | None = None) -> Path:
    """``--config``, else ``$BGSYNCD_CONFIG``, else the default path."""
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if env.get("BGSYNCD_CONFIG"):
        return Path(env["BGSYNCD_CONFIG"])
    return DEFAULT_CONFIG_PATH


def load_settings(
    path: str | Path | None = None,
    *,
    read_dsn: DsnReader,
    create_folders: bool = True,
    check_folders: bool = True,
) -> Settings:
    """Read, validate and resolve the configuration; raise ``ConfigError``.

    ``os.environ`` supplies the overrides and the key. With ``create_folders``
    missing outbox, quarantine and done folders are created. Without
    ``check_folders`` the folders on disk are not looked at (``status`` beside
    a running daemon). ``read_dsn`` is libpq's reading of ``queue.dsn`` (the
    PostgreSQL engine's, handed in by ``service.backends.load_settings``).
    """
    env = os.environ
    file = config_path(path, env)
    raw = _read_toml(file)
    check_top_level(raw, file)
    raw = resolve_paths(raw, file.absolute().parent)
    try:
        settings = Settings(**raw)
    except ValidationError as exc:
        raise ConfigError(explain(exc, file, env, TABLES)) from None
    except SettingsError as exc:
        raise ConfigError(explain_env(exc, file)) from None
    settings = with_env_paths_resolved(_with_folder_names(settings))
    secret = resolve_webhook_secret(settings.hooks.secret_file, env, file)
    settings = settings.model_copy(
        update={"webhook_secret": secret.value, "webhook_secret_source": secret.source}
    )
    check_rules(settings, file, read_dsn=read_dsn, check_folders=check_folders)
    if create_folders:
        layout.create_folders(settings.folder, file)
    settings = with_resolved_roots(settings)
    key = resolve_api_key(settings.api.key_file, env, file)
    token = resolve_page_token(settings.metrics.page_token_file, env, file)
    return settings.model_copy(
        update={
            "api_key": key.value,
            "api_key_source": key.source,
            "page_token": token.value,
            "page_token_source": token.source,
            "config_path": file.absolute(),
            "warnings": key.warnings + token.warnings + secret.warnings,
        }
    )


def require_api_key(settings: Settings) -> str:
    """The API key, or a ``ConfigError`` that says where it may come from."""
    if settings.api_key is None:
        raise ConfigError(
            f"no API key: set {KEY_ENV}, point api.key_file at a file holding it, "
            "or pass it as the systemd credential api_key (LoadCredential=api_key:...)"
        )
    return settings.api_key.get_secret_value()


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        with file.open("rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
            return data
    except FileNotFoundError:
        raise ConfigError(
            f"{file}: no configuration file there (use --config PATH or BGSYNCD_CONFIG)"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        # The decoder's message gives line and column, never the line's text.
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not valid TOML: the file is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(
            f"{file}: cannot read the configuration: {describe_os_error(exc)}"
        ) from None


def _with_folder_names(settings: Settings) -> Settings:
    folders = tuple(
        f if f.name.strip() else f.model_copy(update={"name": f.inbox.name or str(f.inbox)})
        for f in settings.folder
    )
    return settings.model_copy(update={"folder": folders})


def render_settings(settings: Settings) -> str:
    """The resolved settings as TOML, the key masked (shown only as set or not)."""
    lines = [f"# configuration: {settings.config_path}"]
    if settings.api_key is not None:
        lines.append(f"# api key: ******** (from {settings.api_key_source})")
    else:
        lines.append(f"# api key: not set ({KEY_ENV}, api.key_file or credential api_key)")
    if settings.page_token is not None:
        lines.append(f"# page token: ******** (from {settings.page_token_source})")
    if settings.webhook_secret is not None:
        lines.append(f"# webhook secret: ******** (from {settings.webhook_secret_source})")
    lines.extend(f"# warning: {w}" for w in settings.warnings)
    for section in SECTIONS:
        lines.append(f"\n[{section}]")
        model: BaseModel = getattr(settings, section)
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in model.model_dump().items())
    for folder in settings.folder:
        # The effective finishing: a preset's keys are filled in, a rendition's
        # unset keys are its folder's.
        lines.append("\n[[folder]]")
        own = folder.model_dump(exclude={"rendition"})
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in own.items())
        for rendition in folder.rendition:
            lines.append("\n[[folder.rendition]]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in rendition.model_dump().items())
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if value is None:
        return '""'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # A JSON string is a valid TOML basic string (same escapes).
    return json.dumps(str(value), ensure_ascii=False)
