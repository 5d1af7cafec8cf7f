"""Configuration errors: every problem one message naming the key and the file.

``config.loading.load_settings`` turns what pydantic and pydantic-settings raise into
one paragraph (``folder[1].format (from BGSYNCD_...): ...``), with a "did you
mean" for a misspelt key; ``rules`` raises the same shape of message
through ``invalid``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from bgsyncd.config.apikey import KEY_ENV
from bgsyncd.config.schema import ENV_PREFIX, SECTIONS, TOP_LEVEL
from bgsyncd.errors import ConfigError


def invalid(file: Path, key: str, message: str) -> ConfigError:
    """``{file}: invalid configuration: {key}: {message}``, the one shape of a problem."""
    return ConfigError(f"{file}: invalid configuration: {key}: {message}")


def check_top_level(raw: dict[str, Any], file: Path) -> None:
    """Refuse the key in the file, and unknown top-level keys before pydantic sees them.

    Top-level keys become keyword arguments of ``Settings``, where names such as
    ``_env_prefix`` would steer pydantic-settings itself.
    """
    api = raw.get("api")
    for key in ("api_key", "key"):
        if key in raw or (isinstance(api, dict) and key in api):
            raise invalid(
                file,
                f"api.{key}" if key not in raw else key,
                f"the API key does not belong in the configuration file; use {KEY_ENV}, "
                "api.key_file or the systemd credential api_key",
            )
    for key in raw:
        if key not in TOP_LEVEL:
            raise invalid(file, key, "unknown key" + _did_you_mean(key, TOP_LEVEL))


def explain(
    exc: ValidationError,
    file: Path,
    env: Mapping[str, str],
    tables: Mapping[str, type[BaseModel]],
) -> str:
    """One paragraph: each problem as ``key (from ENV_VAR): what is wrong``.

    ``tables`` is the model of each top-level key, for the keys a misspelt one may mean.
    """
    env_names = {name.upper() for name in env}
    problems = []
    for err in exc.errors():
        loc = err["loc"]
        key = _dotted(loc)
        where = ""
        if loc and loc[0] in SECTIONS:
            for name in (
                ENV_PREFIX + "__".join(str(p).upper() for p in loc),
                ENV_PREFIX + str(loc[0]).upper(),
            ):
                if name in env_names:
                    where = f" (from {name})"
                    break
        value = err.get("input")
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key" + _did_you_mean(str(loc[-1]), _known_keys(loc, tables))
        elif err["type"] == "missing":
            message = "missing (this key is required)"
        elif loc == ("folder",) and isinstance(value, dict):
            message = "write each folder as a [[folder]] table (double brackets)"
        elif err["type"] == "model_type":
            table = "[[folder]]" if loc[0] == "folder" else f"[{loc[0]}]"
            message = f"expected a {table} table (got {type(value).__name__} {value!r:.40})"
        elif not isinstance(value, (dict, list, tuple)):
            shown = repr(value)
            message += f" (got {shown[:80] + '...' if len(shown) > 80 else shown})"
        problems.append(f"{key}{where}: {message}")
    return f"{file}: invalid configuration: " + "; ".join(problems)


def explain_env(exc: SettingsError, file: Path) -> str:
    """A whole section set from the environment that is not a JSON object."""
    found = re.search(r'field "(\w+)"', str(exc))
    section = found.group(1) if found else "?"
    return (
        f"{file}: invalid configuration: {section} (from {ENV_PREFIX}{section.upper()}): "
        f"not a JSON object; set one key at a time as {ENV_PREFIX}{section.upper()}__<KEY>"
    )


def _dotted(loc: tuple[int | str, ...]) -> str:
    """``('folder', 1, 'format')`` -> ``folder[1].format``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


def _known_keys(
    loc: tuple[int | str, ...], tables: Mapping[str, type[BaseModel]]
) -> tuple[str, ...]:
    if len(loc) <= 1:
        return TOP_LEVEL
    model = tables.get(str(loc[0]))
    if model is not None and "rendition" in loc[:-1]:
        model = tables.get("rendition")
    return tuple(model.model_fields) if model else ()


def _did_you_mean(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""
