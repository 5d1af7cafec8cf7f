"""The daemon: wires the components together and owns the main loop.

Start order: settings, logging, queue (give back leases of a crashed run),
stale temp files, cache, pacer, credits, metrics, client, worker, hooks,
dispatcher, ingest, watcher (start-up scan), READY=1. Stop order (SIGTERM/SIGINT): stop intake
(watcher), stop claiming, let jobs in flight finish up to ``timeout_seconds``,
give the rest back to the queue, stop the hooks (commands killed, run again at
the next start), close client and database, exit 0. Signal
handlers only set flags: the main loop does the work.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from bgsyncd import __version__, imaging
from bgsyncd.api.client import Client
from bgsyncd.config.layout import output_trees
from bgsyncd.config.loading import require_api_key
from bgsyncd.config.schema import Settings
from bgsyncd.dispatch.dispatcher import Dispatcher
from bgsyncd.dispatch.pacer import Pacer
from bgsyncd.errors import BgsyncdError, ConfigError, QueueUnavailable
from bgsyncd.files import outputs
from bgsyncd.hooks.runner import HookRunner, hook_config
from bgsyncd.inbox.adoption import Adopter
from bgsyncd.inbox.ingest import Ingest
from bgsyncd.inbox.swap import WatcherSwap
from bgsyncd.inbox.watcher import Watcher
from bgsyncd.jobs.worker import Worker
from bgsyncd.logs import configure_logging, get_logger
from bgsyncd.ops.metrics import Metrics
from bgsyncd.ops.notify import Notifier
from bgsyncd.reasons import QUEUE_UNAVAILABLE
from bgsyncd.service.backends import database_secrets, load_settings, open_backend
from bgsyncd.service.local_faults import LocalFaults
from bgsyncd.service.once import EXIT_OK, OnceRun
from bgsyncd.service.page import open_page
from bgsyncd.service.publisher import REFRESH_SECONDS, Publisher
from bgsyncd.service.reload import restart_needed, watcher_changed, worker_config
from bgsyncd.service.signals import Signals
from bgsyncd.service.supervisor import Supervisor
from bgsyncd.storage.contract import Found, QueueError
from bgsyncd.web.view import Live

log = get_logger("bgsyncd.daemon")


# No output takes an hour to write: a temp file that old in a shared folder is
# a crash's leftover, whichever host it was.
SHARED_TEMP_STALE_SECONDS = 3600.0


class Daemon:
    """One running bgsyncd: build with settings, then ``run()``."""

    def __init__(self, settings: Settings, *, once: bool = False) -> None:
        self._key = _runnable_key(settings)
        self._db_secrets = database_secrets(settings)
        self.settings = settings
        self.once = once
        configure_logging(settings.logging.format, settings.logging.level, self._secrets)
        for warning in settings.warnings:
            log.warning("config.warning", warning=warning)
        self.signals = Signals()
        self._old_clients: list[Client] = []
        self.stuck = False
        self._fatal: str | None = None  # why the loop ended on its own: exit 1

        # The database in use until exit: a reload naming another one needs a restart.
        self._conflict: str | None = None  # the fleet gave this host_id to another daemon
        self.backend = open_backend(settings, self._key)
        self.queue = self.backend.queue
        self.fleet = self.backend.fleet
        resent = self.queue.recover()
        if resent:
            log.warning("queue.recovered", jobs=resent, note="outcome unknown; will be sent again")
        for folder in settings.folders:
            # A shared folder's fresh temp files are other hosts' writes in progress.
            stale = SHARED_TEMP_STALE_SECONDS if folder.shared else None
            for _kind, root in output_trees(folder):
                outputs.cleanup_temp_files(root, older_than=stale)
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
        self.supervisor = Supervisor(self.metrics, self.signals.request_stop)
        self.client = self._make_client(settings)
        self.notifier = Notifier.from_environ(os.environ)
        self.publisher = Publisher(
            self.queue,
            self.credits,
            self.metrics,
            self.notifier,
            lambda: self.dispatcher.paused,
            ageing=not once,
            waiting=lambda: self.dispatcher.waiting(),  # noqa: PLW0108 (made below)
        )
        self.faults = LocalFaults(
            self.queue,
            lambda: self.settings.folders,
            lambda: self.watcher.rescan(),  # noqa: PLW0108 (replaced on reload)
        )
        self.worker = Worker(
            self.queue,
            self.cache,
            self.metrics,
            worker_config(settings),
            lambda: self.client,
        )
        # Hooks (SPEC §10): recorded by the worker with each job's end, delivered
        # by their own threads from the store, never in the pipeline's way.
        self._hook_config = hook_config(settings)
        self.hooks = HookRunner(self.queue, self.metrics, lambda: self._hook_config)
        self.dispatcher = Dispatcher(
            self.queue,
            self.worker,
            self.pacer,
            self.credits,
            lambda: self.client,
            self.metrics,
            max_in_flight=settings.api.max_in_flight,
            lease_seconds=self.backend.claim_lease,
            on_state_change=self._state_changed,
            on_pause=self.faults.on_pause,
            pauses=self.backend.pauses,
        )
        if self.backend.outage is not None:  # a hung server pauses an idle host too
            self.backend.outage.on_down = lambda error: self.dispatcher.raise_pause(
                QUEUE_UNAVAILABLE, error=error
            )
        if self.fleet is not None:
            self.fleet.in_flight = lambda: self.dispatcher.in_flight
            self.fleet.on_hosts = self.metrics.fleet_hosts
            self.fleet.on_takeover = lambda n: self._wake_dispatch()
            self.fleet.on_conflict = self._on_conflict
        # A new queue (first start, or the database was lost): adopt the outputs before it.
        self.adopter = (
            Adopter(self.queue, lambda: self.worker.config.folders) if self.queue.created else None
        )
        self.ingest = Ingest(
            self.queue,
            self.metrics,
            self._queued,
            self.signals.stop,
            adopter=self.adopter,
            on_unavailable=lambda exc: self.dispatcher.raise_pause(
                QUEUE_UNAVAILABLE, error=str(exc)
            ),
        )
        self._inbox_up: dict[str, bool] = {}  # the watcher's word on each inbox, for the page
        self.page = open_page(
            settings,
            Live(
                self.queue,
                lambda: self.settings,
                hosts=self._fleet_hosts,
                folder_up=self._inbox_up.get,
                in_window=self.pacer.in_window,
                on_requeued=self._wake_dispatch,
            ),
        )
        if self.page is not None:
            self.metrics.serve_page(self.page)
        # Counted before the start-up scan: the jobs a run of `once` starts with.
        self._once = self._make_once() if once else None
        self.watchers = WatcherSwap(self._make_watcher(settings), self._make_watcher)
        self._reloads = 0  # SIGHUPs taken; logged so an operator sees which is in force

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
            on_folder=self._folder_up,
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

    def _folder_up(self, folder: str, up: float) -> None:
        self._inbox_up[folder] = bool(up)
        self.metrics.folder_up(folder, up)

    def _fleet_hosts(self) -> list[dict[str, object]] | None:
        """The fleet's hosts as ``status --json`` lists them; None on SQLite."""
        if self.fleet is None:
            return None
        return [h.as_json() for h in self.fleet.hosts.listed()]

    def _wake_dispatch(self) -> None:
        self.publisher.dirty.set()
        self.dispatcher.wake()

    def _state_changed(self) -> None:
        """A job or a pause changed (dispatch's threads, the probe's): publish it now."""
        self.publisher.dirty.set()
        self.signals.wake.set()
        self.hooks.wake()  # a job just done or quarantined may have hooks

    def _on_conflict(self, message: str) -> None:
        """Another daemon took this host_id while the database was away: stop (exit 1)."""
        self._conflict = message
        self.signals.request_stop()

    def _queued(self, queued: list[Found]) -> None:
        """The ingest thread queued files: count them for `once`, settle the free ones, publish."""
        if self._once is not None:
            self._once.queued(len(queued))
        self.dispatcher.free.add(queued)  # what needs no request is settled now (SPEC §4)
        self.publisher.dirty.set()
        self.dispatcher.wake()

    # -- running ---------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped (or, with ``once``, until nothing can be sent now).

        Returns 0, or 1 when a component crashed (``daemon.crashed`` was logged).
        """
        self.signals.install()
        self.supervisor.install()
        # Freed pixel buffers leave the process (imaging.heap): the memory budget.
        imaging.return_large_blocks()
        self.metrics.start()
        if self.page is not None and self.metrics.port is not None:
            self.page.guard.port = self.metrics.port  # the port bound (0 in the file: any)
        if self.fleet is not None:
            self.fleet.beat()  # the fleet's size, and claims that expired while we were away
            self.fleet.start()
        self.ingest.start()
        self.watchers.start()
        self.dispatcher.start()
        self.hooks.start()
        try:
            try:
                seen = self.watchers.start_first(self.signals.stop, self.signals.wake)
            except OSError as exc:
                raise BgsyncdError(str(exc)) from None
            if seen is not None:  # else stopped during the start-up scan: never ready
                names = [f.name for f in self.settings.folders]
                log.info("daemon.ready", folders=names, files_seen=seen)
                self.notifier.ready()
                try:
                    self.publisher.refresh()
                except QueueUnavailable as exc:  # gone since the start: a pause, not an exit
                    self.dispatcher.raise_pause(QUEUE_UNAVAILABLE, error=str(exc))
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
        while not self.signals.stop.is_set():
            # Woken early (a job's change), it still pings in time: sleep_for knows when.
            self.signals.wake.wait(0.2 if self.once else self.notifier.sleep_for(REFRESH_SECONDS))
            self.signals.wake.clear()
            self._fatal = self._conflict or self.backend.lost()
            if self._fatal is not None:
                return
            try:
                sighup = self.signals.reload.is_set()
                if sighup:
                    self.signals.reload.clear()
                    self.reload()
                self._heartbeat()
                self.faults.lift(self.dispatcher, sighup=sighup)
                self.publisher.refresh_if_due()
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

    def _heartbeat(self) -> None:
        if self.dispatcher.alive() and self.watcher.alive() and self.ingest.alive():
            self.metrics.heartbeat()
            self.notifier.watchdog()

    # -- reload --------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the configuration and the key; re-check credits at once."""
        self._reloads += 1
        try:
            new = load_settings(self.settings.config_path)
            key = _runnable_key(new)
            if self.fleet is not None:
                # Checked against the other hosts as at start (a name one of
                # them uses, a shared folder's settings); refused, nothing changes.
                self.fleet.set_folders(new.folders)
        except ConfigError as exc:
            log.error("config.reload_failed", error=str(exc))
            return
        except QueueUnavailable as exc:
            log.error(
                "config.reload_failed",
                error=str(exc),
                note="the folders could not be"
                " checked against the fleet; the old configuration stays: SIGHUP again",
            )
            return
        old = self.settings
        self._db_secrets = database_secrets(new)
        configure_logging(new.logging.format, new.logging.level, self._secrets)
        for name in restart_needed(old, new):
            log.warning("config.restart_needed", key=name)
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
        for name in {f.name for f in old.folders} - {f.name for f in new.folders}:
            self.metrics.retire_folder(name)
        self.credits.set_check_interval(new.credits.check_interval_seconds)
        self.worker.config = worker_config(new)
        self._hook_config = hook_config(new)
        if watcher_changed(old, new):
            self.watchers.request(new, self._reloads)
        else:
            self.watcher.rescan()
        self.settings = new
        log.info("config.reloaded", folders=[f.name for f in new.folders], reload=self._reloads)
        self.dispatcher.recheck_credits()

    def _secrets(self) -> Sequence[str]:
        return [self._key, *self._db_secrets]

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
        self.hooks.stop()  # a command killed here runs again at the next start
        try:
            self.publisher.refresh()
        except QueueUnavailable as exc:  # stopping is not a failure: the next start recovers
            log.warning("queue.unavailable", error=str(exc), note="last state not saved")
        except Exception as exc:  # after a crash the same fault may strike again
            log.warning("daemon.final_refresh_failed", error=repr(exc))
        self.metrics.stop()
        for client in [*self._old_clients, self.client]:
            client.close()
        self.backend.close()
        log.info("daemon.stopped")


def _runnable_key(settings: Settings) -> str:
    """The API key of settings a daemon can run on: a ``ConfigError`` without a folder or key."""
    if not settings.folders:
        raise ConfigError(f"{settings.config_path}: folder: no [[folder]] is configured")
    return require_api_key(settings)


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
