"""The sd_notify protocol: state datagrams to systemd, without libsystemd.

systemd passes ``NOTIFY_SOCKET`` (a filesystem path, or an abstract socket name
starting with ``@``) and, with ``WatchdogSec=``, ``WATCHDOG_USEC``. Each message
is one datagram of ``KEY=value`` lines. Outside systemd (no ``NOTIFY_SOCKET``)
every call does nothing, and no call ever raises: a lost notification must not
stop the daemon (systemd's watchdog will notice if it matters).

No call ever blocks either: a datagram socket makes the sender wait once the
reader's queue holds ``net.unix.max_dgram_qlen`` datagrams, so every message
is sent with ``MSG_DONTWAIT`` and dropped when the queue is full. A failing
socket is logged once (``notify.failed``), not once a message, until a
message passes again.

WATCHDOG=1 goes out only when systemd asked for it (``WATCHDOG_USEC``, and
``WATCHDOG_PID`` ours when set), at most once per half of that interval; the
main loop sleeps no longer than the next ping allows (:meth:`Notifier.sleep_for`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

from bgsyncd.logs import get_logger

_log = get_logger("bgsyncd.notify")

# A wait returns a hair before its deadline by the clock's rounding: not a reason to skip a ping.
_DUE_SLACK = 0.01
# The shortest sleep the watchdog asks of the main loop (as a part of the
# interval): a ping skipped because a thread had died must not make it spin.
_MIN_SLEEP_PART = 1 / 8


class Notifier:
    """Sends sd_notify messages to ``address``; a no-op when ``address`` is None."""

    def __init__(
        self,
        address: str | None,
        watchdog_usec: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._address: str | bytes | None = address
        if address and address.startswith("@"):
            # Abstract namespace: the name starts with a NUL byte instead of "@".
            self._address = b"\0" + address[1:].encode()
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._clock = clock
        self._next_ping: float | None = None  # None: the first ping is due at once
        self._lock = threading.Lock()  # the main loop and the publisher both send
        self._failing = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], pid: int | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from ``environ``.

        ``WATCHDOG_PID``, when set, must be our pid (``pid``, default ``os.getpid()``),
        else the watchdog is meant for another process and is ignored.
        """
        address = environ.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        try:
            usec = int(environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            usec = None
        watchdog_pid = environ.get("WATCHDOG_PID")
        if watchdog_pid and watchdog_pid.strip() != str(os.getpid() if pid is None else pid):
            usec = None
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def notify(self, **fields: object) -> bool:
        """Send ``KEY=value`` lines in one datagram, never waiting; True if it was sent."""
        if self._address is None or not fields:
            return False
        # A value may not span lines: the protocol is one assignment a line.
        text = "\n".join(f"{k}={' '.join(str(v).splitlines())}" for k, v in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # MSG_DONTWAIT: a full queue (nobody reading) is EAGAIN, not a wait.
                sock.sendto(text.encode(), socket.MSG_DONTWAIT, self._address)
        except OSError as exc:
            with self._lock:
                first, self._failing = not self._failing, True
            if first:
                _log.warning(
                    "notify.failed",
                    fields=sorted(fields),
                    error=str(exc),
                    note="dropped; later failures are not logged until a message passes",
                )
            return False
        with self._lock:
            self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up is finished (and STATUS= when given)."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """STATUS=: one line shown by ``systemctl status``."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """WATCHDOG=1 (the main loop is alive), when one is due; True if it was sent.

        Nothing without ``WATCHDOG_USEC``; else at most once per
        :attr:`watchdog_interval`. A ping that is dropped still counts: the
        next one waits its turn.
        """
        interval = self.watchdog_interval
        if interval is None:
            return False
        now = self._clock()
        with self._lock:
            if self._next_ping is not None and now < self._next_ping - _DUE_SLACK:
                return False
            self._next_ping = now + interval
        return self.notify(WATCHDOG=1)

    def sleep_for(self, longest: float) -> float:
        """How long the main loop may sleep: ``longest``, or less when a ping falls due sooner."""
        interval = self.watchdog_interval
        if interval is None:
            return longest
        with self._lock:
            due = 0.0 if self._next_ping is None else self._next_ping - self._clock()
        return min(longest, max(due, interval * _MIN_SLEEP_PART))

    def stopping(self) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.notify(STOPPING=1)

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC=: ask for ``seconds`` more before systemd gives up."""
        return self.notify(EXTEND_TIMEOUT_USEC=max(0, int(seconds * 1_000_000)))
