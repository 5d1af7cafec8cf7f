"""Logging: structlog to stderr, one JSON object a line, with the API key redacted.

Every line — from bgsyncd's own structlog loggers and from stdlib ``logging``
(httpx, watchdog), tracebacks included — passes one redaction step that replaces
each current secret with ``***``. A library's record (stdlib ``logging``:
psycopg's pool, watchdog) becomes one ``library.warning`` or ``library.error``
event with the library's text in a field, never as the event's name, and any
connection password in that text hidden. The processor chain is built once and reads a
small mutable state, so :func:`configure_logging` can be called again (reload:
new level, new key) and loggers bound earlier follow it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

REDACTED = "***"
LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# Loggers that would log request lines (URLs, and at DEBUG, header events) at
# INFO and below; held at WARNING whatever the root level says.
_QUIET_LIBRARIES = ("httpx", "httpcore", "hpack", "h11", "h2")

# A library's text may quote connection information (psycopg's "error
# connecting in 'bgsyncd': ..."): a password in it is hidden even when it is
# none of the configured secrets. libpq quotes a value with single quotes.
_CONNINFO_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.IGNORECASE)
_URI_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
# The password libpq reads from our environment, when it is given that way.
_PASSWORD_ENV = "PGPASSWORD"  # noqa: S105 (a variable's name)

_write_lock = threading.Lock()


class _State:
    """What a reload may change; read by the processors on every event."""

    def __init__(self) -> None:
        self.level = logging.INFO
        self.secrets: Callable[[], Sequence[str]] = lambda: ()
        self.last_secrets: tuple[str, ...] = ()
        self.render: Processor = structlog.processors.JSONRenderer()


_state = _State()


# A line kept at the bottom of a terminal under the log lines (``once``'s
# progress bar); "" when there is none.
_status_line = ""
_CLEAR_LINE = "\r\x1b[K"


def _write(line: str) -> None:
    """Write one line to the *current* stderr (tests swap it), in one call.

    With a status line shown, it is wiped first and drawn again below the new
    line, all under one lock: a log line never lands in the middle of it.
    """
    with _write_lock:
        if _status_line:
            sys.stderr.write(f"{_CLEAR_LINE}{line}\n{_status_line}")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def set_status_line(text: str) -> None:
    """Show ``text`` as the terminal's last line, kept below every log line; "" removes it.

    Only for a terminal: the line is redrawn in place with a carriage return,
    so ``text`` must be one line narrower than the terminal.
    """
    global _status_line
    with _write_lock:
        if text != _status_line:
            sys.stderr.write(_CLEAR_LINE + text)
            sys.stderr.flush()
        _status_line = text


def keep_status_line() -> None:
    """Leave the status line on screen as an ordinary line; no status line afterwards."""
    global _status_line
    with _write_lock:
        if _status_line:
            sys.stderr.write(f"{_CLEAR_LINE}{_status_line}\n")
            sys.stderr.flush()
        _status_line = ""


class _StderrLogger:
    """The structlog output: whole lines to stderr, under the lock stdlib logging shares."""

    def msg(self, message: str) -> None:
        """Write ``message`` as one line."""
        _write(message)

    log = debug = info = warning = warn = error = err = critical = fatal = exception = msg
    failure = msg


class _StderrHandler(logging.Handler):
    """Stdlib records rendered by :class:`structlog.stdlib.ProcessorFormatter`."""

    def emit(self, record: logging.LogRecord) -> None:
        """Format (redacting) and write one record."""
        try:
            _write(self.format(record))
        except Exception:
            self.handleError(record)


def _filter_level(_: WrappedLogger, method: str, event: EventDict) -> EventDict:
    # structlog passes the level's name ("warning", "error"...) as the method.
    if LEVELS.get(method, logging.CRITICAL) < _state.level:
        raise structlog.DropEvent
    return event


def _name_logger(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    if "logger_name" in event:
        event.setdefault("logger", event.pop("logger_name"))
    return event


def _library_event(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """A library's stdlib record: ``library.warning`` (``library.error`` from ERROR up).

    The record's text goes in ``text`` (``logger`` names the library), its
    connection passwords hidden; :func:`redact` then hides the secrets.
    """
    text = str(event.get("event", ""))
    text = _CONNINFO_PASSWORD.sub(rf"\g<1>{REDACTED}", text)
    text = _URI_PASSWORD.sub(rf"\g<1>{REDACTED}@", text)
    password = os.environ.get(_PASSWORD_ENV)
    if password:
        text = text.replace(password, REDACTED)
    serious = event.get("level") in ("error", "critical")
    event["event"] = "library.error" if serious else "library.warning"
    event["text"] = text
    return event


def _current_secrets() -> tuple[str, ...]:
    try:
        found = tuple(s for s in _state.secrets() if s)
    except Exception:
        # Unable to ask (key being reloaded?): keep redacting what we knew.
        return _state.last_secrets
    # Longest first, so a secret that contains another is replaced whole.
    _state.last_secrets = tuple(sorted(set(found), key=len, reverse=True))
    return _state.last_secrets


def _scrub(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {_scrub(k, secrets): _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_scrub(v, secrets) for v in value]
    # Exceptions, bytes, paths...: the renderers fall back to repr(), so check that.
    text = repr(value)
    scrubbed = _scrub(text, secrets)
    return value if scrubbed == text else scrubbed


def redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Replace every current secret in every value of ``event`` with ``***``."""
    secrets = _current_secrets()
    if not secrets:
        return event
    return {key: _scrub(value, secrets) for key, value in event.items()}


def _render(logger: WrappedLogger, method: str, event: EventDict) -> str | bytes:
    # Timestamp, level and event first: what a human scans for in a JSON line.
    first = {k: event.pop(k) for k in ("timestamp", "level", "event") if k in event}
    return _state.render(logger, method, {**first, **event})  # type: ignore[return-value]


def _timestamp() -> Processor:
    return structlog.processors.TimeStamper(fmt="iso", utc=True)


# The one chain; what a reload changes lives in _state, read by these processors.
_PROCESSORS: list[Processor] = [
    _filter_level,
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    _name_logger,
    _timestamp(),
    structlog.processors.StackInfoRenderer(),
    # Tracebacks become text here, before redaction sees them.
    structlog.processors.format_exc_info,
    redact,
    _render,
]
_WRAPPER = structlog.make_filtering_bound_logger(logging.DEBUG)  # _filter_level decides
_OUTPUT = _StderrLogger()


def configure_logging(
    format: str, level: str, secrets: Callable[[], Sequence[str]] = lambda: ()
) -> None:
    """Send logs to stderr as ``json`` or ``console`` at ``level``, redacting ``secrets()``.

    ``secrets`` is asked on every event, so a key changed on reload is redacted
    at once. Safe to call again; stdlib ``logging`` is routed here at WARNING
    and above.
    """
    if format not in ("json", "console"):
        raise ValueError(f"logging.format must be 'json' or 'console', got {format!r}")
    if level.lower() not in LEVELS:
        raise ValueError(f"logging.level must be one of {', '.join(LEVELS)}, got {level!r}")
    _state.level = LEVELS[level.lower()]
    _state.secrets = secrets
    _current_secrets()
    if format == "json":
        _state.render = structlog.processors.JSONRenderer()
    else:
        _state.render = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    # Loggers from get_logger() carry the chain themselves; this routes plain
    # structlog.get_logger() calls (and re-asserts it after a test helper
    # replaced the global configuration).
    structlog.configure(
        processors=_PROCESSORS,
        wrapper_class=_WRAPPER,
        logger_factory=lambda *_: _OUTPUT,
        cache_logger_on_first_use=False,
    )
    _configure_stdlib(max(logging.WARNING, _state.level))
    # Libraries' warnings (watchdog has some) become `library.warning` events,
    # not bare text in the JSON stream, and not stdlib's captureWarnings, whose
    # record makes the whole formatted warning the event's *name*.
    logging.captureWarnings(False)
    warnings.showwarning = _show_warning


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning``: one ``library.warning`` event, the text in a field."""
    _warnings_log.warning(
        "library.warning",
        category=category.__name__,
        text=str(message),
        source=f"{filename}:{lineno}",
    )


def _configure_stdlib(level: int) -> None:
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.stdlib.add_log_level,
                _library_event,
                _timestamp(),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact,
                _render,
            ],
        )
    )
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, level))


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """A structlog logger; ``name`` becomes the ``logger`` key. Safe at import time.

    It carries bgsyncd's processor chain and output itself instead of reading
    structlog's global configuration when first used: a logger made or bound
    before :func:`configure_logging` still redacts and writes to stderr.
    """
    # "logger" is a parameter of wrap_logger, hence the rename in _name_logger.
    initial: MutableMapping[str, Any] = {"logger_name": name} if name else {}
    logger: FilteringBoundLogger = structlog.wrap_logger(
        _OUTPUT,
        processors=_PROCESSORS,
        wrapper_class=_WRAPPER,
        cache_logger_on_first_use=True,
        **initial,
    )
    return logger


_warnings_log = get_logger("py.warnings")
