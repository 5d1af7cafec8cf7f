"""The signals a daemon takes, turned into flags for its main loop.

Handlers only set flags ("logging is not safe in a signal handler"): the main
loop, woken by ``wake``, does the work. SIGTERM and SIGINT ask for a stop (a
second one exits at once: leases are given back at the next start); SIGHUP
asks for a reload; SIGUSR1 dumps every thread's stack to stderr.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
from types import FrameType


class Signals:
    """``stop`` and ``reload`` asked for, and ``wake`` for the main loop to see them."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.wake = threading.Event()
        self._signals = 0

    def install(self) -> None:
        """Take the signals (only the main thread can: elsewhere, nothing is done)."""
        if threading.current_thread() is not threading.main_thread():
            return
        # SIGUSR1 dumps every thread's stack to stderr: for debugging a stuck daemon.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    def request_stop(self) -> None:
        """Stop, as SIGTERM would (for a crash or a fleet conflict)."""
        self.stop.set()
        self.wake.set()

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            os._exit(1)  # a second signal: exit at once; leases are recovered at start
        self.stop.set()
        self.wake.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload.set()
        self.wake.set()
