"""``Emulator``: the emulated account bound to its HTTP server, with a lifecycle.

Tests, benchmarks and the demo build one (``with Emulator(...) as emu``); its
``url`` is known once it is constructed. It is an ``Account``, so a test may
subclass it and observe the rules (``admit``, ``settle``) as requests pass.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from bgsyncd.emulator.account import Account
from bgsyncd.emulator.handler import EmulatorServer


class Emulator(Account):
    """The emulated account and its HTTP server; thread-safe, a context manager."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, **settings: Any) -> None:
        """Bind the server at once (``url`` is known); ``settings`` as for ``Account``."""
        super().__init__(**settings)
        self._server = EmulatorServer((host, port), self)
        bound_port = self._server.server_address[1]
        self.url = f"http://[{host}]:{bound_port}" if ":" in host else f"http://{host}:{bound_port}"
        self._thread: threading.Thread | None = None
        self._serving = False
        self._closed = False

    def start(self) -> Emulator:
        """Serve in a daemon thread; return self."""
        self._thread = threading.Thread(target=self.serve_forever, name="emulator", daemon=True)
        self._serving = True
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop()`` is called from another one."""
        self._serving = True
        self._server.serve_forever(poll_interval=0.02)  # stop() waits one poll

    def stop(self) -> None:
        """Stop serving, close the socket and every open connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._server.stopping.set()  # wakes requests sleeping on latency or bandwidth
        if self._serving:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join()
        self._server.server_close()
        self._server.close_connections()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
