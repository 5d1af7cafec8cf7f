"""The watcher in force, and its replacement when a reload changes the folders.

Swaps run one at a time on one thread, newest configuration last (SPEC §6:
the last configuration read is the one in force, whatever the number of
SIGHUPs), and a stop during a new watcher's start-up scan stops it too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from bgsyncd.config.schema import Settings
from bgsyncd.inbox.watcher import Watcher
from bgsyncd.logs import get_logger

log = get_logger("bgsyncd.watchswap")


class WatcherSwap:
    """Owns the current watcher; :meth:`request` replaces it off the caller's thread."""

    def __init__(self, first: Watcher, make: Callable[[Settings], Watcher]) -> None:
        self.watcher = first
        self._make_watcher = make
        self._swap_cond = threading.Condition()
        self._swap_wanted: tuple[Settings, int] | None = None
        self._swap_stopping = False
        self._starting: Watcher | None = None
        self._swapper = threading.Thread(target=self._swap_loop, name="bgsyncd-reload", daemon=True)

    def start(self) -> None:
        """Start the swapper thread (the first watcher is started by the daemon)."""
        self._swapper.start()

    def start_first(self, stop: threading.Event, wake: threading.Event) -> int | None:
        """Start the first watcher (its start-up scan) so that a stop can cut it short.

        The scan runs on a helper thread while the caller waits for it or for
        ``stop``: signal handlers only set flags, and a scan of a large inbox
        must not hold up SIGTERM. ``wake`` is the caller's wake-up event.
        Returns the files seen, or None when stopped first; raises what the
        start raised.
        """
        outcome: list[int | BaseException] = []

        def start() -> None:
            try:
                outcome.append(self.watcher.start())
            except BaseException as exc:  # handed to the caller below
                outcome.append(exc)
            wake.set()

        starter = threading.Thread(target=start, name="bgsyncd-startup-scan", daemon=True)
        starter.start()
        while starter.is_alive() and not stop.is_set():
            wake.wait(1.0)
            wake.clear()
        if stop.is_set():
            self.watcher.stop()  # abandons the scan
            starter.join(timeout=10)
            return None
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def request(self, settings: Settings, reload: int) -> None:
        """Watch ``settings``' folders soon; a newer request replaces one not yet begun.

        ``reload`` numbers the reload that read ``settings``; ``config.watching``
        names it, so an operator (or a test) knows which reload is in force.
        """
        # Off the main loop: a full scan of a large inbox must not starve
        # the systemd watchdog. The swapper takes the newest wish only.
        with self._swap_cond:
            self._swap_wanted = (settings, reload)
            self._swap_cond.notify_all()

    def _swap_loop(self) -> None:
        """Replace the watcher for each reload that changed the folders, one at a time.

        Only the newest configuration waiting is started (SIGHUPs that came
        during a long start-up scan collapse into one), so the last one read is
        the one in force. The new watcher starts before the old stops (a file
        seen by both is queued once); if it cannot start, the old one goes on.
        A stop during the start-up scan stops the new watcher too.
        """
        while True:
            with self._swap_cond:
                while self._swap_wanted is None and not self._swap_stopping:
                    self._swap_cond.wait()
                if self._swap_stopping:
                    return
                wanted, self._swap_wanted = self._swap_wanted, None
                assert wanted is not None
                settings, reload = wanted
                new = self._starting = self._make_watcher(settings)
            names = [f.name for f in settings.folders]
            try:
                new.start()
            except Exception as exc:
                log.error(
                    "config.watch_failed",
                    reload=reload,
                    error=str(exc),
                    note="still watching the old",
                )
                new.stop()
                with self._swap_cond:
                    self._starting = None
                continue
            with self._swap_cond:
                self._starting = None
                # Another thread may have set it while this one scanned.
                abandoned = self._swap_stop_requested()
                if not abandoned:
                    old, self.watcher = self.watcher, new
            if abandoned:
                new.stop()
                log.info("config.watch_abandoned", folders=names, reload=reload, note="stopping")
                return
            old.stop()
            log.info("config.watching", folders=names, reload=reload)

    def _swap_stop_requested(self) -> bool:
        return self._swap_stopping

    def stop(self) -> None:
        """No more swaps; stop a watcher still in its start-up scan, wait for the swapper.

        The watcher in force is left running: the caller stops it.
        """
        with self._swap_cond:
            self._swap_stopping = True
            starting = self._starting
            self._swap_cond.notify_all()
        if starting is not None:
            starting.stop()  # abandons its scan; the swapper then drops it
        if self._swapper.is_alive():
            self._swapper.join(timeout=10)
