"""The configuration's cross-key rules, and the values only a rule can read.

Part of loading the configuration (``config.loading.load_settings`` calls
``check_rules``); every problem is a ``ConfigError`` naming the key and the
file. ``parse_listen`` also gives the metrics server its address.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from bgsyncd.config import layout
from bgsyncd.config.messages import invalid
from bgsyncd.config.schema import FolderSettings, Settings

# A smaller answer cap would refuse an ordinary 1024-pixel matte.
MIN_RESPONSE_BYTES = 1024 * 1024

# Whether libpq reads a password from a DSN; ValueError when it cannot read the DSN
# at all, ConfigError when the PostgreSQL extra is not installed.
DsnReader = Callable[[str], bool]


def check_rules(
    settings: Settings, file: Path, *, read_dsn: DsnReader, check_folders: bool = True
) -> None:
    """The rules no single field can check: combinations, folders, overlaps."""
    if not settings.api.base_url.startswith(("http://", "https://")):
        raise invalid(
            file,
            "api.base_url",
            f"must start with http:// or https:// (got {settings.api.base_url!r})",
        )
    if 0 < settings.api.max_response_bytes < MIN_RESPONSE_BYTES:
        raise invalid(
            file,
            "api.max_response_bytes",
            f"{settings.api.max_response_bytes} bytes would refuse ordinary answers: use 0"
            f" (automatic) or at least {MIN_RESPONSE_BYTES} (1 MiB)",
        )
    _check_backend(settings, file, read_dsn)
    try:
        parse_listen(settings.metrics.listen)
    except ValueError as exc:
        raise invalid(file, "metrics.listen", str(exc)) from None
    names: dict[str, int] = {}
    for i, f in enumerate(settings.folder):
        key = f"folder[{i}]"
        if f.name in names:
            raise invalid(
                file,
                f"{key}.name",
                f"folder[{names[f.name]}] already has the name {f.name!r} "
                "(a name defaults to the inbox's last path component; set name to tell them apart)",
            )
        names[f.name] = i
        if f.format == "jpeg" and not f.background:
            raise invalid(
                file, f"{key}.background", 'format = "jpeg" needs a background colour ("#rrggbb")'
            )
        templates = [(f"{key}.name_template", f.name_template)] + [
            (f"{key}.rendition[{j}].name_template", r.name_template)
            for j, r in enumerate(f.rendition)
        ]
        for template_key, template in templates:
            if "{folder}" in template and ("/" in f.name or "\0" in f.name):
                raise invalid(
                    file, template_key, f"uses {{folder}}, and the folder's name {f.name!r} has a /"
                )
        for j, r in enumerate(f.rendition):
            if r.format == "jpeg" and not r.background:
                raise invalid(
                    file,
                    f"{key}.rendition[{j}].background",
                    'format = "jpeg" needs a background colour ("#rrggbb")',
                )
        if f.after_success == "move" and f.done is None:
            raise invalid(file, f"{key}.done", 'after_success = "move" needs a done folder')
        _check_hooks(f, key, settings.webhook_secret is not None, file)
    if check_folders:
        layout.check_folders(settings.folder, file)


def _check_hooks(f: FolderSettings, key: str, has_secret: bool, file: Path) -> None:
    """SPEC §10: a command to run, and a webhook URL that is signed where it can be read."""
    for name, argv in (("on_done", f.on_done), ("on_quarantine", f.on_quarantine)):
        if argv and not argv[0].strip():
            raise invalid(file, f"{key}.{name}", "the command (the list's first item) is empty")
        if any("\0" in arg for arg in argv):
            raise invalid(file, f"{key}.{name}", "an item holds a NUL character (\\u0000)")
    if not f.webhook:
        return
    url, host = _webhook_host(f.webhook)
    if url is None or host is None:
        raise invalid(
            file,
            f"{key}.webhook",
            "expected an http:// or https:// URL with a valid host and port"
            " (no spaces or control characters; an international name is fine)",
        )
    if url.scheme == "http" and not has_secret and not is_loopback(host):
        raise invalid(
            file,
            f"{key}.webhook",
            f"an http:// URL to {host}, which is not loopback, needs a signing secret:"
            " set hooks.secret_file or pass the systemd credential webhook_secret, or use https://",
        )


def _webhook_host(
    webhook: str,
) -> tuple[urllib.parse.SplitResult, str] | tuple[None, None]:
    """The URL and its host, when the webhook client can call it; else (None, None).

    Parsed without httpx (which only ``api/`` imports), as strictly as it will be:
    no whitespace or control character, a valid port, an IP address or a name of
    labels of 1 to 63 characters (an ``xn--`` label must be valid Punycode).
    """
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in webhook):
        return None, None
    try:
        url = urllib.parse.urlsplit(webhook)
        host = url.hostname
        _ = url.port
    except ValueError:
        return None, None
    if url.scheme not in ("http", "https") or not host:
        return None, None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return url, host
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return None, None
    labels = ascii_host.removesuffix(".").split(".")
    if len(ascii_host) > 253 or not all(_label_ok(label) for label in labels):
        return None, None
    return url, host


def _label_ok(label: str) -> bool:
    """One DNS label of a host name as the webhook client takes it."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,63}", label):
        return False
    if label[:4].lower() != "xn--":
        return True
    try:
        return bool(label[4:].encode("ascii").decode("punycode"))
    except UnicodeError:
        return False


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_backend(settings: Settings, file: Path, read_dsn: DsnReader) -> None:
    """``[queue]`` backend rules: a DSN for PostgreSQL, never one carrying a password."""
    queue = settings.queue
    if queue.backend == "sqlite":
        for i, f in enumerate(settings.folder):
            if f.shared:
                raise invalid(
                    file, f"folder[{i}].shared", 'a shared folder needs backend = "postgresql"'
                )
        return
    if not queue.dsn.strip():
        raise invalid(
            file,
            "queue.dsn",
            'backend = "postgresql" needs a libpq DSN'
            ' (e.g. "postgresql://bgsyncd@db.internal/bgsyncd")',
        )
    _check_dsn(queue.dsn, file, read_dsn)


def _check_dsn(dsn: str, file: Path, read_dsn: DsnReader) -> None:
    """Refuse a DSN that libpq reads a password from, or cannot read; never echo it.

    libpq's own parser decides (``pass%77ord=`` is ``password=`` to it): the
    PostgreSQL engine's reader, handed in by the backend choice, so that a
    SQLite configuration never loads psycopg.
    """
    try:
        has_password = read_dsn(dsn)
    except ValueError:
        raise invalid(
            file,
            "queue.dsn",
            "libpq cannot read it as a connection string"
            ' ("key=value ..." or "postgresql://user@host/database")',
        ) from None
    if has_password:
        raise invalid(
            file,
            "queue.dsn",
            "must not carry a password: put it in PGPASSFILE or ~/.pgpass, in PGPASSWORD,"
            " or in the systemd credential db_password",
        )


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
