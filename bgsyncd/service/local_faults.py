"""The local-fault pauses (SPEC §4): where an output failed, and lifting each pause by its rule.

- ``output_unwritable``: the place a write failed is noted for the
  :class:`~bgsyncd.files.probe.OutputProbe`, probed from the configured folder that
  holds it; the pause is lifted when the probe passes (every 30 s, at once on
  SIGHUP). A probe round runs on a thread of its own: a write to a sick disk
  (a hung network mount) may block for minutes, and the main loop must go on
  beating for systemd's watchdog.
- ``queue_unavailable``: logged once per outage (``queue.unavailable``),
  lifted when the database answers a write again (``queue.available``), and
  the jobs it could not update are given back.

The dispatcher calls :meth:`LocalFaults.on_pause` when it pauses; the main
loop calls :meth:`LocalFaults.lift` on each turn.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bgsyncd.config.layout import output_trees
from bgsyncd.config.schema import FolderSettings
from bgsyncd.dispatch.dispatcher import Dispatcher
from bgsyncd.files.probe import OutputProbe
from bgsyncd.logs import get_logger
from bgsyncd.reasons import OUTPUT_UNWRITABLE, QUEUE_UNAVAILABLE
from bgsyncd.storage.contract import Store

log = get_logger("bgsyncd.daemon")  # the main loop's events, named as they always were


class LocalFaults:
    """Notes where outputs failed, and lifts the local-fault pauses a dispatcher holds."""

    def __init__(
        self,
        queue: Store,
        folders: Callable[[], Sequence[FolderSettings]],
        rescan: Callable[[], None],
        probe: OutputProbe | None = None,
    ) -> None:
        self.probe = OutputProbe() if probe is None else probe
        self._probing: threading.Thread | None = None
        self._queue = queue
        self._folders = folders  # the settings in force (a reload replaces them)
        self._rescan = rescan
        self._lock = threading.Lock()
        self._told_unavailable = False  # queue.unavailable logged for this outage

    def on_pause(self, reason: str, context: Mapping[str, object]) -> None:
        """Note where an output could not be written, for the probe that lifts the pause;
        log the database failing (``queue.unavailable``), once until it answers again.

        The place is probed from the configured folder that holds it, never
        outside; a failure whose place is unknown has every output folder probed.
        """
        if reason == QUEUE_UNAVAILABLE:
            with self._lock:
                told, self._told_unavailable = self._told_unavailable, True
            if not told:
                log.warning("queue.unavailable", error=str(context.get("error") or "unknown"))
            return
        if reason != OUTPUT_UNWRITABLE:
            return
        error = str(context.get("error") or "a local fault")
        roots = [root for folder in self._folders() for _kind, root in output_trees(folder)]
        raw = context.get("folder_path") or context.get("path")
        place = Path(str(raw)) if raw else None
        holders = [r for r in roots if place is not None and (place == r or r in place.parents)]
        if place is not None and holders:
            self.probe.note(place, error, max(holders, key=lambda r: len(r.parts)))
            return
        for root in roots:
            self.probe.note(root, error, root)

    def lift(self, dispatcher: Dispatcher, *, sighup: bool) -> None:
        """Lift ``output_unwritable`` when its probe passes (every 30 s, at once on SIGHUP),
        and ``queue_unavailable`` when the database answers a write again."""
        held = dispatcher.pauses
        if OUTPUT_UNWRITABLE in held and (sighup or self.probe.due()):
            self._start_probe(dispatcher, force=sighup)
        if QUEUE_UNAVAILABLE in held and not dispatcher.in_flight:
            # Jobs whose rows could not be updated are still in flight in the
            # database; with none in flight here, they go back to pending.
            self._queue.check_writable()
            returned = self._queue.recover()
            log.info("queue.available", jobs_returned=returned)
            with self._lock:
                self._told_unavailable = False
            dispatcher.lift_pause(QUEUE_UNAVAILABLE)
            self._rescan()  # files found while it was down are found again

    @property
    def probing(self) -> bool:
        """A probe round is running (on its own thread)."""
        return self._probing is not None and self._probing.is_alive()

    def _start_probe(self, dispatcher: Dispatcher, *, force: bool) -> None:
        """Start a probe round on its own thread, unless one is still running."""
        if self.probing:
            return
        self._probing = threading.Thread(
            target=self._probe_round,
            args=(dispatcher, force),
            name="bgsyncd-probe",
            daemon=True,  # a write hung on a dead mount must not hold up the exit
        )
        self._probing.start()

    def _probe_round(self, dispatcher: Dispatcher, force: bool) -> None:
        result = self.probe.run(force=force)
        for place, error in result.failing.items() if result.ran else ():
            log.warning("output.probe_failed", folder_path=str(place), error=error)
        if result.recovered:
            log.info("output.writable", note="a probe write passed")
            dispatcher.lift_pause(OUTPUT_UNWRITABLE)
