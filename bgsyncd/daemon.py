"""The daemon: wires the components together and owns the main loop.

Start order: settings, logging, queue (give back leases of a crashed run),
stale temp files, cache, pacer, credits, metrics, client, worker, dispatcher,
ingest, watcher (start-up scan), READY=1. Stop order (SIGTERM/SIGINT): stop intake
(watcher), stop claiming, let jobs in flight finish up to ``timeout_seconds``,
give the rest back to the queue, close client and database, exit 0. Signal
handlers only set flags: the main loop does the work.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from bgsyncd import __version__, outputs
from bgsyncd.adoption import Adopter
from bgsyncd.backends import open_backend
from bgsyncd.client import Client
from bgsyncd.config import Settings, load_settings, require_api_key
from bgsyncd.dblock import lock_database, lock_path
from bgsyncd.dispatch import Dispatcher
from bgsyncd.errors import BgsyncdError, ConfigError, QueueUnavailable
from bgsyncd.ingest import Ingest
from bgsyncd.logs import configure_logging, get_logger
from bgsyncd.metrics import Metrics
from bgsyncd.notify import Notifier
from bgsyncd.once import EXIT_OK, OnceRun
from bgsyncd.pacer import Pacer
from bgsyncd.pauses import OUTPUT_UNWRITABLE, QUEUE_UNAVAILABLE
from bgsyncd.probe import OutputProbe
from bgsyncd.queue import STATES, Found, QueueError
from bgsyncd.queue_faults import identity_of_fd, lost_reason
from bgsyncd.status import STATE_CREDITS, STATE_PAUSED
from bgsyncd.supervise import Supervisor
from bgsyncd.watcher import Watcher
from bgsyncd.watchswap import WatcherSwap
from bgsyncd.worker import Worker, WorkerConfig

log = get_logger("bgsyncd.daemon")

REFRESH_SECONDS = 5.0


class Daemon:
    """One running bgsyncd: build with settings, then ``run()``."""

    def __init__(self, settings: Settings, *, once: bool = False) -> None:
        if not settings.folders:
            raise ConfigError(f"{settings.config_path}: folder: no [[folder]] is configured")
        self.settings = settings
        self.once = once
        self._key = require_api_key(settings)
        configure_logging(settings.logging.format, settings.logging.level, self._secrets)
        for warning in settings.warnings:
            log.warning("config.warning", warning=warning)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._dirty = threading.Event()
        self._signals = 0
        self._old_clients: list[Client] = []
        self._published: dict[str, str | None] = {}
        self._published_check: float | None = None
        self._last_refresh = 0.0
        self._open_jobs = False
        self.stuck = False
        self._fatal: str | None = None  # why the loop ended on its own: exit 1

        # The database in use until exit: a reload naming another one needs a restart.
        self._database = settings.queue.database
        self._sqlite = settings.queue.backend == "sqlite"
        if self._sqlite:  # a fleet's hosts are told apart by the host lock (pghost)
            self._lock_fd = lock_database(self._database)
            self._lock_identity = identity_of_fd(self._lock_fd)
        self._conflict: str | None = None  # the fleet gave this host_id to another daemon
        self.backend = open_backend(settings, self._key)
        self.queue = self.backend.queue
        self.fleet = self.backend.fleet
        resent = self.queue.recover()
        if resent:
            log.warning("queue.recovered", jobs=resent, note="outcome unknown; will be sent again")
        for folder in settings.folders:
            for root in (folder.outbox, folder.quarantine, folder.done):
                if root is not None:
                    outputs.cleanup_temp_files(root)
        self.cache = self.backend.cache
        self.pacer = Pacer(
            settings.api.rate_limit, settings.api.rate_window_seconds, self.backend.request_log
        )
        self.credits = self.backend.credits
        self.metrics = Metrics(
            settings.metrics.listen,
            [f.name for f in settings.folders],
            __version__,
            fleet=self.fleet is not None,
        )
        self.metrics.credits_floor(settings.credits.floor)
        self.supervisor = Supervisor(self.metrics, self._request_stop)
        self.client = self._make_client(settings)
        self.probe = OutputProbe()
        self.worker = Worker(
            self.queue,
            self.cache,
            self.metrics,
            _worker_config(settings),
            lambda: self.client,
            holds=self.fleet.holds if self.fleet is not None else None,
        )
        self.dispatcher = Dispatcher(
            self.queue,
            self.worker,
            self.pacer,
            self.credits,
            lambda: self.client,
            self.metrics,
            max_in_flight=settings.api.max_in_flight,
            lease_seconds=self.backend.claim_lease,
            on_state_change=self._dirty.set,
            on_pause=self._on_pause,
            pauses=self.backend.pauses,
        )
        if self.fleet is not None:
            self.fleet.in_flight = lambda: self.dispatcher.in_flight
            self.fleet.on_hosts = self.metrics.fleet_hosts
            self.fleet.on_takeover = lambda n: self._wake_dispatch()
            self.fleet.on_conflict = self._on_conflict
        # A new queue (first start, or the database was lost): adopt existing outputs.
        self.adopter = (
            Adopter(self.queue, lambda: self.worker.config.folders) if self.queue.created else None
        )
        self.ingest = Ingest(
            self.queue,
            self.metrics,
            self._queued,
            self._stop,
            adopter=self.adopter,
            on_unavailable=lambda exc: self.dispatcher.raise_pause(
                QUEUE_UNAVAILABLE, error=str(exc)
            ),
        )
        # Counted before the start-up scan: the jobs a run of `once` starts with.
        self._once = self._make_once() if once else None
        self.watchers = WatcherSwap(self._make_watcher(settings), self._make_watcher)
        self._reloads = 0  # SIGHUPs taken; logged so an operator sees which is in force
        self.notifier = Notifier.from_environ(os.environ)

    # -- wiring helpers --------------------------------------------------------------

    def _make_client(self, settings: Settings) -> Client:
        return Client(
            settings.api.base_url,
            self._key,
            settings.api.timeout_seconds,
            gate=self.pacer.acquire,
            observe=self.metrics.api_request,
            max_response_bytes=settings.api.max_response_bytes,
        )

    def _make_watcher(self, settings: Settings) -> Watcher:
        return Watcher(
            settings.folders,
            self.ingest.sink,
            self.queue.is_unchanged,
            settings.queue.settle_seconds,
            settings.queue.rescan_interval_seconds,
            on_folder=self.metrics.folder_up,
        )

    def _make_once(self) -> OnceRun:
        return OnceRun(
            self.queue,
            self.dispatcher,
            self.pacer,
            self.credits,
            lambda: self.worker.config.folders.keys(),  # noqa: PLW0108 (replaced on reload)
            lambda: self.ingest.busy() or bool(self.watcher.pending()),
        )

    @property
    def watcher(self) -> Watcher:
        """The watcher in force (a reload may replace it)."""
        return self.watchers.watcher

    def _wake_dispatch(self) -> None:
        self._dirty.set()
        self.dispatcher.wake()

    def _on_conflict(self, message: str) -> None:
        """Another daemon took this host_id while the database was away: stop (exit 1)."""
        self._conflict = message
        self._request_stop()

    def _queued(self, queued: list[Found]) -> None:
        """The ingest thread queued files: count them for `once`, publish, wake dispatch."""
        if self._once is not None:
            self._once.queued(len(queued))
        self._dirty.set()
        self.dispatcher.wake()

    # -- running ---------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped (or, with ``once``, until nothing can be sent now).

        Returns 0, or 1 when a component crashed (``daemon.crashed`` was logged).
        """
        self._install_signals()
        self.supervisor.install()
        self.metrics.start()
        if self.fleet is not None:
            self.fleet.beat()  # the fleet's size, and claims that expired while we were away
            self.fleet.start()
        self.ingest.start()
        self.watchers.start()
        self.dispatcher.start()
        try:
            try:
                seen = self.watchers.start_first(self._stop, self._wake)
            except OSError as exc:
                raise BgsyncdError(str(exc)) from None
            if seen is not None:  # else stopped during the start-up scan: never ready
                names = [f.name for f in self.settings.folders]
                log.info("daemon.ready", folders=names, files_seen=seen)
                self.notifier.ready()
                self._refresh()
                self._loop()
            elif self._once is not None:
                self._once.interrupted()
        except BgsyncdError:
            raise  # a clear one-line error (cli prints it): not a crash
        except Exception as exc:
            self.supervisor.crash(threading.current_thread().name, exc)
        finally:
            self._shutdown()
            self.supervisor.uninstall()
        if self._fatal is not None:
            raise BgsyncdError(self._fatal)
        if self.supervisor.crashed.is_set():
            return 1
        return self._once.exit_code if self._once is not None else EXIT_OK

    def _loop(self) -> None:
        interval = REFRESH_SECONDS
        if self.notifier.watchdog_interval:
            interval = min(interval, self.notifier.watchdog_interval)
        while not self._stop.is_set():
            self._wake.wait(0.2 if self.once else interval)
            self._wake.clear()
            self._fatal = self._database_lost()
            if self._fatal is not None:
                return
            try:
                sighup = self._reload.is_set()
                if sighup:
                    self._reload.clear()
                    self.reload()
                self._heartbeat()
                self._lift_local_faults(sighup=sighup)
                if self._refresh_due():
                    self._dirty.clear()
                    self._refresh()
                if self._once is not None and self._once.step():
                    return
            except QueueUnavailable as exc:  # lifted above when the database answers
                self.dispatcher.raise_pause(QUEUE_UNAVAILABLE, error=str(exc))
            except QueueError:  # a busy or full disk must not end the daemon
                log.exception("daemon.loop_error")
            except Exception as exc:
                self.supervisor.crash(threading.current_thread().name, exc)
        if self._once is not None:  # stopped before the run was over: a signal, or a crash
            self._once.interrupted()

    def _database_lost(self) -> str | None:
        """Why to exit when the database or its lock was deleted or replaced, else None.

        Another daemon could then open a fresh queue and take the lock beside us:
        exit 1, and systemd restarts this one on whatever is there now.
        """
        if self._conflict is not None:
            return self._conflict
        if not self._sqlite:
            what = self.queue.lost()
            if what is None:
                return None
            log.error("queue.lost", database="postgresql", what=what)
            return f"the PostgreSQL queue's schema was {what} while bgsyncd ran; exiting"
        database = self._database
        lock = lock_path(database)
        checks = ((database, self.queue.lost()), (lock, lost_reason(lock, self._lock_identity)))
        for path, what in checks:
            if what is not None:
                log.error("queue.lost", database=str(database), file=str(path), what=what)
                return (
                    f"the queue database file {path} was {what} while bgsyncd ran;"
                    " exiting so that a restart opens the database that is there now"
                )
        return None

    def _on_pause(self, reason: str, context: Mapping[str, object]) -> None:
        """Note where an output could not be written, for the probe that lifts the pause.

        The place is probed from the configured folder that holds it, never
        outside; a failure whose place is unknown has every output folder probed.
        """
        if reason != OUTPUT_UNWRITABLE:
            return
        error = str(context.get("error") or "a local fault")
        roots = [
            root
            for folder in self.settings.folders
            for root in (folder.outbox, folder.quarantine, folder.done)
            if root is not None
        ]
        raw = context.get("folder_path") or context.get("path")
        place = Path(str(raw)) if raw else None
        holders = [r for r in roots if place is not None and (place == r or r in place.parents)]
        if place is not None and holders:
            self.probe.note(place, error, max(holders, key=lambda r: len(r.parts)))
            return
        for root in roots:
            self.probe.note(root, error, root)

    def _lift_local_faults(self, *, sighup: bool) -> None:
        """Lift ``output_unwritable`` when its probe passes (every 30 s, at once on SIGHUP),
        and ``queue_unavailable`` when the database answers a write again."""
        held = self.dispatcher.pauses
        if OUTPUT_UNWRITABLE in held:
            result = self.probe.run(force=sighup)
            for place, error in result.failing.items() if result.ran else ():
                log.warning("output.probe_failed", folder_path=str(place), error=error)
            if result.recovered:
                log.info("output.writable", note="a probe write passed")
                self.dispatcher.lift_pause(OUTPUT_UNWRITABLE)
        if QUEUE_UNAVAILABLE in held and not self.dispatcher.in_flight:
            # Jobs whose rows could not be updated are still in flight in the
            # database; with none in flight here, they go back to pending.
            self.queue.check_writable()
            returned = self.queue.recover()
            log.info("queue.available", jobs_returned=returned)
            self.dispatcher.lift_pause(QUEUE_UNAVAILABLE)
            self.watcher.rescan()  # files found while it was down are found again

    def _heartbeat(self) -> None:
        if self.dispatcher.alive() and self.watcher.alive() and self.ingest.alive():
            self.metrics.heartbeat()
            self.notifier.watchdog()

    def _refresh_due(self) -> bool:
        """Something changed, or open jobs are ageing; an idle daemon asks nothing."""
        if self._dirty.is_set() or self.credits.last_checked != self._published_check:
            return True
        age_moves = self._open_jobs and not self.once
        return age_moves and time.monotonic() - self._last_refresh >= REFRESH_SECONDS

    def _refresh(self) -> None:
        """Publish queue counts to metrics, systemd and the database."""
        self._last_refresh = time.monotonic()
        self._published_check = self.credits.last_checked
        counts = self.queue.counts()
        totals = dict.fromkeys(STATES, 0)
        for per in counts.values():
            for state, n in per.items():
                totals[state] += n
        oldest = self.queue.oldest_pending_queued_at()
        self._open_jobs = oldest is not None
        age = max(0.0, time.time() - oldest) if oldest is not None else None
        self.metrics.jobs(totals, age)
        paused = self.dispatcher.paused
        available = self.credits.available
        if available is not None:
            # The local count moves with every success, not only at a check.
            self.metrics.credits(available, self.credits.expires_at)
        self._publish(STATE_PAUSED, paused)
        self._publish(STATE_CREDITS, None if available is None else str(available))
        status = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in totals.items() if n)
        status = (status or "idle") + (f"; paused: {paused}" if paused else "")
        if status != self._published.get("status"):
            self._published["status"] = status
            self.notifier.status(status)

    def _publish(self, key: str, value: str | None) -> None:
        """Write daemon state for `bgsyncd status`, only when it changed."""
        if key in self._published and self._published[key] == value:
            return
        self.queue.set_state(key, value)
        self._published[key] = value

    # -- signals and reload ----------------------------------------------------------

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        # SIGUSR1 dumps every thread's stack to stderr: for debugging a stuck daemon.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            os._exit(1)  # a second signal: exit at once; leases are recovered at start
        self._stop.set()
        self._wake.set()

    def _request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload.set()
        self._wake.set()

    def reload(self) -> None:
        """Re-read the configuration and the key; re-check credits at once."""
        self._reloads += 1
        try:
            new = load_settings(self.settings.config_path)
            key = require_api_key(new)
            if not new.folders:
                raise ConfigError(f"{new.config_path}: folder: no [[folder]] is configured")
        except ConfigError as exc:
            log.error("config.reload_failed", error=str(exc))
            return
        old = self.settings
        configure_logging(new.logging.format, new.logging.level, self._secrets)
        restart = ("backend", "database", "dsn", "host_id", "lease_seconds", "cache_max_megabytes")
        for name in restart:
            if getattr(new.queue, name) != getattr(old.queue, name):
                log.warning("config.restart_needed", key=f"queue.{name}")
        for name in ("max_in_flight", "timeout_seconds"):
            if getattr(new.api, name) != getattr(old.api, name):
                log.warning("config.restart_needed", key=f"api.{name}")
        if new.metrics.listen != old.metrics.listen:
            log.warning("config.restart_needed", key="metrics.listen")
        self.pacer.reconfigure(new.api.rate_limit, new.api.rate_window_seconds)
        self.credits.set_floor(new.credits.floor)
        self.metrics.credits_floor(new.credits.floor)
        if key != self._key and self.fleet is not None:
            # The fleet's log, credits and pauses are kept per account (the key's hash).
            log.warning("config.restart_needed", key="api key", note="the fleet's account")
        if key != self._key or new.api.base_url != old.api.base_url:
            self._key = key
            self._old_clients.append(self.client)
            self.client = self._make_client(new)
        for folder in new.folders:
            self.metrics.add_folder(folder.name)
        if self.fleet is not None:
            self.fleet.set_folders(new.folders)
        self.credits.set_check_interval(new.credits.check_interval_seconds)
        self.worker.config = _worker_config(new)
        watching = ("settle_seconds", "rescan_interval_seconds")
        if new.folders != old.folders or any(
            getattr(new.queue, k) != getattr(old.queue, k) for k in watching
        ):
            self.watchers.request(new, self._reloads)
        else:
            self.watcher.rescan()
        self.settings = new
        log.info("config.reloaded", folders=[f.name for f in new.folders], reload=self._reloads)
        self.dispatcher.recheck_credits()

    def _secrets(self) -> Sequence[str]:
        return [self._key]

    # -- stopping --------------------------------------------------------------------

    def _shutdown(self) -> None:
        drain = self.settings.api.timeout_seconds
        self.notifier.stopping()
        self.notifier.extend_timeout(drain + 10)
        log.info("daemon.stopping", in_flight=self.dispatcher.in_flight)
        self.watchers.stop()
        self.watcher.stop()
        left = self.dispatcher.stop(timeout=drain)
        if left:
            self.stuck = True
            log.warning("daemon.returned_jobs", jobs=len(left))
        self.ingest.stop()
        try:
            self._refresh()
        except QueueUnavailable as exc:  # stopping is not a failure: the next start recovers
            log.warning("queue.unavailable", error=str(exc), note="last state not saved")
        except Exception as exc:  # after a crash the same fault may strike again
            log.warning("daemon.final_refresh_failed", error=repr(exc))
        self.metrics.stop()
        for client in [*self._old_clients, self.client]:
            client.close()
        self.backend.close()
        log.info("daemon.stopped")


def _worker_config(settings: Settings) -> WorkerConfig:
    return WorkerConfig(
        folders={f.name: f for f in settings.folders},
        max_upload_bytes=settings.api.max_upload_bytes,
        upload=settings.api.upload,
        proxy_side=settings.api.proxy_side,
        max_attempts=settings.queue.max_attempts,
        retry_base_seconds=settings.queue.retry_base_seconds,
        retry_max_seconds=settings.queue.retry_max_seconds,
        settle_seconds=settings.queue.settle_seconds,
    )


def run_daemon(config: str | Path | None, *, once: bool = False) -> int:
    """``bgsyncd run`` and ``bgsyncd once``."""
    daemon = Daemon(load_settings(config), once=once)
    code = daemon.run()
    if daemon.stuck:
        # Requests still hanging after the drain: their threads would hold up the
        # interpreter's exit. Their jobs are back in the queue; leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
