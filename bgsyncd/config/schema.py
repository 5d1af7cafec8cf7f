"""The configuration's schema: every table and key, their types, defaults and checks.

One frozen ``Settings`` object, built once by ``config.loading.load_settings``
(the only place that reads the file or the environment), is what the rest of
the code receives. The environment overrides any key (``BGSYNCD_API__RATE_LIMIT``).
"""

from __future__ import annotations

import re
import socket
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
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bgsyncd.config import finishing

# The configuration's names: its tables and the environment's prefix.
ENV_PREFIX = "BGSYNCD_"
SECTIONS = ("api", "credits", "queue", "metrics", "hooks", "logging")
TOP_LEVEL = (*SECTIONS, "folder")

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


def _margin(value: str) -> str:
    finishing.parse_margin(value)
    return value


def _canvas(value: str) -> str:
    finishing.parse_canvas(value)
    return value


def _template(value: str) -> str:
    finishing.check_template(value)
    return value


FolderPath = Annotated[Path, BeforeValidator(_not_empty)]
Colour = Annotated[str, AfterValidator(_colour)]
MarginText = Annotated[str, AfterValidator(_margin)]
CanvasText = Annotated[str, AfterValidator(_canvas)]
Template = Annotated[str, AfterValidator(_template)]
Preset = Literal["", "amazon", "shopify"]


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
    """``[metrics]``: the Prometheus endpoint ("" disables it) and the status page (SPEC §11)."""

    listen: str = "127.0.0.1:9808"
    page: bool = True
    page_token_file: str = ""


class HooksSettings(_Section):
    """``[hooks]``: telling other systems when a file is done (SPEC §10)."""

    timeout_seconds: PositiveFloat = 60.0
    max_running: PositiveInt = 2
    max_attempts: PositiveInt = 5
    secret_file: str = ""  # "" : the systemd credential webhook_secret, if any
    # Not in the product contract: the backoff between failed tries, doubling
    # from retry_base_seconds with jitter, at most retry_max_seconds apart.
    retry_base_seconds: PositiveFloat = 5.0
    retry_max_seconds: PositiveFloat = 300.0


class LoggingSettings(_Section):
    """``[logging]``: JSON lines for machines, console for people."""

    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


class RenditionSettings(_Section):
    """One ``[[folder.rendition]]``: more outputs from the same matte, in their own tree.

    Keys it does not set are its folder's (filled in by ``FolderSettings``),
    after its own preset's.
    """

    outbox: FolderPath
    preset: Preset = ""
    output: Literal["cutout", "mask", "both"] = "cutout"
    format: Literal["png", "webp", "jpeg"] = "png"
    background: Colour = ""
    name_template: Template = "{stem}"
    crop: bool = False
    margin: MarginText = "0"
    canvas: CanvasText = ""
    align: Literal["center", "bottom"] = "center"
    max_side: NonNegativeInt = 0
    shadow: bool = False

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return finishing.with_preset(data) if isinstance(data, dict) else data

    def finishing(self, edges: str) -> finishing.Finishing:
        """This rendition's finishing, with its folder's ``edges``."""
        return _finishing(self, edges)


class FolderSettings(_Section):
    """One ``[[folder]]``: an inbox and where its results go."""

    name: str = ""
    inbox: FolderPath
    outbox: FolderPath
    quarantine: FolderPath
    output: Literal["cutout", "mask", "both"] = "cutout"
    format: Literal["png", "webp", "jpeg"] = "png"
    background: Colour = ""
    oversize: Literal["shrink", "quarantine"] = "shrink"
    after_success: Literal["keep", "delete", "move"] = "keep"
    done: Annotated[Path | None, BeforeValidator(_empty_is_none)] = None
    recursive: bool = True
    polling: bool = False
    shared: bool = False  # served by every host of the fleet configuring this name
    ignore: tuple[str, ...] = ()
    # SPEC §9, finishing: everything made from one matte.
    name_template: Template = "{stem}"
    edges: Literal["refine", "resize"] = "refine"
    preset: Preset = ""
    crop: bool = False
    margin: MarginText = "0"
    canvas: CanvasText = ""
    align: Literal["center", "bottom"] = "center"
    max_side: NonNegativeInt = 0
    shadow: bool = False
    rendition: tuple[RenditionSettings, ...] = ()
    # SPEC §10, hooks: argv lists (never a shell) and a URL.
    on_done: tuple[str, ...] = ()
    on_quarantine: tuple[str, ...] = ()
    webhook: str = ""

    @model_validator(mode="before")
    @classmethod
    def _preset_and_inheritance(cls, data: Any) -> Any:
        """Fill in the folder's preset, then each rendition's unset keys from the folder."""
        if not isinstance(data, dict):
            return data
        table = finishing.with_preset(data)
        renditions = table.get("rendition")
        if isinstance(renditions, list):
            inherited = {k: table[k] for k in finishing.RENDITION_KEYS if k in table}
            inherited.pop("preset", None)
            table["rendition"] = [
                {**inherited, **finishing.with_preset(r)} if isinstance(r, dict) else r
                for r in renditions
            ]
        return table

    def finishing(self) -> finishing.Finishing:
        """The folder's own outputs' finishing."""
        return _finishing(self, self.edges)


def _finishing(table: FolderSettings | RenditionSettings, edges: str) -> finishing.Finishing:
    return finishing.Finishing(
        output=table.output,
        format=table.format,
        background=table.background,
        name_template=table.name_template,
        edges=edges,
        crop=table.crop,
        margin=finishing.parse_margin(table.margin),
        canvas=finishing.parse_canvas(table.canvas),
        align=table.align,
        max_side=table.max_side,
        shadow=table.shadow,
    )


# Each top-level key's model: the keys a misspelt one may have meant.
TABLES: dict[str, type[BaseModel]] = {
    "api": ApiSettings,
    "credits": CreditSettings,
    "queue": QueueSettings,
    "metrics": MetricsSettings,
    "hooks": HooksSettings,
    "logging": LoggingSettings,
    "folder": FolderSettings,
    "rendition": RenditionSettings,  # [[folder.rendition]], for "did you mean"
}


class _SectionsFromEnv(EnvSettingsSource):
    """The environment, limited to the six sections ([[folder]] is file-only).

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
    hooks: HooksSettings = HooksSettings()
    logging: LoggingSettings = LoggingSettings()
    folder: tuple[FolderSettings, ...] = ()
    # Filled by load_settings, never from the file or the environment.
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    api_key_source: str = Field(default="", exclude=True)
    page_token: SecretStr | None = Field(default=None, exclude=True, repr=False)
    page_token_source: str = Field(default="", exclude=True)
    webhook_secret: SecretStr | None = Field(default=None, exclude=True, repr=False)
    webhook_secret_source: str = Field(default="", exclude=True)
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


def host_id(settings: Settings) -> str:
    """This daemon's name in a fleet: ``queue.host_id``, by default the host name."""
    return settings.queue.host_id.strip() or socket.gethostname()
