"""Sockets that keep a whole-request deadline, under the API client's httpx.

httpx's timeouts are per operation (connect, each read, each write), so a server
sending one byte a second never trips them (issue 9, item 2). Here every socket
operation is given only the time left before the request's deadline, and none at all
once it has passed: a request ends within its timeout, first byte to last.
Only :mod:`bgsyncd.api.client` uses this module.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx

DEADLINE_PASSED = "the whole-request deadline (timeout_seconds) passed"


class DeadlineBackend(httpcore.SyncBackend):
    """Sockets whose every connect, read and write gets only the time left.

    httpx's timeouts are per operation, so a server sending a byte a second never
    trips them. The deadline is per thread (each request runs in its caller's thread,
    and a pooled connection serves whoever holds it now).
    """

    def __init__(self) -> None:
        self._local = threading.local()

    @contextlib.contextmanager
    def until(self, deadline: float) -> Iterator[None]:
        """Requests made in this thread inside the block end by ``deadline``."""
        self._local.deadline = deadline
        try:
            yield
        finally:
            self._local.deadline = None

    def left(self, timeout: float | None, late: type[Exception]) -> float | None:
        """``timeout`` shortened to the time left; raise ``late`` when none is."""
        deadline: float | None = getattr(self._local, "deadline", None)
        if deadline is None:
            return timeout
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise late(DEADLINE_PASSED)
        return remaining if timeout is None else min(timeout, remaining)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        """Connect within the time left, and hand back a stream that keeps to it."""
        left = self.left(timeout, httpcore.ConnectTimeout)
        stream = super().connect_tcp(host, port, left, local_address, socket_options)
        return _DeadlineStream(stream, self)


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose reads and writes end by the thread's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, backend: DeadlineBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Read, within the time left."""
        return self._inner.read(max_bytes, self._backend.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Write, within the time left."""
        self._inner.write(buffer, self._backend.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        """Close the socket."""
        self._inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        """The TLS handshake, within the time left; the TLS stream keeps to it too."""
        left = self._backend.left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, left), self._backend
        )

    def get_extra_info(self, info: str) -> Any:
        """What the socket underneath says."""
        return self._inner.get_extra_info(info)


def deadline_transport(backend: DeadlineBackend) -> httpx.HTTPTransport:
    """httpx's own transport, on sockets from ``backend``."""
    transport = httpx.HTTPTransport()
    # httpx takes no network backend; its pool (httpcore's, built just above) takes one
    # per connection it makes from this attribute. test_client_hostile proves it works.
    transport._pool._network_backend = backend
    return transport
