"""The emulator's HTTP side: the server, the request handler, request bodies.

``_Server`` is the threading HTTP server that ``Emulator`` binds; it tracks its
open connections so a stop can close idle keep-alive ones. ``_Handler`` answers
one connection: it routes a path to the API or to the ``/_emulator/`` control
surface, asks the ``Emulator`` to admit, charge and record each API request,
and turns a ``Refusal`` into a JSON error answer. Bodies are read here, with
Content-Length or chunked, never beyond a limit; ``parse_multipart`` and the
base64 JSON reader take the uploaded image out of them. ``RecordedRequest`` and
``Refusal`` live here (the handler makes them) and are re-exported by
``emulator.py``, which imports this module, never the other way round.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import socket
import socketserver
import sys
import threading
import time
from dataclasses import asdict, dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import collapse_rfc2231_value
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bgsyncd.matte import UndecodableImage, cut_out, decode, encode_png

if TYPE_CHECKING:
    from bgsyncd.emulator import Emulator

CREDIT_PATH = "/available-credit"
# path -> (JSON with base64 rather than multipart, alpha channel rather than cut-out)
IMAGE_ROUTES: dict[str, tuple[bool, bool]] = {
    "/v1.0/image-without-background": (False, False),
    "/v1.0/image-without-background-base64": (True, False),
    "/v1.0/alpha-channel": (False, True),
    "/v1.0/alpha-channel-base64": (True, True),
}
_CONTROL_BODY_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class RecordedRequest:
    """One API request as the emulator saw it (control requests are not recorded)."""

    started: float  # time.time() when the request line arrived
    method: str
    path: str
    status: int  # 0: the connection was dropped without an answer
    image_sha256: str | None  # of the decoded uploaded image; None without one
    image_size: int | None


class Refusal(Exception):
    """An error answer: HTTP status, the ``error`` text and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class _Server(ThreadingHTTPServer):
    """The threading HTTP server, knowing its emulator and its open connections."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS look-up of the host (slow offline)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed, reset) is normal here: say nothing."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)

    def track(self, connection: socket.socket, open_: bool) -> None:
        """Remember or forget a client connection, so ``stop()`` can close it."""
        with self._connections_lock:
            (self._connections.add if open_ else self._connections.discard)(connection)

    def close_connections(self) -> None:
        """Shut down every open client connection (idle keep-alive ones included)."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _ClientGone(Exception):
    """The client closed the connection before sending its whole body."""


class _Handler(BaseHTTPRequestHandler):
    """One connection: HTTP/1.1 keep-alive, JSON errors, exact Content-Length reads."""

    protocol_version = "HTTP/1.1"
    server_version = "bgsyncd-emulator"
    sys_version = ""
    disable_nagle_algorithm = True  # headers and body go out in two writes
    timeout = 60  # an idle keep-alive connection does not hold a thread forever
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        super().finish()

    def parse_request(self) -> bool:
        self._started = time.time()
        self._body_done = False
        self._linger = False
        self._status = 0
        self._image: tuple[str, int] | None = None
        self._api_path: str | None = None  # set for API requests: those are recorded
        return super().parse_request()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default access log: it would go to stderr unformatted."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_POST

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors the base class detects (bad request line, headers) answer JSON too."""
        self.close_connection = True
        self._send_json(code, {"error": message or HTTPStatus(code).phrase})
        self.server.emulator.log(f"{self.command or '-'} - {code}")

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path  # the query is dropped: it never reaches a log line
        control = path.startswith("/_emulator/")
        self._api_path = None if control else path
        self._begun = time.monotonic()
        try:
            try:
                if control:
                    self._control(path)
                else:
                    self._api(path)
            except Refusal as refusal:
                self._skip_body()
                self._send_json(refusal.status, {"error": refusal.message}, refusal.headers)
            except _ClientGone:
                self.close_connection = True
            except Exception as exc:  # a bug must answer 500, not kill the connection thread
                self.server.emulator.log(f"internal error on {path}: {type(exc).__name__}: {exc}")
                self.close_connection = True
                self._send_json(500, {"error": "Internal server error"})
        except OSError:  # the client went away while we answered
            self.close_connection = True
        self._record()  # if no answer was sent: a dropped connection (status 0)
        if self._linger:
            self._drain()

    def _api(self, path: str) -> None:
        route = IMAGE_ROUTES.get(path)
        if route is None and path != CREDIT_PATH:
            raise Refusal(404, f"Not found: {path}")
        allowed = "GET" if route is None else "POST"
        if self.command != allowed:
            raise Refusal(405, "Method not allowed", {"Allow": allowed})
        emulator = self.server.emulator
        emulator.admit(self.headers.get("X-API-Key"), image=route is not None)
        if route is None:
            latency, _ = emulator.faults()
            emulator.stopping.wait(latency)
            self._send_json(200, emulator.credit_answer())
            return
        try:
            answer = self._process(*route)
        except BaseException:
            emulator.settle(charged=False)
            raise
        # Charged before answering, so a client that has the answer sees the new balance,
        # and charged even if the answer never arrives (the work is done).
        emulator.settle(charged=True)
        if answer is not None:
            self._send(200, *answer)

    def _process(self, as_json: bool, alpha_only: bool) -> tuple[bytes, str] | None:
        """The body and type of the answer to an admitted image request; None to drop it."""
        emulator = self.server.emulator
        max_bytes = emulator.setting("max_bytes")
        too_large = f"File size too large (>{max_bytes / 1048576:g}MB)"
        # base64 takes 4/3 of the bytes, multipart a little: anything far above is refused
        # from its Content-Length before it is read.
        body = self._read_body(max_bytes * 2 + 64 * 1024, too_large)
        image = _json_image(body) if as_json else _form_image(body, self.headers)
        self._image = (hashlib.sha256(image).hexdigest(), len(image))
        if len(image) > max_bytes:
            raise Refusal(413, too_large)
        try:
            picture = decode(image)
        except UndecodableImage as exc:
            raise Refusal(415, str(exc)) from None
        latency, fault = emulator.faults()
        emulator.stopping.wait(latency)
        if fault == "fail":
            raise Refusal(500, "Internal server error")
        if fault == "drop":  # charged, then no answer at all: an unknown outcome
            self.close_connection = True
            return None
        result = cut_out(picture)
        png = encode_png(result.getchannel("A") if alpha_only else result)
        if not as_json:
            return png, "image/png"
        text = base64.b64encode(png).decode("ascii")
        names = ("alpha_channel", "alpha_base64") if alpha_only else ("image", "image_base64")
        return json.dumps(dict.fromkeys(names, text)).encode("ascii"), "application/json"

    def _control(self, path: str) -> None:
        emulator = self.server.emulator
        if path == "/_emulator/requests" and self.command == "GET":
            self._send_json(200, [asdict(r) for r in emulator.requests()])
        elif path == "/_emulator/state" and self.command == "GET":
            self._send_json(200, emulator.state())
        elif path == "/_emulator/state" and self.command == "POST":
            body = self._read_body(_CONTROL_BODY_LIMIT, "Body too large")
            try:
                changes = json.loads(body)
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object of settings")
                emulator.configure(**changes)
            except (ValueError, TypeError) as exc:
                raise Refusal(400, str(exc)) from None
            self._send_json(200, emulator.state())
        else:
            raise Refusal(404, f"Not found: {path}")

    def _record(self) -> None:
        """Record this API request once; before its answer is sent, so a client sees it."""
        if self._api_path is None:
            return
        sha, size = self._image or (None, None)
        request = RecordedRequest(
            self._started, self.command, self._api_path, self._status, sha, size
        )
        self._api_path = None
        self.server.emulator.record(request, time.monotonic() - self._begun)

    # bodies

    def _read_body(self, limit: int, too_large: str) -> bytes:
        """Read the whole body (Content-Length or chunked) of at most ``limit`` bytes."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit, too_large)
        self._body_done = True
        length = self._content_length()
        if length < 0:
            self.close_connection = True
            raise Refusal(400, "Invalid Content-Length")
        if length > limit:  # answer at once, then drain and close
            self.close_connection = self._linger = True
            raise Refusal(413, too_large)
        body = self.rfile.read(length)
        if len(body) < length:
            raise _ClientGone
        return body

    def _read_chunked(self, limit: int, too_large: str) -> bytes:
        self._body_done = True  # whatever happens now, the connection cannot be reused
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise _ClientGone
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise Refusal(400, "Invalid chunked body") from None
            if size == 0:
                break
            total += size
            if total > limit:
                self.close_connection = self._linger = True
                raise Refusal(413, too_large)
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise _ClientGone
            chunks.append(chunk)
            self.rfile.readline(1024)  # the line break after the chunk
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)

    def _content_length(self) -> int:
        """The declared body length: 0 when absent, -1 when invalid."""
        try:
            return max(-1, int(self.headers.get("Content-Length", "0")))
        except ValueError:
            return -1

    def _skip_body(self) -> None:
        """Consume an unread body so the connection stays usable; close it if huge."""
        if self._body_done:
            return
        self._body_done = True
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        length = 0 if chunked else self._content_length()
        if chunked or not 0 <= length <= 64 * 1024 * 1024:
            self.close_connection = self._linger = True
            return
        while length > 0:
            got = len(self.rfile.read(min(length, 1024 * 1024)))
            if got == 0:
                self.close_connection = True
                return
            length -= got

    def _drain(self) -> None:
        """After answering early, read and drop what the client still sends (briefly).

        Closing a socket with unread data makes the kernel send RST, and the client
        may lose the answer it has not read yet; a short drain lets it arrive.
        """
        deadline = time.monotonic() + 5.0
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1.0)
            while time.monotonic() < deadline and self.rfile.read1(1024 * 1024):
                pass
        except OSError:
            pass

    # answers

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode("utf-8")
        self._send(status, body, "application/json", headers)

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self._status = status
        self._record()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _json_image(body: bytes) -> bytes:
    """The image of a base64 request: ``image`` or ``image_base64``, data URLs allowed."""
    try:
        document = json.loads(body)
    except ValueError:
        raise Refusal(400, "Request body is not valid JSON") from None
    if not isinstance(document, dict):
        raise Refusal(400, "Request body must be a JSON object")
    text = next((document[k] for k in ("image", "image_base64") if k in document), None)
    if not isinstance(text, str):
        raise Refusal(400, "Missing field 'image' (a base64 string)")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    text = "".join(text.split())
    altchars = b"-_" if "-" in text or "_" in text else None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars, validate=True)
    except (binascii.Error, ValueError):
        raise Refusal(400, "Field 'image' is not valid base64") from None


def _form_image(body: bytes, headers: Message) -> bytes:
    """The image of a multipart request: the field ``image``, else ``file``."""
    try:
        fields = parse_multipart(body, headers.get("Content-Type", ""))
    except ValueError as exc:
        raise Refusal(400, f"Invalid multipart body: {exc}") from None
    for name in ("image", "file"):
        if name in fields:
            return fields[name]
    raise Refusal(400, "Missing form field 'image'")


def parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """The fields of a ``multipart/form-data`` body by name (the first of a name wins).

    Splitting on the delimiter handles any binary content in one pass; only the
    small header block of each part goes through the email parser (quoting,
    RFC 2231 names). Bare LF line breaks are accepted from sloppy clients.
    """
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_boundary()
    if header.get_content_type() != "multipart/form-data" or not boundary:
        raise ValueError("expected Content-Type multipart/form-data with a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0:
        raise ValueError("the boundary does not occur in the body")
    end_of_line = body.find(b"\n", start)
    newline = b"\r\n" if body[end_of_line - 1 : end_of_line] == b"\r" else b"\n"
    pieces = (newline + body).split(newline + delimiter)
    fields: dict[str, bytes] = {}
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            return fields  # the close delimiter
        # The delimiter line may carry transport padding before its line break.
        head, found, content = piece.partition(newline)[2].partition(newline * 2)
        if not found:
            raise ValueError("a part has no header block")
        part = BytesHeaderParser().parsebytes(head + b"\r\n\r\n")
        name = part.get_param("name", header="content-disposition")
        if name is not None:
            fields.setdefault(collapse_rfc2231_value(name), content)
    raise ValueError("the body ends without the closing boundary")
