"""Configuration: the TOML schema, environment overrides and the API key.

``load_settings`` is the only place that reads the configuration file or the
environment. It returns one frozen ``Settings`` object that the rest of the
code receives; every problem becomes a one-paragraph ``ConfigError`` that
names the key (``api.rate_limit``, ``folder[1].format``) and the file, and
never contains the API key. Its steps live beside it: the messages in
``config_errors``, the cross-key rules in ``config_rules``, where the paths
point in ``config_paths``.
"""

from __future__ import annotations

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

from bgsyncd.config import layout
from bgsyncd.config.apikey import KEY_ENV, resolve_api_key
from bgsyncd.config.keys import ENV_PREFIX, SECTIONS
from bgsyncd.config.messages import check_top_level, explain, explain_env
from bgsyncd.config.paths import resolve_paths, with_env_paths_resolved, with_resolved_roots
from bgsyncd.config.rules import check_rules
from bgsyncd.errors import ConfigError, describe_os_error

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/bgsyncd/config.toml")
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


# Each top-level key's model: the keys a misspelt one may have meant.
_TABLES: dict[str, type[BaseModel]] = {
    "api": ApiSettings,
    "credits": CreditSettings,
    "queue": QueueSettings,
    "metrics": MetricsSettings,
    "logging": LoggingSettings,
    "folder": FolderSettings,
}


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
    check_top_level(raw, file)
    raw = resolve_paths(raw, file.absolute().parent)
    try:
        settings = Settings(**raw)
    except ValidationError as exc:
        raise ConfigError(explain(exc, file, env, _TABLES)) from None
    except SettingsError as exc:
        raise ConfigError(explain_env(exc, file)) from None
    settings = with_env_paths_resolved(_with_folder_names(settings))
    check_rules(settings, file, check_folders=check_folders)
    if create_folders:
        layout.create_folders(settings.folder, file)
    settings = with_resolved_roots(settings)
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


def host_id(settings: Settings) -> str:
    """This daemon's name in a fleet: ``queue.host_id``, by default the host name."""
    return settings.queue.host_id.strip() or socket.gethostname()


def _with_folder_names(settings: Settings) -> Settings:
    folders = tuple(
        f if f.name.strip() else f.model_copy(update={"name": f.inbox.name or str(f.inbox)})
        for f in settings.folder
    )
    return settings.model_copy(update={"folder": folders})
