"""The API client: what it sends, what it accepts, and how every failure is mapped.

Two real loopback servers: a small scripted stub (for answers the emulator never
gives: other field names, malformed bodies, dropped connections, slow answers,
Retry-After dates) and the project's emulator for the reference behaviour.
"""

from __future__ import annotations

import base64
import email.utils
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from bgsyncd import __version__, errors
from bgsyncd.api.client import Client, Credits
from bgsyncd.api.endpoints import ENDPOINTS
from bgsyncd.emulator import Emulator
from tests.support.helpers import open_image, product_image, transparent_png

KEY = "sk-test-7f3a9c1e5b2d4a6f8e0c"  # distinctive, so a leak is found by substring
PNG = transparent_png()


@dataclass
class Seen:
    """One request as the stub received it."""

    method: str
    path: str
    headers: Message
    body: bytes
    peer: tuple[str, int]


# What the stub does with a request: answer (status, headers, body), or "drop" the
# connection after reading it, or stall ("slow") until the test ends.
Action = tuple[int, dict[str, str], bytes] | str


@dataclass
class Stub:
    """A scripted HTTP/1.1 server on loopback."""

    action: Action = (200, {}, PNG)
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def answer(self, status: int, body: bytes | dict[str, Any] | str, **headers: str) -> None:
        """Answer every following request with ``status`` and ``body``."""
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.action = (status, {k.replace("_", "-"): v for k, v in headers.items()}, body)


def _handler(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 5  # an idle keep-alive connection ends by itself

        def do_GET(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            peer = (str(self.client_address[0]), int(self.client_address[1]))
            stub.seen.append(Seen(self.command, self.path, self.headers, body, peer))
            action = stub.action
            if action == "slow":
                stub.release.wait(5)
            if isinstance(action, str):  # drop, or slow after its wait: close, no answer
                self.close_connection = True
                return
            status, headers, payload = action
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_POST = do_GET

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def stub() -> Iterator[Stub]:
    state = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield state
    state.release.set()  # let a stalled handler finish before shutting down
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def make_client() -> Iterator[Callable[..., Client]]:
    clients: list[Client] = []

    def make(url: str, key: str = KEY, timeout: float = 5.0, **kwargs: Any) -> Client:
        clients.append(Client(url, key, timeout, **kwargs))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def _multipart(seen: Seen) -> Message:
    head = f"Content-Type: {seen.headers['Content-Type']}\r\n\r\n".encode()
    return BytesParser(policy=HTTP).parsebytes(head + seen.body)


def _assert_no_key(exc: BaseException, key: str = KEY) -> None:
    assert key not in str(exc)
    assert key not in repr(exc)
    assert key not in getattr(exc, "message", "")
    # No chained httpx exception: its request carries the key in its headers.
    assert exc.__cause__ is None
    assert exc.__suppress_context__ or exc.__context__ is None


# -- sending strictly -------------------------------------------------------------------


def test_multipart_endpoints_send_what_the_reference_says(stub: Stub, make_client: Any) -> None:
    client = make_client(stub.url)
    jpeg = product_image()
    assert client.remove_background(jpeg, "photo.jpg") == PNG
    assert client.alpha_channel(jpeg) == PNG
    paths = [(s.method, s.path) for s in stub.seen]
    assert paths == [("POST", "/v1.0/image-without-background"), ("POST", "/v1.0/alpha-channel")]
    for seen in stub.seen:
        assert seen.headers["X-API-Key"] == KEY
        assert seen.headers["User-Agent"] == f"bgsyncd/{__version__} (+python-httpx)"
        parts = list(_multipart(seen).iter_parts())  # type: ignore[attr-defined]
        assert [p.get_param("name", header="content-disposition") for p in parts] == ["image"]
        assert parts[0].get_content_type() == "image/jpeg"
        assert parts[0].get_payload(decode=True) == jpeg
    first = next(_multipart(stub.seen[0]).iter_parts())  # type: ignore[attr-defined]
    assert first.get_filename() == "photo.jpg"


def test_json_endpoints_send_only_the_image_field(stub: Stub, make_client: Any) -> None:
    client = make_client(stub.url)
    image = product_image(fmt="PNG")
    stub.answer(200, {"image": base64.b64encode(PNG).decode(), "alpha_channel": "unused"})
    assert client.remove_background_base64(image) == PNG
    stub.answer(200, {"alpha_channel": base64.b64encode(PNG).decode()})
    assert client.alpha_channel_base64(image) == PNG
    assert [s.path for s in stub.seen] == [
        "/v1.0/image-without-background-base64",
        "/v1.0/alpha-channel-base64",
    ]
    for seen in stub.seen:
        assert seen.headers["Content-Type"] == "application/json"
        assert json.loads(seen.body) == {"image": base64.b64encode(image).decode()}


def test_credits_is_a_get_and_the_base_path_is_kept(stub: Stub, make_client: Any) -> None:
    client = make_client(stub.url + "/proxy/")
    stub.answer(200, {"available_credits": 3, "expiration_date": "2024-12-31T23:59:59Z"})
    assert client.available_credits() == Credits(
        3, datetime(2024, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    )
    assert [(s.method, s.path, s.body) for s in stub.seen] == [
        ("GET", "/proxy/available-credit", b"")
    ]


def test_one_connection_is_reused(stub: Stub, make_client: Any) -> None:
    client = make_client(stub.url)
    for _ in range(3):
        client.remove_background(PNG)
    assert len({s.peer for s in stub.seen}) == 1


# -- receiving liberally ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "field"),
    [
        ("remove_background_base64", "image_base64"),
        ("alpha_channel_base64", "alpha_base64"),
        ("alpha_channel_base64", "alpha_channel"),
    ],
)
def test_base64_answers_accept_both_field_names(
    stub: Stub, make_client: Any, method: str, field: str
) -> None:
    stub.answer(200, {field: base64.b64encode(PNG).decode()})
    assert getattr(make_client(stub.url), method)(PNG) == PNG


UTC = timezone.utc


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"available_credits": 1000, "expiration_date": "2024-12-31T23:59:59Z"},
         Credits(1000, datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC))),
        ({"credit": "42"}, Credits(42, None)),
        ({"credit": 7.0, "expiration_date": "2025-01-01T00:00:00+02:00"},
         Credits(7, datetime(2024, 12, 31, 22, 0, 0, tzinfo=UTC))),
        ({"available_credits": 5, "expiration_date": None}, Credits(5, None)),
        ({"available_credits": " 0 ", "expiration_date": "next tuesday"}, Credits(0, None)),
        ({"available_credits": 9, "expiration_date": "2030-06-01T12:00:00"},
         Credits(9, datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC))),
    ],
)  # fmt: skip
def test_credits_are_read_liberally(
    stub: Stub, make_client: Any, body: dict[str, Any], expected: Credits
) -> None:
    stub.answer(200, body)
    credits = make_client(stub.url).available_credits()
    assert credits == expected
    assert credits.expires_at is None or credits.expires_at.tzinfo is not None


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("remove_background", b""),
        ("remove_background", b'{"error": "but a 200"}'),
        ("alpha_channel", b"\x89PN"),
        ("remove_background_base64", b"<html>not json</html>"),
        ("remove_background_base64", b'["image"]'),
        ("remove_background_base64", b'{"result": "aGVsbG8="}'),
        ("remove_background_base64", b'{"image": "!!! not base64 !!!"}'),
        ("alpha_channel_base64", b'{"alpha_channel": "aGVsbG8="}'),  # valid base64, not an image
        ("alpha_channel_base64", b'{"alpha_channel": 12}'),
        ("available_credits", b'{"credits_left": 4}'),
        ("available_credits", b'{"available_credits": "plenty"}'),
        ("available_credits", b'{"available_credits": true}'),
    ],
)
def test_unusable_200_is_an_unusable_answer(
    stub: Stub, make_client: Any, method: str, body: bytes
) -> None:
    stub.answer(200, body)
    client = make_client(stub.url)
    call = getattr(client, method)
    with pytest.raises(errors.UnusableAnswer) as caught:
        call() if method == "available_credits" else call(PNG)
    assert caught.value.status == 200
    assert caught.value.outcome_unknown is False
    assert isinstance(caught.value, errors.TransientError)


# -- statuses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "reason"),
    [
        (400, errors.PermanentFileError, "rejected_by_api"),
        (401, errors.InvalidApiKey, "invalid_api_key"),
        (402, errors.InsufficientCredits, "insufficient_credits"),
        (403, errors.CreditsExpired, "credits_expired"),
        (413, errors.FileTooLarge, "too_large"),
        (415, errors.UnsupportedMedia, "unsupported_media"),
        (422, errors.PermanentFileError, "rejected_by_api"),
        (404, errors.ServerError, None),
        (500, errors.ServerError, None),
        (503, errors.ServerError, None),
    ],
)
def test_status_mapping(
    stub: Stub, make_client: Any, status: int, kind: type[errors.ApiError], reason: str | None
) -> None:
    stub.answer(status, {"error": "Error description"})
    with pytest.raises(kind) as caught:
        make_client(stub.url).remove_background(PNG)
    assert type(caught.value) is kind
    assert caught.value.status == status
    assert f"HTTP {status}" in str(caught.value)
    assert "Error description" in str(caught.value)
    assert getattr(caught.value, "reason", None) == reason
    if isinstance(caught.value, errors.ServerError):
        assert caught.value.outcome_unknown is False


def test_gateway_timeout_may_have_been_charged(stub: Stub, make_client: Any) -> None:
    stub.answer(504, "<html>Gateway Time-out</html>")
    with pytest.raises(errors.ServerError) as caught:
        make_client(stub.url).remove_background(PNG)
    assert caught.value.outcome_unknown is True


def test_a_400_on_the_credit_check_is_not_a_file_error(stub: Stub, make_client: Any) -> None:
    stub.answer(400, {"error": "bad request"})
    with pytest.raises(errors.ServerError):
        make_client(stub.url).available_credits()


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"detail": "Invalid API key"}, "Invalid API key"),
        ({"error": "Invalid API key", "detail": "ignored"}, "Invalid API key"),
        ({"detail": [{"loc": ["body", "image"], "msg": "field required"}]},
         '[{"loc":["body","image"],"msg":"field required"}]'),
        ("plain text failure", "plain text failure"),
    ],
)  # fmt: skip
def test_error_text_comes_from_error_or_detail(
    stub: Stub, make_client: Any, body: dict[str, Any] | str, text: str
) -> None:
    stub.answer(401, body)
    with pytest.raises(errors.InvalidApiKey) as caught:
        make_client(stub.url).available_credits()
    assert str(caught.value) == f"available-credit: HTTP 401: {text}"


def test_long_error_bodies_are_truncated(stub: Stub, make_client: Any) -> None:
    stub.answer(500, "x" * 5000)
    with pytest.raises(errors.ServerError) as caught:
        make_client(stub.url).remove_background(PNG)
    assert len(str(caught.value)) < 260


FIXED_NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("12", 12.0),
        ("1.5", 1.5),
        (email.utils.formatdate(FIXED_NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(FIXED_NOW - 30, usegmt=True), None),  # past: wait for the window
        ("-5", None),
        ("soon", None),
        (None, None),
    ],
)
def test_retry_after_in_seconds_or_as_a_date(
    stub: Stub, make_client: Any, header: str | None, expected: float | None
) -> None:
    headers = {} if header is None else {"Retry_After": header}
    stub.answer(429, {"error": "Rate limit exceeded"}, **headers)
    with pytest.raises(errors.RateLimited) as caught:
        make_client(stub.url, clock=lambda: FIXED_NOW).remove_background(PNG)
    assert caught.value.status == 429
    assert caught.value.retry_after == expected


# -- transport failures -------------------------------------------------------------------


def test_dropped_connection_after_sending_has_unknown_outcome(stub: Stub, make_client: Any) -> None:
    stub.action = "drop"
    observed: list[tuple[str, str, float]] = []
    client = make_client(stub.url, observe=lambda *a: observed.append(a))
    with pytest.raises(errors.ConnectionFailed) as caught:
        client.remove_background(PNG)
    assert caught.value.outcome_unknown is True
    assert caught.value.status is None
    assert len(stub.seen) == 1 and len(stub.seen[0].body) > len(PNG)  # the upload arrived
    assert [(e, c) for e, c, _ in observed] == [("image-without-background", "error")]
    _assert_no_key(caught.value)


def test_slow_answer_is_a_read_timeout_with_unknown_outcome(stub: Stub, make_client: Any) -> None:
    stub.action = "slow"
    client = make_client(stub.url, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(errors.RequestTimeout) as caught:
        client.alpha_channel(PNG)
    assert time.monotonic() - started < 1.5
    assert caught.value.outcome_unknown is True
    assert "ReadTimeout" in str(caught.value)
    _assert_no_key(caught.value)


def test_refused_connection_was_never_sent(make_client: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    observed: list[str] = []
    client = make_client(f"http://127.0.0.1:{port}", observe=lambda e, c, s: observed.append(c))
    with pytest.raises(errors.ConnectionFailed) as caught:
        client.available_credits()
    assert caught.value.outcome_unknown is False
    assert observed == ["error"]
    _assert_no_key(caught.value)


@pytest.mark.parametrize(
    ("raised", "kind", "outcome_unknown"),
    [
        (httpx.ConnectError, errors.Unreachable, False),  # refused, DNS, TLS, no route
        (httpx.ConnectTimeout, errors.RequestTimeout, False),
        (httpx.PoolTimeout, errors.RequestTimeout, False),
        (httpx.WriteError, errors.ConnectionFailed, False),
        (httpx.WriteTimeout, errors.RequestTimeout, False),
        (httpx.ProxyError, errors.ConnectionFailed, False),
        (httpx.ReadTimeout, errors.RequestTimeout, True),
        (httpx.ReadError, errors.ConnectionFailed, True),
        (httpx.RemoteProtocolError, errors.ConnectionFailed, True),
        (httpx.DecodingError, errors.ConnectionFailed, True),
    ],
)
def test_every_httpx_failure_is_mapped(
    make_client: Any,
    raised: type[httpx.RequestError],
    kind: type[errors.TransientError],
    outcome_unknown: bool,
) -> None:
    # Write and pool timeouts cannot be produced reliably on loopback; a transport
    # that raises stands in for the network here, and only here.
    def fail(request: httpx.Request) -> httpx.Response:
        raise raised(f"failed sending with {request.headers['X-API-Key']}", request=request)

    client = make_client("https://api.withoutbg.com", transport=httpx.MockTransport(fail))
    with pytest.raises(kind) as caught:
        client.remove_background(PNG)
    assert type(caught.value) is kind
    assert caught.value.outcome_unknown is outcome_unknown
    assert raised.__name__ in str(caught.value)
    _assert_no_key(caught.value)


# -- gate, observe, construction ------------------------------------------------------------


def test_gate_runs_before_each_request_and_stopped_propagates(stub: Stub, make_client: Any) -> None:
    events: list[str] = []

    def gate() -> None:
        events.append(f"gate:{len(stub.seen)}")
        if events.count("200") == 2:
            raise errors.Stopped("stopping")

    client = make_client(stub.url, gate=gate, observe=lambda e, c, s: events.append(c))
    client.remove_background(PNG)
    stub.answer(200, {"credit": 1})
    client.available_credits()
    with pytest.raises(errors.Stopped):
        client.available_credits()
    assert events == ["gate:0", "200", "gate:1", "200", "gate:2"]
    assert len(stub.seen) == 2  # nothing sent after Stopped


def test_observe_gets_endpoint_code_and_duration_and_cannot_break_a_request(
    stub: Stub, make_client: Any
) -> None:
    observed: list[tuple[str, str, float]] = []

    def observe(endpoint: str, code: str, seconds: float) -> None:
        observed.append((endpoint, code, seconds))
        raise RuntimeError("metrics are broken")

    client = make_client(stub.url, observe=observe)
    assert client.alpha_channel(PNG) == PNG
    stub.answer(402, {"error": "Insufficient credits"})
    with pytest.raises(errors.InsufficientCredits):
        client.remove_background(PNG)
    assert [(e, c) for e, c, _ in observed] == [
        ("alpha-channel", "200"),
        ("image-without-background", "402"),
    ]
    assert all(0 <= s < 5 for _, _, s in observed)


@pytest.mark.parametrize(
    "url", ["api.withoutbg.com", "ftp://api.withoutbg.com", "https://", "", "http://[::1"]
)
def test_base_url_must_be_http_or_https(url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        Client(url, KEY, 5)


def test_key_that_cannot_be_a_header_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError) as caught:
        Client("https://api.withoutbg.com", KEY + "\n", 5)
    assert KEY not in str(caught.value)


def test_context_manager_closes_the_client(stub: Stub) -> None:
    with Client(stub.url, KEY, 5) as client:
        assert client.remove_background(PNG) == PNG
    with pytest.raises(errors.Stopped):
        client.remove_background(PNG)
    assert KEY not in repr(client)


def test_key_echoed_by_the_server_is_scrubbed(stub: Stub, make_client: Any) -> None:
    stub.answer(401, {"error": f"key {KEY} is not valid"})
    with pytest.raises(errors.InvalidApiKey) as caught:
        make_client(stub.url).remove_background(PNG)
    assert "key *** is not valid" in str(caught.value)
    _assert_no_key(caught.value)


# -- against the emulator -------------------------------------------------------------------


@pytest.fixture
def emulator() -> Iterator[Callable[..., Emulator]]:
    started: list[Emulator] = []

    def start(**options: Any) -> Emulator:
        settings: dict[str, Any] = {"keys": [KEY], "credits": 50, "rate_limit": 100, "seed": 1}
        started.append(Emulator(**(settings | options)).start())
        return started[-1]

    yield start
    for emu in started:
        emu.stop()


def test_emulator_every_endpoint_returns_usable_images(
    emulator: Callable[..., Emulator], make_client: Any
) -> None:
    emu = emulator(credits=10)
    calls: list[tuple[str, str]] = []
    gates: list[None] = []
    client = make_client(
        emu.url, gate=lambda: gates.append(None), observe=lambda e, c, s: calls.append((e, c))
    )
    image = product_image(64, 48)
    for data in (client.remove_background(image, "p.jpg"), client.remove_background_base64(image)):
        cutout = open_image(data)
        assert (cutout.format, cutout.mode, cutout.size) == ("PNG", "RGBA", (64, 48))
    for data in (client.alpha_channel(image), client.alpha_channel_base64(image)):
        mask = open_image(data)
        assert (mask.format, mask.mode, mask.size) == ("PNG", "L", (64, 48))
    credits = client.available_credits()
    assert credits.available == 6
    assert len(gates) == 5 == len(emu.requests())
    assert calls == [(endpoint, "200") for endpoint in ENDPOINTS]


def test_emulator_credits_and_expiry(emulator: Callable[..., Emulator], make_client: Any) -> None:
    expires = datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    emu = emulator(credits=17, expires=expires)
    assert make_client(emu.url).available_credits() == Credits(17, expires)


@pytest.mark.parametrize(
    ("setup", "image", "kind"),
    [
        ({"wrong_key": True}, "jpeg", errors.InvalidApiKey),
        ({"credits": 0}, "jpeg", errors.InsufficientCredits),
        ({"expired": True}, "jpeg", errors.CreditsExpired),
        ({"max_bytes": 1000}, "big", errors.FileTooLarge),
        ({}, "text", errors.UnsupportedMedia),
        ({"fail_rate": 1.0}, "jpeg", errors.ServerError),
    ],
)
def test_emulator_errors_map_and_never_show_the_key(
    emulator: Callable[..., Emulator],
    make_client: Any,
    setup: dict[str, Any],
    image: str,
    kind: type[errors.ApiError],
) -> None:
    setup = dict(setup)
    wrong_key, expired = setup.pop("wrong_key", False), setup.pop("expired", False)
    emu = emulator(**setup)
    if expired:
        emu.configure(expires=datetime.now(timezone.utc) - timedelta(days=1))
    key = "sk-wrong-0123456789abcdef" if wrong_key else KEY
    data = {
        "jpeg": product_image(),
        "big": product_image(400, 400, "PNG"),
        "text": b"just some text, not an image\n" * 10,
    }[image]
    client = make_client(emu.url, key=key)
    for call in (client.remove_background, client.alpha_channel_base64):
        with pytest.raises(kind) as caught:
            call(data)
        _assert_no_key(caught.value, key)
        _assert_no_key(caught.value, KEY)
    if kind is errors.ServerError:
        assert caught.value.status == 500


def test_emulator_rate_limit_gives_429_with_retry_after(
    emulator: Callable[..., Emulator], make_client: Any
) -> None:
    emu = emulator(rate_limit=3, rate_window=60.0)
    client = make_client(emu.url)
    for _ in range(3):
        client.available_credits()
    with pytest.raises(errors.RateLimited) as caught:
        client.available_credits()
    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 61
    _assert_no_key(caught.value)
