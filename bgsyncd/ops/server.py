"""The small HTTP server for /metrics, /healthz and the status page, in a daemon thread.

It serves the metrics through a WSGI app it is given (prometheus_client's, made
by :mod:`bgsyncd.ops.metrics`, which alone imports that library) and answers
/healthz from a ``healthy`` callable; it knows nothing else of the metrics.

The server itself is bounded (SPEC §6), whatever is served on it: at most
``MAX_CONNECTIONS`` connections at once, each with one thread; one more is
refused (closed at once), and those the kernel has not handed over yet wait
in the listen backlog, holding nothing of the daemon's. A connection has
``REQUEST_SECONDS`` from its accept to send a whole request, however slowly
it trickles, and each write of the answer ``WRITE_SECONDS``. Short of
descriptors (EMFILE, ENFILE), the accept loop waits ``ACCEPT_BACKOFF_SECONDS``
before trying again instead of spinning on a listening socket that stays
readable.
"""

from __future__ import annotations

import io
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from bgsyncd.errors import describe_os_error, is_out_of_descriptors
from bgsyncd.logs import get_logger

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

_log = get_logger("bgsyncd.metrics")

MAX_CONNECTIONS = 64  # held at once: each is one thread and one descriptor
REQUEST_SECONDS = 10.0  # from the accept to a complete request
WRITE_SECONDS = 10.0  # each send of the answer, to a client that does not read it
ACCEPT_BACKOFF_SECONDS = 0.5  # short of descriptors: the wait before accepting again
_WARN_EVERY_SECONDS = 60.0  # refusals and failed accepts: one log line a minute at most


class MetricsServer:
    """Serves ``metrics_app`` on /metrics and ``healthy`` on /healthz: what ``Metrics`` starts."""

    def __init__(self, metrics_app: WSGIApplication, healthy: Callable[[], bool]) -> None:
        self._metrics_app = metrics_app
        self._healthy = healthy
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # The status page (bgsyncd.web), handed in by the service: every path
        # but /metrics and /healthz goes to it when set.
        self.page: WSGIApplication | None = None

    @property
    def port(self) -> int | None:
        """The bound port once started (useful with port 0), else None."""
        return self._server.server_port if self._server is not None else None

    def start(self, host: str, port: int) -> None:
        """Serve on ``host``:``port`` in a daemon thread; nothing if already serving."""
        if self._server is not None:
            return
        server_class = _Server6 if ":" in host else _Server
        self._server = make_server(host, port, self._app, server_class, _Handler)
        # serve_forever polls for shutdown: 0.1 s keeps stop() quick at ten cheap
        # wake-ups a second.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="bgsyncd-metrics",
            daemon=True,
        )
        self._thread.start()
        _log.info("metrics.listening", host=host, port=self.port)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()  # cuts an accept backoff short
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path != "/healthz" and self.page is not None:
            return self.page(environ, start_response)
        if path == "/healthz":
            ok = self._healthy()
            status = "200 OK" if ok else "503 Service Unavailable"
            body = b"ok\n" if ok else b"main loop stalled\n"
        elif path == "/":
            status, body = "200 OK", b"bgsyncd: see /metrics and /healthz\n"
        else:
            status, body = "404 Not Found", b"not found\n"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [body]


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    # The kernel's queue of connections not yet accepted: they wait there at no
    # cost to the daemon (the default of 5 makes clients retry their SYNs).
    request_queue_size = MAX_CONNECTIONS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.stopping = threading.Event()
        self._warned: dict[str, float] = {}
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can
        # hang for seconds without DNS; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])
        self.setup_environ()

    def get_request(self) -> tuple[Any, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if is_out_of_descriptors(exc):
                # The connection stays in the backlog and the socket readable: without
                # a pause the loop would spin at a whole core until a descriptor frees.
                self._warn("metrics.accept_failed", error=describe_os_error(exc))
                self.stopping.wait(ACCEPT_BACKOFF_SECONDS)
            raise  # the connection is not taken; serve_forever goes on

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Take a slot, or refuse the connection (it is closed at once)."""
        if self.slots.acquire(blocking=False):
            return True
        self._warn("metrics.connections_full", limit=MAX_CONNECTIONS)
        return False

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()  # no thread started: its slot is free again
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer is not worth a traceback on stderr."""
        _log.debug("metrics.request_failed", exc_info=True)

    def _warn(self, event: str, **fields: object) -> None:
        now = time.monotonic()
        if now - self._warned.get(event, -_WARN_EVERY_SECONDS) >= _WARN_EVERY_SECONDS:
            self._warned[event] = now
            _log.warning(event, **fields)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(WSGIRequestHandler):
    timeout = WRITE_SECONDS  # the socket's timeout, for the answer's writes

    def setup(self) -> None:
        super().setup()
        # Reads go through a reader that gives the whole request one deadline: a
        # per-read timeout alone lets a client trickling a byte at a time stay forever.
        self.rfile.close()
        deadline = time.monotonic() + REQUEST_SECONDS
        self.rfile = io.BufferedReader(_RequestReader(self.connection, deadline, self.timeout))

    def handle(self) -> None:
        try:
            super().handle()
        except (TimeoutError, ConnectionError):
            self.close_connection = True  # too slow, or gone: the connection just closes

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds are not worth a log line."""


class _RequestReader(io.RawIOBase):
    """A connection's bytes, each read given only the time left before ``deadline``."""

    def __init__(self, sock: socket.socket, deadline: float, timeout: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline
        self._timeout = timeout  # the socket's timeout again after each read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete request within {REQUEST_SECONDS:g} s")
        self._sock.settimeout(left)
        try:
            return self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(self._timeout)
