"""Where the API key comes from: the environment, a key file, or a systemd credential;
and the webhook signing secret: ``hooks.secret_file`` or the credential (SPEC §10).

Part of loading the configuration (``config.loading.load_settings`` calls it). No
message here ever quotes the key or the secret, or the content of a file that
should hold one.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from bgsyncd.errors import ConfigError, describe_os_error

KEY_ENV = "BGSYNCD_API_KEY"
CREDENTIAL = "$CREDENTIALS_DIRECTORY/api_key"
# An HTTP header value: a key with spaces or control characters would make the
# HTTP library raise an error that quotes it, so such a key is refused here.
_KEY_TEXT = re.compile(r"[\x21-\x7e]+")
_MAX_KEY_BYTES = 4096
_KEY_SHAPE = "does not hold an API key: expected one line of printable ASCII without spaces"
_TOKEN_SHAPE = "does not hold a token: expected one line of printable ASCII without spaces"  # noqa: S105 (a message)
_SIGNING_SHAPE = "does not hold a secret: expected one line of printable ASCII without spaces"


@dataclass(frozen=True)
class ApiKey:
    """The key (None when none is configured), where it came from, and warnings."""

    value: SecretStr | None
    source: str
    warnings: tuple[str, ...] = ()


def resolve_api_key(key_file: str, env: Mapping[str, str], file: Path) -> ApiKey:
    """``$BGSYNCD_API_KEY``, else ``api.key_file``, else the systemd credential.

    ``file`` is the configuration file, named in messages about ``api.key_file``.
    A configured key file that is missing is an error; a missing credential is not.
    """
    value = env.get(KEY_ENV, "").strip()
    if value:
        if not _KEY_TEXT.fullmatch(value):
            raise ConfigError(f"{KEY_ENV} (environment) {_KEY_SHAPE}")
        return ApiKey(SecretStr(value), KEY_ENV)
    if key_file:
        return _read_key_file(Path(key_file), "api.key_file", f"{file}: invalid configuration: ")
    if env.get("CREDENTIALS_DIRECTORY"):
        path = Path(env["CREDENTIALS_DIRECTORY"]) / "api_key"
        if os.path.lexists(path):
            return _read_key_file(path, CREDENTIAL, "")
    return ApiKey(None, "")


def resolve_page_token(token_file: str, env: Mapping[str, str], file: Path) -> ApiKey:
    """The status page's token (SPEC §11): ``metrics.page_token_file``, else the systemd
    credential ``page_token``; read, checked and kept secret like the API key."""
    return _secret_file_or_credential(
        token_file, "metrics.page_token_file", "page_token", env, file, _TOKEN_SHAPE
    )


def resolve_webhook_secret(secret_file: str, env: Mapping[str, str], file: Path) -> ApiKey:
    """``hooks.secret_file``, else the systemd credential ``webhook_secret``, else none."""
    return _secret_file_or_credential(
        secret_file, "hooks.secret_file", "webhook_secret", env, file, _SIGNING_SHAPE
    )


def _secret_file_or_credential(
    configured: str, key: str, credential: str, env: Mapping[str, str], file: Path, shape: str
) -> ApiKey:
    """The file named by the configuration's ``key``, else ``$CREDENTIALS_DIRECTORY/credential``.

    A configured file that is missing is an error naming ``key``; a missing
    credential means none.
    """
    if configured:
        prefix = f"{file}: invalid configuration: "
        return _read_key_file(Path(configured), key, prefix, shape)
    if env.get("CREDENTIALS_DIRECTORY"):
        path = Path(env["CREDENTIALS_DIRECTORY"]) / credential
        if os.path.lexists(path):
            return _read_key_file(path, f"$CREDENTIALS_DIRECTORY/{credential}", "", shape)
    return ApiKey(None, "")


def _read_key_file(path: Path, key: str, prefix: str, shape: str = _KEY_SHAPE) -> ApiKey:
    def fail(message: str) -> ConfigError:
        return ConfigError(f"{prefix}{key}: {message}")

    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):  # a FIFO would block the read forever
            raise fail(f"{path} is not a regular file")
        with path.open("rb") as fh:
            data = fh.read(_MAX_KEY_BYTES + 1)
    except FileNotFoundError:
        raise fail(f"{path} does not exist") from None
    except OSError as exc:
        raise fail(f"cannot read {path}: {describe_os_error(exc)}") from None
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        text = "\n"  # not a key; reported below, without the bytes
    if not text:
        raise fail(f"{path} is empty")
    if len(data) > _MAX_KEY_BYTES or not _KEY_TEXT.fullmatch(text):
        raise fail(f"{path} {shape}")
    warnings = []
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.append(
            f"{key}: {path} is readable by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it"
        )
    return ApiKey(SecretStr(text), key, tuple(warnings))
