"""A local WithoutBG-compatible API server: ``bgsyncd emulator``, tests and the demo.

It serves the whole contract of ``reference/withoutbg-api.md`` on loopback with
the standard library's threading HTTP server: the five endpoints, the
``X-API-Key`` check, a per-key sliding-window rate limit, credits and their
expiry, the size limit, content sniffing, and a real cut-out (``matte.py``).
Checks run in this order: key (401) -> rate limit (429) -> expiry (403) ->
credits (402) -> size (413) -> media (415) -> injected faults (latency, 500,
dropped connection) -> processing. Every error body is ``{"error": "..."}``.

Like the live service it also accepts what the vendor's own clients send (the
JSON field ``image_base64``, the multipart field ``file``) and answers base64
results under both names. ``/_emulator/state`` and ``/_emulator/requests``
are a control surface for tests and the demo: no key, no rate limit, not
recorded. The key is never logged.
"""

from __future__ import annotations

import argparse
import math
import random
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from types import FrameType, TracebackType
from typing import Any, TextIO

from bgsyncd.emulator_http import (
    CREDIT_PATH,
    IMAGE_ROUTES,
    RecordedRequest,
    Refusal,
    _Server,
    parse_multipart,
)

# Defined in emulator_http.py (the handler makes them); importable from here as before.
__all__ = [
    "CREDIT_PATH", "IMAGE_ROUTES", "SETTINGS", "Emulator", "RecordedRequest", "Refusal", "main",
    "parse_multipart",
]  # fmt: skip

SETTINGS = (
    "credits", "keys", "expires", "latency", "fail_rate", "drop_rate",
    "rate_limit", "rate_window", "max_bytes",
)  # fmt: skip


class Emulator:
    """The emulated account and its HTTP server; thread-safe, a context manager."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        keys: Iterable[str] = ("test-key",),
        credits: int = 1000,
        expires: datetime | None = None,
        rate_limit: int = 7,
        rate_window: float = 60.0,
        latency: float = 0.0,
        fail_rate: float = 0.0,
        drop_rate: float = 0.0,
        max_bytes: int = 10 * 1024 * 1024,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        log: TextIO | None = None,
    ) -> None:
        """Bind the server at once (``url`` is known); ``log`` gets one line per request."""
        self._lock = threading.Lock()
        self._settings: dict[str, Any] = {}
        self._reserved = 0  # credits held by image requests in progress
        self._windows: dict[str, deque[float]] = {}
        self._records: list[RecordedRequest] = []
        self._rng = random.Random(seed)
        self._clock = clock
        self._log = log
        self._log_lock = threading.Lock()  # apart: a blocked stderr must not stall the account
        self.stopping = threading.Event()
        self.configure(
            keys=keys, credits=credits, expires=expires, rate_limit=rate_limit,
            rate_window=rate_window, latency=latency, fail_rate=fail_rate,
            drop_rate=drop_rate, max_bytes=max_bytes,
        )  # fmt: skip
        self._server = _Server((host, port), self)
        bound_port = self._server.server_address[1]
        self.url = f"http://[{host}]:{bound_port}" if ":" in host else f"http://{host}:{bound_port}"
        self._thread: threading.Thread | None = None
        self._serving = False
        self._closed = False

    # lifecycle

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
        self.stopping.set()  # wakes requests sleeping on injected latency
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

    # configuration and inspection

    def configure(self, **changes: Any) -> None:
        """Change settings live (names in ``SETTINGS``); ValueError on a bad name or value."""
        checked = {name: _check_setting(name, value) for name, value in changes.items()}
        with self._lock:
            self._settings.update(checked)

    @property
    def credits(self) -> int:
        """The credits left (requests in progress are charged when they finish)."""
        with self._lock:
            return int(self._settings["credits"])

    def state(self) -> dict[str, Any]:
        """Every setting but the keys, and the number of recorded requests."""
        with self._lock:
            state = {k: v for k, v in self._settings.items() if k != "keys"}
            state["expires"] = _iso(state["expires"])
            state["request_count"] = len(self._records)
            return state

    def requests(self) -> list[RecordedRequest]:
        """The recorded API requests, in arrival order (a copy)."""
        with self._lock:
            return list(self._records)

    # used by the request handler

    def setting(self, name: str) -> Any:
        """The current value of one setting."""
        with self._lock:
            return self._settings[name]

    def admit(self, key: str | None, *, image: bool) -> None:
        """Run the account checks in order; reserve a credit for an image request."""
        with self._lock:
            s = self._settings
            if key is None or key not in s["keys"]:
                raise Refusal(401, "Invalid API Key")
            now, window, limit = self._clock(), s["rate_window"], s["rate_limit"]
            log = self._windows.setdefault(key, deque())
            while log and log[0] + window <= now:
                log.popleft()
            if len(log) >= limit:
                # The request that must leave the window before one more fits in it.
                frees_at = log[len(log) - limit] + window
                retry = str(max(1, math.ceil(frees_at - now)))
                raise Refusal(429, "Rate limit exceeded", {"Retry-After": retry})
            log.append(now)  # a 429 is not counted: only admitted requests enter the log
            if not image:
                return
            if s["expires"] <= datetime.now(timezone.utc):
                raise Refusal(403, "Credits expired")
            if s["credits"] - self._reserved <= 0:
                raise Refusal(402, "Insufficient credits")
            self._reserved += 1

    def settle(self, charged: bool) -> None:
        """Release the credit ``admit`` reserved, spending it when ``charged``."""
        with self._lock:
            self._reserved -= 1
            if charged:
                self._settings["credits"] = max(0, self._settings["credits"] - 1)

    def faults(self) -> tuple[float, str | None]:
        """The latency to add and the fault to inject (``"fail"``, ``"drop"`` or None)."""
        with self._lock:
            s = self._settings
            fail = self._rng.random() < s["fail_rate"]
            drop = self._rng.random() < s["drop_rate"]
            return s["latency"], "fail" if fail else "drop" if drop else None

    def credit_answer(self) -> dict[str, Any]:
        """The body of ``GET /available-credit``."""
        with self._lock:
            s = self._settings
            return {"available_credits": s["credits"], "expiration_date": _iso(s["expires"])}

    def record(self, request: RecordedRequest, elapsed: float) -> None:
        """Keep ``request`` and write its log line (method, path, status; never the key)."""
        with self._lock:
            self._records.append(request)
        self.log(f"{request.method} {request.path} {request.status} {elapsed * 1000:.0f}ms")

    def log(self, line: str) -> None:
        """Write one line to the log stream, if any."""
        if self._log is None:
            return
        with self._log_lock:
            try:
                self._log.write(line + "\n")
                self._log.flush()
            except (OSError, ValueError):  # a closed stderr must not break serving
                pass


def _check_setting(name: str, value: Any) -> Any:
    """Validate and normalise one setting; ValueError names the setting."""
    if name == "keys":
        keys = [value] if isinstance(value, str) else list(value)
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError("keys must be a non-empty list of non-empty strings")
        return frozenset(keys)
    if name == "expires":
        return _expiry(value)
    if name in ("credits", "rate_limit", "max_bytes"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer")
        if value < (0 if name == "credits" else 1):
            raise ValueError(f"{name} is out of range: {value}")
        return value
    if name in ("latency", "fail_rate", "drop_rate", "rate_window"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number")
        high = 1.0 if name.endswith("_rate") else math.inf
        if not 0 <= value <= high or (name == "rate_window" and value == 0):
            raise ValueError(f"{name} is out of range: {value}")
        return float(value)
    raise ValueError(f"unknown setting {name!r}; known: {', '.join(SETTINGS)}")


def _expiry(value: datetime | str | None) -> datetime:
    """An aware UTC datetime from a datetime, an ISO string (``Z`` allowed) or None."""
    if value is None:
        return datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=365)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"expires is not an ISO 8601 date-time: {value!r}") from None
    if not isinstance(value, datetime):
        raise ValueError("expires must be a date-time")
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _iso(moment: datetime) -> str:
    """``2024-12-31T23:59:59Z``, the reference's format."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: list[str] | None = None) -> int:
    """``bgsyncd emulator``: serve until SIGINT or SIGTERM, then exit 0."""
    parser = argparse.ArgumentParser(
        prog="bgsyncd emulator",
        description="A local WithoutBG-compatible API for tests and demos. "
        "Its --key is a test key of its own, never a real one.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--key", action="append", help="an accepted key (repeatable)")
    parser.add_argument("--credits", type=int, default=1000)
    parser.add_argument("--expires", help="ISO 8601 expiry (default: a year from now)")
    parser.add_argument("--rate-limit", type=int, default=7, help="requests per window per key")
    parser.add_argument("--rate-window", type=float, default=60.0, help="seconds")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="fraction answering 500")
    parser.add_argument("--drop-rate", type=float, default=0.0, help="fraction charged, unanswered")
    parser.add_argument("--max-bytes", type=int, default=10 * 1024 * 1024)
    parser.add_argument("--seed", type=int)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): return, do not exit
        return exc.code if isinstance(exc.code, int) else 0
    try:
        emulator = Emulator(
            host=args.host, port=args.port, keys=args.key or ["test-key"], credits=args.credits,
            expires=_expiry(args.expires) if args.expires else None, rate_limit=args.rate_limit,
            rate_window=args.rate_window, latency=args.latency, fail_rate=args.fail_rate,
            drop_rate=args.drop_rate, max_bytes=args.max_bytes, seed=args.seed, log=sys.stderr,
        )  # fmt: skip
    except ValueError as exc:
        print(f"bgsyncd emulator: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"bgsyncd emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    previous = _on_signals(stop)
    try:
        emulator.start()
        print(f"emulator listening on {emulator.url}", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        emulator.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _on_signals(stop: threading.Event) -> dict[int, Any]:
    """Make SIGINT and SIGTERM set ``stop``; return the handlers to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may install handlers; the caller stops us

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()  # a flag only: the main loop does the stopping

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
