"""Configuration: the TOML schema, environment overrides and the API key.

``load_settings`` is the only place that reads the configuration file or the
environment. It returns one frozen ``Settings`` object that the rest of the
code receives; every problem becomes a one-paragraph ``ConfigError`` that
names the key (``api.rate_limit``, ``folder[1].format``) and the file, and
never contains the API key.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from bgsyncd import layout
from bgsyncd.apikey import KEY_ENV, resolve_api_key
from bgsyncd.errors import ConfigError, describe_os_error

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/bgsyncd/config.toml")
ENV_PREFIX = "BGSYNCD_"
SECTIONS = ("api", "credits", "queue", "metrics", "logging")
_TOP_LEVEL = (*SECTIONS, "folder")
_PATH_KEYS = {"api": ("key_file",), "queue": ("database",)}
_FOLDER_PATH_KEYS = ("inbox", "outbox", "quarantine", "done")
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


def _not_empty(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty")
    return value


def _empty_is_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def _colour(value: str) -> str:
    if value and not _COLOUR.fullmatch(value):
        raise ValueError('expected "" or "#rrggbb"')
    return value


FolderPath = Annotated[Path, BeforeValidator(_not_empty)]


# A smaller answer cap would refuse an ordinary 1024-pixel matte.
MIN_RESPONSE_BYTES = 1024 * 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ApiSettings(_Section):
    """``[api]``: where the API is and how hard we may use it."""

    base_url: str = "https://api.withoutbg.com"
    key_file: str = ""
    rate_limit: PositiveInt = 7
    rate_window_seconds: PositiveFloat = 60.0
    max_in_flight: PositiveInt = 3
    timeout_seconds: PositiveFloat = 120.0
    max_upload_bytes: PositiveInt = 10 * 1024 * 1024
    # 0: automatic (16 MiB for a matte; 4 bytes a pixel + 1 MiB for a cut-out).
    max_response_bytes: NonNegativeInt = 0
    # SPEC §5 "What is sent": a copy at most proxy_side pixels on the longer side
    # goes to the alpha-channel endpoint; "original" sends the file itself.
    upload: Literal["proxy", "original"] = "proxy"
    proxy_side: Annotated[int, Field(ge=64)] = 1024


class CreditSettings(_Section):
    """``[credits]``: the floor we never spend below."""

    floor: NonNegativeInt = 0
    check_interval_seconds: PositiveFloat = 600.0


class QueueSettings(_Section):
    """``[queue]``: the job database, completeness and retries."""

    # SPEC §8: "postgresql" makes every daemon on one database one fleet.
    backend: Literal["sqlite", "postgresql"] = "sqlite"
    database: FolderPath = Path("/var/lib/bgsyncd/queue.sqlite3")
    # libpq's DSN, never with a password (PGPASSFILE, ~/.pgpass, PGPASSWORD or
    # the credential db_password supply it).
    dsn: str = ""
    host_id: str = ""  # "" is the host name (config.host_id)
    lease_seconds: PositiveFloat = 60.0
    max_attempts: PositiveInt = 5
    settle_seconds: NonNegativeFloat = 2.0
    rescan_interval_seconds: PositiveFloat = 300.0
    cache_max_megabytes: NonNegativeInt = 512
    retry_base_seconds: PositiveFloat = 2.0
    retry_max_seconds: PositiveFloat = 300.0


class MetricsSettings(_Section):
    """``[metrics]``: the Prometheus endpoint ("" disables it)."""

    listen: str = "127.0.0.1:9808"


class LoggingSettings(_Section):
    """``[logging]``: JSON lines for machines, console for people."""

    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


class FolderSettings(_Section):
    """One ``[[folder]]``: an inbox and where its results go."""

    name: str = ""
    inbox: FolderPath
    outbox: FolderPath
    quarantine: FolderPath
    output: Literal["cutout", "mask", "both"] = "cutout"
    format: Literal["png", "webp", "jpeg"] = "png"
    background: Annotated[str, AfterValidator(_colour)] = ""
    oversize: Literal["shrink", "quarantine"] = "shrink"
    after_success: Literal["keep", "delete", "move"] = "keep"
    done: Annotated[Path | None, BeforeValidator(_empty_is_none)] = None
    recursive: bool = True
    polling: bool = False
    shared: bool = False  # served by every host of the fleet configuring this name
    ignore: tuple[str, ...] = ()


class _SectionsFromEnv(EnvSettingsSource):
    """The environment, limited to the five sections ([[folder]] is file-only).

    Without this filter ``BGSYNCD_API_KEY`` would land in the ``api_key`` field,
    ``BGSYNCD_WARNINGS`` in ``warnings`` and ``BGSYNCD_FOLDER`` in the folders.
    """

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        if field_name not in SECTIONS:
            return None
        return super().prepare_field_value(field_name, field, value, value_is_complex)


class Settings(BaseSettings):
    """The whole resolved configuration; frozen, built once by ``load_settings``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )

    api: ApiSettings = ApiSettings()
    credits: CreditSettings = CreditSettings()
    queue: QueueSettings = QueueSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    folder: tuple[FolderSettings, ...] = ()
    # Filled by load_settings, never from the file or the environment.
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    api_key_source: str = Field(default="", exclude=True)
    config_path: Path = Field(default=DEFAULT_CONFIG_PATH, exclude=True)
    warnings: tuple[str, ...] = Field(default=(), exclude=True)

    @property
    def folders(self) -> tuple[FolderSettings, ...]:
        """The configured folders."""
        return self.folder

    @property
    def state_dir(self) -> Path:
        """The folder that holds the database and the result cache."""
        return self.queue.database.parent

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's contents arrive as init arguments; the environment wins.
        return (_SectionsFromEnv(settings_cls), init_settings)


def config_path(explicit: str | Path | None, environ: Mapping[str, str] | None = None) -> Path:
    """``--config``, else ``$BGSYNCD_CONFIG``, else the default path."""
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if env.get("BGSYNCD_CONFIG"):
        return Path(env["BGSYNCD_CONFIG"])
    return DEFAULT_CONFIG_PATH


def load_settings(
    path: str | Path | None = None, *, create_folders: bool = True, check_folders: bool = True
) -> Settings:
    """Read, validate and resolve the configuration; raise ``ConfigError``.

    ``os.environ`` supplies the overrides and the key. With ``create_folders``
    missing outbox, quarantine and done folders are created. Without
    ``check_folders`` the folders on disk are not looked at (``status`` beside
    a running daemon).
    """
    env = os.environ
    file = config_path(path, env)
    raw = _read_toml(file)
    _check_top_level(raw, file)
    raw = _resolve_paths(raw, file.absolute().parent)
    try:
        settings = Settings(**raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, file, env)) from None
    except SettingsError as exc:
        raise ConfigError(_explain_env(exc, file)) from None
    settings = _with_env_paths_resolved(_with_folder_names(settings))
    _check_rules(settings, file, check_folders=check_folders)
    if create_folders:
        layout.create_folders(settings.folder, file)
    settings = _with_resolved_roots(settings)
    key = resolve_api_key(settings.api.key_file, env, file)
    return settings.model_copy(
        update={
            "api_key": key.value,
            "api_key_source": key.source,
            "config_path": file.absolute(),
            "warnings": key.warnings,
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


def parse_listen(listen: str) -> tuple[str, int] | None:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port); ``""`` -> None.

    An empty host (``":9808"``) means every interface, as Prometheus exporters do.
    """
    listen = listen.strip()
    if not listen:
        return None
    host, sep, port = listen.rpartition(":")
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise ValueError(f"expected host:port or [v6addr]:port, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"put an IPv6 address in brackets ([::1]:9808), got {listen!r}")
    if re.search(r"[\s\[\]/]", host):
        raise ValueError(f"expected host:port, got {listen!r}")
    return host or "0.0.0.0", int(port)


def render_settings(settings: Settings) -> str:
    """The resolved settings as TOML, the key masked (shown only as set or not)."""
    lines = [f"# configuration: {settings.config_path}"]
    if settings.api_key is not None:
        lines.append(f"# api key: ******** (from {settings.api_key_source})")
    else:
        lines.append(f"# api key: not set ({KEY_ENV}, api.key_file or credential api_key)")
    lines.extend(f"# warning: {w}" for w in settings.warnings)
    for section in SECTIONS:
        lines.append(f"\n[{section}]")
        model: BaseModel = getattr(settings, section)
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in model.model_dump().items())
    for folder in settings.folder:
        lines.append("\n[[folder]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in folder.model_dump().items())
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


def _fail(file: Path, key: str, message: str) -> ConfigError:
    return ConfigError(f"{file}: invalid configuration: {key}: {message}")


def _check_top_level(raw: dict[str, Any], file: Path) -> None:
    """Refuse the key in the file, and unknown top-level keys before pydantic sees them.

    Top-level keys become keyword arguments of ``Settings``, where names such as
    ``_env_prefix`` would steer pydantic-settings itself.
    """
    api = raw.get("api")
    for key in ("api_key", "key"):
        if key in raw or (isinstance(api, dict) and key in api):
            raise _fail(
                file,
                f"api.{key}" if key not in raw else key,
                f"the API key does not belong in the configuration file; use {KEY_ENV}, "
                "api.key_file or the systemd credential api_key",
            )
    for key in raw:
        if key not in _TOP_LEVEL:
            raise _fail(file, key, "unknown key" + _did_you_mean(key, _TOP_LEVEL))


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
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
    folders = out.get("folder")
    if isinstance(folders, list):
        out["folder"] = [
            {k: fix(v) if k in _FOLDER_PATH_KEYS else v for k, v in f.items()}
            if isinstance(f, dict)
            else f
            for f in folders
        ]
    return out


def _explain(exc: ValidationError, file: Path, env: Mapping[str, str]) -> str:
    """One paragraph: each problem as ``key (from ENV_VAR): what is wrong``."""
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
            message = "unknown key" + _did_you_mean(str(loc[-1]), _known_keys(loc))
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


def _explain_env(exc: SettingsError, file: Path) -> str:
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


def _known_keys(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    if len(loc) <= 1:
        return _TOP_LEVEL
    model: type[BaseModel] | None = (
        FolderSettings if loc[0] == "folder" else _SECTION_MODELS.get(str(loc[0]))
    )
    return tuple(model.model_fields) if model else ()


def _did_you_mean(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "api": ApiSettings,
    "credits": CreditSettings,
    "queue": QueueSettings,
    "metrics": MetricsSettings,
    "logging": LoggingSettings,
}


def _with_env_paths_resolved(settings: Settings) -> Settings:
    """Paths from the environment: ``~`` expanded, relative ones from the working directory.

    The file's paths are absolute by now (``_resolve_paths``); a relative one
    left can only be an override such as ``BGSYNCD_QUEUE__DATABASE=rel/q.sqlite3``,
    meant as a shell user means it. Resolved here, ``check-config`` shows what
    the daemon will use.
    """

    def absolute(path: str) -> str:
        return str(Path.cwd() / os.path.expanduser(path))  # an absolute right side wins

    api = settings.api
    if api.key_file.strip():
        api = api.model_copy(update={"key_file": absolute(api.key_file)})
    queue = settings.queue.model_copy(
        update={"database": Path(absolute(str(settings.queue.database)))}
    )
    return settings.model_copy(update={"api": api, "queue": queue})


def host_id(settings: Settings) -> str:
    """This daemon's name in a fleet: ``queue.host_id``, by default the host name."""
    return settings.queue.host_id.strip() or socket.gethostname()


def _with_folder_names(settings: Settings) -> Settings:
    folders = tuple(
        f if f.name.strip() else f.model_copy(update={"name": f.inbox.name or str(f.inbox)})
        for f in settings.folder
    )
    return settings.model_copy(update={"folder": folders})


def _with_resolved_roots(settings: Settings) -> Settings:
    """Each folder's roots with their symlinks resolved, at load (start and reload).

    Below a root nothing follows a symlink (``fsops`` opens even the root with
    ``O_NOFOLLOW``): a root replaced by a symlink later is a lost folder.
    """
    keys = ("inbox", "outbox", "quarantine", "done")
    folders = tuple(
        f.model_copy(update={k: getattr(f, k).resolve() for k in keys if getattr(f, k) is not None})
        for f in settings.folder
    )
    return settings.model_copy(update={"folder": folders})


def _check_rules(settings: Settings, file: Path, *, check_folders: bool = True) -> None:
    """The rules no single field can check: combinations, folders, overlaps."""
    if not settings.api.base_url.startswith(("http://", "https://")):
        raise _fail(
            file,
            "api.base_url",
            f"must start with http:// or https:// (got {settings.api.base_url!r})",
        )
    if 0 < settings.api.max_response_bytes < MIN_RESPONSE_BYTES:
        raise _fail(
            file,
            "api.max_response_bytes",
            f"{settings.api.max_response_bytes} bytes would refuse ordinary answers: use 0"
            f" (automatic) or at least {MIN_RESPONSE_BYTES} (1 MiB)",
        )
    _check_backend(settings, file)
    try:
        parse_listen(settings.metrics.listen)
    except ValueError as exc:
        raise _fail(file, "metrics.listen", str(exc)) from None
    names: dict[str, int] = {}
    for i, f in enumerate(settings.folder):
        key = f"folder[{i}]"
        if f.name in names:
            raise _fail(
                file,
                f"{key}.name",
                f"folder[{names[f.name]}] already has the name {f.name!r} "
                "(a name defaults to the inbox's last path component; set name to tell them apart)",
            )
        names[f.name] = i
        if f.format == "jpeg" and not f.background:
            raise _fail(
                file, f"{key}.background", 'format = "jpeg" needs a background colour ("#rrggbb")'
            )
        if f.after_success == "move" and f.done is None:
            raise _fail(file, f"{key}.done", 'after_success = "move" needs a done folder')
    if check_folders:
        layout.check_folders(settings.folder, file)


def _check_backend(settings: Settings, file: Path) -> None:
    """``[queue]`` backend rules: a DSN for PostgreSQL, never one carrying a password."""
    queue = settings.queue
    if queue.backend == "sqlite":
        for i, f in enumerate(settings.folder):
            if f.shared:
                raise _fail(
                    file, f"folder[{i}].shared", 'a shared folder needs backend = "postgresql"'
                )
        return
    if not queue.dsn.strip():
        raise _fail(
            file,
            "queue.dsn",
            'backend = "postgresql" needs a libpq DSN'
            ' (e.g. "postgresql://bgsyncd@db.internal/bgsyncd")',
        )
    if dsn_has_password(queue.dsn):
        raise _fail(
            file,
            "queue.dsn",
            "must not carry a password: put it in PGPASSFILE or ~/.pgpass, in PGPASSWORD,"
            " or in the systemd credential db_password",
        )


def dsn_has_password(dsn: str) -> bool:
    """``dsn`` (URI or key=value) writes a password, in any of libpq's spellings."""
    if re.search(r"(^|\s)password\s*=", dsn):
        return True
    if re.search(r"[?&]password=", dsn):
        return True
    return re.match(r"^[a-z]+://[^/@\s]*:[^@/\s]*@", dsn) is not None
