"""The small HTTP server for /metrics and /healthz, in a daemon thread.

It serves the metrics through a WSGI app it is given (prometheus_client's, made
by :mod:`bgsyncd.metrics`, which alone imports that library) and answers
/healthz from a ``healthy`` callable; it knows nothing else of the metrics.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from bgsyncd.logs import get_logger

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

_log = get_logger("bgsyncd.metrics")


class MetricsServer:
    """Serves ``metrics_app`` on /metrics and ``healthy`` on /healthz: what ``Metrics`` starts."""

    def __init__(self, metrics_app: WSGIApplication, healthy: Callable[[], bool]) -> None:
        self._metrics_app = metrics_app
        self._healthy = healthy
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        """The bound port once started (useful with port 0), else None."""
        return self._server.server_port if self._server is not None else None

    def start(self, host: str, port: int) -> None:
        """Serve on ``host``:``port`` in a daemon thread; nothing if already serving."""
        if self._server is not None:
            return
        server_class = _Server6 if ":" in host else _Server
        self._server = make_server(host, port, self._app, server_class, _QuietHandler)
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
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
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

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can
        # hang for seconds without DNS; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])
        self.setup_environ()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds are not worth a log line."""
