"""The emulator's HTTP side: the threading server and the request handler.

``EmulatorServer`` is the threading HTTP server bound for one ``Account``; it
tracks its open connections so a stop can close idle keep-alive ones. The
handler answers one connection: it routes a path to the API or to the
``/_emulator/`` control surface, asks the account to admit, charge and record
each API request, reads bodies (``bodies``, paced by the ``bandwidth``
setting), makes the cut-out (``matte``) and turns a ``Refusal`` into a JSON
error answer.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import socketserver
import sys
import threading
import time
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from bgsyncd.emulator.account import Account, RecordedRequest, Refusal
from bgsyncd.emulator.bodies import (
    BadFraming,
    BodyTooLarge,
    ClientGone,
    PacedReader,
    Stream,
    content_length,
    form_image,
    is_chunked,
    json_image,
    read_body,
)
from bgsyncd.emulator.matte import UndecodableImage, cut_out, decode, encode_png

CREDIT_PATH = "/available-credit"
# path -> (JSON with base64 rather than multipart, alpha channel rather than cut-out)
IMAGE_ROUTES: dict[str, tuple[bool, bool]] = {
    "/v1.0/image-without-background": (False, False),
    "/v1.0/image-without-background-base64": (True, False),
    "/v1.0/alpha-channel": (False, True),
    "/v1.0/alpha-channel-base64": (True, True),
}
_CONTROL_BODY_LIMIT = 1024 * 1024


class EmulatorServer(ThreadingHTTPServer):
    """The threading HTTP server, knowing its account and its open connections."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], account: Account) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.account = account
        self.stopping = threading.Event()  # wakes requests sleeping on latency or bandwidth
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, Handler)

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


class Handler(BaseHTTPRequestHandler):
    """One connection: HTTP/1.1 keep-alive, JSON errors, exact Content-Length reads."""

    protocol_version = "HTTP/1.1"
    server_version = "bgsyncd-emulator"
    sys_version = ""
    disable_nagle_algorithm = True  # headers and body go out in two writes
    timeout = 60  # an idle keep-alive connection does not hold a thread forever
    server: EmulatorServer

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
        self.server.account.log(f"{self.command or '-'} - {code}")

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
            except ClientGone:
                self.close_connection = True
            except Exception as exc:  # a bug must answer 500, not kill the connection thread
                self.server.account.log(f"internal error on {path}: {type(exc).__name__}: {exc}")
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
        account = self.server.account
        account.admit(self.headers.get("X-API-Key"), image=route is not None)
        if route is None:
            latency, _ = account.faults()
            self.server.stopping.wait(latency)
            self._send_json(200, account.credit_answer())
            return
        try:
            answer = self._process(*route)
        except BaseException:
            account.settle(charged=False)
            raise
        # Charged before answering, so a client that has the answer sees the new balance,
        # and charged even if the answer never arrives (the work is done).
        account.settle(charged=True)
        if answer is not None:
            self._send(200, *answer)

    def _process(self, as_json: bool, alpha_only: bool) -> tuple[bytes, str] | None:
        """The body and type of the answer to an admitted image request; None to drop it."""
        account = self.server.account
        max_bytes = account.setting("max_bytes")
        too_large = f"File size too large (>{max_bytes / 1048576:g}MB)"
        # base64 takes 4/3 of the bytes, multipart a little: anything far above is refused
        # from its Content-Length before it is read.
        body = self._read_body(max_bytes * 2 + 64 * 1024, too_large)
        content_type = self.headers.get("Content-Type", "")
        image = json_image(body) if as_json else form_image(body, content_type)
        self._image = (hashlib.sha256(image).hexdigest(), len(image))
        if len(image) > max_bytes:
            raise Refusal(413, too_large)
        try:
            picture = decode(image)
        except UndecodableImage as exc:
            raise Refusal(415, str(exc)) from None
        latency, fault = account.faults()
        self.server.stopping.wait(latency)
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
        account = self.server.account
        if path == "/_emulator/requests" and self.command == "GET":
            self._send_json(200, [asdict(r) for r in account.requests()])
        elif path == "/_emulator/state" and self.command == "GET":
            self._send_json(200, account.state())
        elif path == "/_emulator/state" and self.command == "POST":
            body = self._read_body(_CONTROL_BODY_LIMIT, "Body too large")
            try:
                changes = json.loads(body)
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object of settings")
                account.configure(**changes)
            except (ValueError, TypeError) as exc:
                raise Refusal(400, str(exc)) from None
            self._send_json(200, account.state())
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
        self.server.account.record(request, time.monotonic() - self._begun)

    # bodies

    def _read_body(self, limit: int, too_large: str) -> bytes:
        """Read the whole body of at most ``limit`` bytes, paced by ``bandwidth``."""
        self._body_done = True  # whatever happens now, the body is consumed or the link closed
        bandwidth = self.server.account.setting("bandwidth")
        stream: Stream = self.rfile
        if bandwidth:
            stream = PacedReader(
                self.rfile, bandwidth, self.server.account.clock, self.server.stopping.wait
            )
        try:
            return read_body(stream, self.headers, limit, too_large)
        except BodyTooLarge:  # answered at once, then drained and closed
            self.close_connection = self._linger = True
            raise
        except BadFraming:
            self.close_connection = True
            raise

    def _skip_body(self) -> None:
        """Consume an unread body so the connection stays usable; close it if huge."""
        if self._body_done:
            return
        self._body_done = True
        chunked = is_chunked(self.headers)
        length = 0 if chunked else content_length(self.headers)
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
