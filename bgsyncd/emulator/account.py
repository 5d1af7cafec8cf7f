"""The emulated account and its rules: keys, rate limit, credits, expiry, faults.

``Account`` knows nothing of HTTP. The request handler asks it to ``admit`` a
request (the checks, in the documented order: key 401 -> rate limit 429 ->
expiry 403 -> credits 402), to ``settle`` the credit it reserved, which
``faults`` to inject, and to ``record`` what happened. A refusal is a
``Refusal`` (status, ``error`` text, headers); the handler turns it into a
JSON answer. Settings change live through ``configure`` (names in
``SETTINGS``). The key is never logged, recorded or shown by ``state``.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TextIO

SETTINGS = (
    "credits", "keys", "expires", "latency", "fail_rate", "drop_rate",
    "rate_limit", "rate_window", "max_bytes", "bandwidth",
)  # fmt: skip


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


class Account:
    """The emulated account: its settings, rate windows, credits and request record.

    Thread-safe: every request thread of the server calls into one instance.
    """

    def __init__(
        self,
        *,
        keys: Iterable[str] = ("test-key",),
        credits: int = 1000,
        expires: datetime | None = None,
        rate_limit: int = 7,
        rate_window: float = 60.0,
        latency: float = 0.0,
        fail_rate: float = 0.0,
        drop_rate: float = 0.0,
        max_bytes: int = 10 * 1024 * 1024,
        bandwidth: int = 0,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        log: TextIO | None = None,
    ) -> None:
        """Validate the settings; ``log`` gets one line per request; ``bandwidth`` 0 is none."""
        self._lock = threading.Lock()
        self._settings: dict[str, Any] = {}
        self._reserved = 0  # credits held by image requests in progress
        self._windows: dict[str, deque[float]] = {}
        self._records: list[RecordedRequest] = []
        self._rng = random.Random(seed)
        self.clock = clock
        self._log = log
        self._log_lock = threading.Lock()  # apart: a blocked stderr must not stall the account
        self.configure(
            keys=keys, credits=credits, expires=expires, rate_limit=rate_limit,
            rate_window=rate_window, latency=latency, fail_rate=fail_rate,
            drop_rate=drop_rate, max_bytes=max_bytes, bandwidth=bandwidth,
        )  # fmt: skip

    # configuration and inspection

    def configure(self, **changes: Any) -> None:
        """Change settings live (names in ``SETTINGS``); ValueError on a bad name or value."""
        checked = {name: check_setting(name, value) for name, value in changes.items()}
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
            state["expires"] = iso(state["expires"])
            state["request_count"] = len(self._records)
            return state

    def requests(self) -> list[RecordedRequest]:
        """The recorded API requests, in arrival order (a copy)."""
        with self._lock:
            return list(self._records)

    def setting(self, name: str) -> Any:
        """The current value of one setting."""
        with self._lock:
            return self._settings[name]

    # the rules, asked by the request handler

    def admit(self, key: str | None, *, image: bool) -> None:
        """Run the account checks in order; reserve a credit for an image request."""
        with self._lock:
            s = self._settings
            if key is None or key not in s["keys"]:
                raise Refusal(401, "Invalid API Key")
            now, window, limit = self.clock(), s["rate_window"], s["rate_limit"]
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
            return {"available_credits": s["credits"], "expiration_date": iso(s["expires"])}

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


def check_setting(name: str, value: Any) -> Any:
    """Validate and normalise one setting; ValueError names the setting."""
    if name == "keys":
        keys = [value] if isinstance(value, str) else list(value)
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError("keys must be a non-empty list of non-empty strings")
        return frozenset(keys)
    if name == "expires":
        return parse_expiry(value)
    if name in ("credits", "rate_limit", "max_bytes", "bandwidth"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer")
        if value < (0 if name in ("credits", "bandwidth") else 1):
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


def parse_expiry(value: datetime | str | None) -> datetime:
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


def iso(moment: datetime) -> str:
    """``2024-12-31T23:59:59Z``, the reference's format."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
