"""Supervision: no thread of the daemon dies silently (SPEC §6).

An exception that escapes any thread's loop (through ``threading.excepthook``)
or the main loop is logged as one ``daemon.crashed`` event with its traceback,
turns ``/healthz`` to 503 at once, and stops the daemon, which exits 1 so that
systemd restarts it: a half-alive daemon would look healthy while doing nothing.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable

from bgsyncd.logs import get_logger
from bgsyncd.ops.metrics import Recorder

log = get_logger("bgsyncd.daemon")


class Supervisor:
    """Turns the first unexpected exception anywhere into a crash of the whole daemon."""

    def __init__(self, recorder: Recorder, stop: Callable[[], None]) -> None:
        self.metrics = recorder
        self._stop = stop
        self.crashed = threading.Event()
        self._previous_hook = threading.excepthook

    def install(self) -> None:
        """Watch every thread (``threading.excepthook``) until :meth:`uninstall`."""
        self._previous_hook = threading.excepthook
        threading.excepthook = self._on_thread_crash

    def uninstall(self) -> None:
        """Give ``threading.excepthook`` back."""
        threading.excepthook = self._previous_hook

    def _on_thread_crash(self, args: threading.ExceptHookArgs) -> None:
        """``threading.excepthook``: an exception escaped some thread's loop."""
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        name = args.thread.name if args.thread is not None else "unknown"
        self.crash(name, args.exc_value)

    def crash(self, thread: str, exc: BaseException) -> None:
        """One ``daemon.crashed`` event, /healthz 503 at once, then stop and exit 1."""
        if self.crashed.is_set():
            return  # the first crash is the one that matters; others follow from it
        self.crashed.set()
        self.metrics.crashed()
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log.critical("daemon.crashed", thread=thread, error=repr(exc), traceback=text)
        self._stop()
