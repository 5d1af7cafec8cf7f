"""Logging: JSON lines on stderr, and the API key redacted wherever it hides."""

from __future__ import annotations

import json
import logging
import socket
import threading
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg
import pytest
import structlog
from psycopg_pool import ConnectionPool

from bgsyncd.logs import configure_logging, get_logger
from tests.support.helpers import wait_until

KEY = "sk-live-4b1d9e7c2a8f6d3e0b5c"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Leave structlog and the root logger as other tests' modules found them."""
    saved = structlog.get_config()
    showwarning = warnings.showwarning
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    structlog.configure(**saved)
    warnings.showwarning = showwarning
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in quiet.items():
        logging.getLogger(name).setLevel(lvl)


def lines(err: str) -> list[dict[str, Any]]:
    """Every stderr line, each of which must be one JSON object."""
    return [json.loads(line) for line in err.splitlines() if line]


def test_one_json_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info")
    log = get_logger("bgsyncd.test")
    log.info("file.queued", folder="products", path="a/b.jpg")
    log.debug("too.detailed")
    log.warning("dispatch.paused", reason="credit_floor")
    out = capsys.readouterr()
    assert out.out == ""
    first, second = lines(out.err)
    assert first["event"] == "file.queued"
    assert first["level"] == "info"
    assert first["folder"] == "products"
    assert first["path"] == "a/b.jpg"
    assert first["logger"] == "bgsyncd.test"
    assert first["timestamp"].endswith("Z")  # ISO 8601, UTC
    assert second["event"] == "dispatch.paused"
    assert second["level"] == "warning"


def test_key_is_redacted_from_every_value(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info", secrets=lambda: [KEY])
    log = get_logger()
    log.info(
        f"event with {KEY}",
        header=f"X-API-Key: {KEY}",
        nested={"deep": [f"a{KEY}b", 3]},
        raw=KEY.encode(),
        error=ValueError(f"bad key {KEY}"),
        count=3,
    )
    err = capsys.readouterr().err
    assert KEY not in err
    (line,) = lines(err)
    assert line["header"] == "X-API-Key: ***"
    assert line["nested"] == {"deep": ["a***b", 3]}
    assert line["event"] == "event with ***"
    assert "***" in line["error"]
    assert line["count"] == 3


def test_key_is_redacted_from_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info", secrets=lambda: [KEY])
    try:
        raise RuntimeError(f"request to https://api/?key={KEY} failed")
    except RuntimeError:
        get_logger().exception("job.failed")
    err = capsys.readouterr().err
    assert KEY not in err
    (line,) = lines(err)
    assert "RuntimeError: request to https://api/?key=*** failed" in line["exception"]


def test_stdlib_logging_goes_through_redaction(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "debug", secrets=lambda: [KEY])
    logging.getLogger("watchdog.observers").warning("cannot watch %s", f"/srv/{KEY}")
    try:
        raise OSError(f"errno with {KEY}")
    except OSError:
        logging.getLogger("somelib").exception("lib failed")
    logging.getLogger("somelib").info("below WARNING: dropped even at debug")
    err = capsys.readouterr().err
    assert KEY not in err
    first, second = lines(err)
    assert first["event"] == "library.warning"
    assert first["text"] == "cannot watch /srv/***"
    assert first["level"] == "warning"
    assert first["logger"] == "watchdog.observers"
    assert second["event"] == "library.error"
    assert second["text"] == "lib failed"
    assert "OSError: errno with ***" in second["exception"]


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_httpx_requests_never_reach_the_log(capsys: pytest.CaptureFixture[str]) -> None:
    """httpx logs request lines at INFO and httpcore header events at DEBUG."""
    configure_logging("json", "debug", secrets=lambda: [])  # even with nothing to redact
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with httpx.Client() as client:
            response = client.get(
                f"http://127.0.0.1:{server.server_port}/v1.0/x?k={KEY}",
                headers={"X-API-Key": KEY},
            )
            assert response.status_code == 200
    finally:
        server.shutdown()
        server.server_close()
    assert capsys.readouterr().err == ""


def test_level_and_key_change_on_reconfigure(capsys: pytest.CaptureFixture[str]) -> None:
    log = get_logger("early")  # made before configuration, as at import time
    bound = log.bind(folder="products")
    current = ["old-key-aaaaaaaa"]
    configure_logging("json", "warning", secrets=lambda: list(current))
    bound.info("hidden")
    bound.warning("shown", note="old-key-aaaaaaaa")
    configure_logging("json", "debug", secrets=lambda: list(current))
    current[0] = "new-key-bbbbbbbb"  # the key was reloaded: redaction follows at once
    bound.debug("now.shown", note="new-key-bbbbbbbb")
    err = capsys.readouterr().err
    assert "aaaaaaaa" not in err
    assert "bbbbbbbb" not in err
    events = [(line["event"], line.get("note"), line.get("folder")) for line in lines(err)]
    assert events == [("shown", "***", "products"), ("now.shown", "***", "products")]


def test_console_format_is_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("console", "info", secrets=lambda: [KEY])
    try:
        raise RuntimeError(KEY)
    except RuntimeError:
        get_logger("c").exception("boom", detail=KEY)
    err = capsys.readouterr().err
    assert "boom" in err
    assert "RuntimeError: ***" in err
    assert KEY not in err
    assert not err.lstrip().startswith("{")


@pytest.mark.parametrize(("fmt", "level"), [("xml", "info"), ("json", "loud")])
def test_bad_settings_are_refused(fmt: str, level: str) -> None:
    with pytest.raises(ValueError, match=r"logging\."):
        configure_logging(fmt, level)


def test_library_warnings_are_one_event_with_the_text_in_a_field(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json", "info", lambda: [KEY])
    long_text = "Callback with id 140 already exists; " * 100 + KEY
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(long_text, RuntimeWarning, stacklevel=1)
    (event,) = lines(capsys.readouterr().err)
    assert event["event"] == "library.warning"
    assert event["level"] == "warning"
    assert event["category"] == "RuntimeWarning"
    assert event["text"] == long_text.replace(KEY, "***")
    assert "test_logs.py:" in event["source"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: a connection there is refused


def test_a_psycopg_pool_warning_is_a_library_event_with_its_text_in_a_field(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json", "info", lambda: [KEY])
    dsn = f"host=127.0.0.1 port={_closed_port()} user=bgsyncd connect_timeout=2"
    pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
        dsn, min_size=1, open=False, name="bgsyncd", reconnect_timeout=30
    )
    pool.open(wait=False)
    seen: list[dict[str, Any]] = []
    try:

        def logged() -> bool:
            seen.extend(lines(capsys.readouterr().err))
            return any(e.get("logger") == "psycopg.pool" for e in seen)

        wait_until(logged, 30, what="psycopg_pool's warning")
    finally:
        pool.close(timeout=5)
    event = next(e for e in seen if e.get("logger") == "psycopg.pool")
    assert event["event"] == "library.warning", event
    assert event["level"] == "warning"
    assert event["text"].startswith("error connecting in 'bgsyncd':"), event


@pytest.mark.parametrize(
    ("logger", "text"),
    [
        ("psycopg.pool", "error connecting in 'bgsyncd': host=db user=u password=pw-4711 x"),
        ("psycopg.pool", "error connecting in 'bgsyncd': password = 'pw 4711' host=db"),
        ("psycopg", "bad dsn postgresql://bgsyncd:pw-4711@db.internal/bgsyncd"),
        ("psycopg.pool", "error connecting in 'bgsyncd': as pgenv-4711 refused"),
        ("watchdog.observers.inotify", "Unable to watch b'/srv/pw-4711': [Errno 28] no space"),
    ],
)
def test_a_password_in_a_library_text_never_reaches_the_log(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, logger: str, text: str
) -> None:
    monkeypatch.setenv("PGPASSWORD", "pgenv-4711")
    # The API key and the watched path's secret-looking name are the configured secrets.
    configure_logging("json", "info", lambda: [KEY, "/srv/pw-4711"])
    logging.getLogger(logger).warning("%s", text)
    err = capsys.readouterr().err
    (event,) = lines(err)
    assert event["event"] == "library.warning"
    assert event["logger"] == logger
    assert "4711" not in err
    assert "***" in event["text"]
