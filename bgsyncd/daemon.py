"""The daemon: wires the components together and owns the main loop.

Start order: settings, logging, queue (give back leases of a crashed run),
stale temp files, cache, pacer, credits, metrics, client, worker, dispatcher,
watcher (start-up scan), READY=1. Stop order (SIGTERM/SIGINT): stop intake
(watcher), stop claiming, let jobs in flight finish up to ``timeout_seconds``,
give the rest back to the queue, close client and database, exit 0. Signal
handlers only set flags: the main loop does the work.
"""

from __future__ import annotations

import faulthandler
import fcntl
import os
import queue as stdqueue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Collection, Sequence
from pathlib import Path
from types import FrameType

from bgsyncd import __version__, outputs
from bgsyncd.cache import ResultCache
from bgsyncd.client import Client
from bgsyncd.config import Settings, load_settings, require_api_key
from bgsyncd.credits import CreditGuard
from bgsyncd.dispatch import Dispatcher
from bgsyncd.errors import BgsyncdError, ConfigError, QueueUnavailable
from bgsyncd.logs import configure_logging, get_logger
from bgsyncd.metrics import Metrics
from bgsyncd.notify import Notifier
from bgsyncd.once import EXIT_FAILURE, EXIT_OK, RunCount, Snapshot, decide, open_jobs
from bgsyncd.pacer import Pacer
from bgsyncd.progress import Progress
from bgsyncd.queue import STATES, Found, Queue, QueueError, SqliteRequestLog
from bgsyncd.status import STATE_CREDITS, STATE_PAUSED
from bgsyncd.watcher import Watcher
from bgsyncd.worker import Worker, WorkerConfig

log = get_logger("bgsyncd.daemon")

INGEST_BATCH = 2000
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
        self._found: stdqueue.Queue[Found | None] = stdqueue.Queue(maxsize=20_000)
        self._old_clients: list[Client] = []
        self._published: dict[str, str | None] = {}
        self._published_check: float | None = None
        self._last_refresh = 0.0
        self._open_jobs = False
        self.stuck = False
        self._crashed = threading.Event()
        # Watcher swaps (reloads that change the folders) run one at a time on
        # one thread, newest configuration last; see _swap_loop.
        self._swap_cond = threading.Condition()
        self._swap_wanted: Settings | None = None
        self._swap_stopping = False
        self._starting: Watcher | None = None
        self._swapper = threading.Thread(target=self._swap_loop, name="bgsyncd-reload", daemon=True)

        self._lock_fd = _lock_database(settings.queue.database)
        self.queue = Queue(settings.queue.database)
        resent = self.queue.recover()
        if resent:
            log.warning("queue.recovered", jobs=resent, note="outcome unknown; will be sent again")
        # `once` counts its own files: those still open now, and what it queues.
        names = [f.name for f in settings.folders]
        self._run = RunCount(open_jobs(self.queue.counts(), names))
        self._exit_code = EXIT_OK
        self._paused_since: float | None = None
        for folder in settings.folders:
            for root in (folder.outbox, folder.quarantine, folder.done):
                if root is not None:
                    outputs.cleanup_temp_files(root)
        self.cache = ResultCache(
            settings.state_dir / "cache", settings.queue.cache_max_megabytes * 1024 * 1024
        )
        self._request_log = SqliteRequestLog(settings.queue.database)
        self.pacer = Pacer(
            settings.api.rate_limit, settings.api.rate_window_seconds, self._request_log
        )
        self.credits = CreditGuard(settings.credits.floor, settings.credits.check_interval_seconds)
        self.metrics = Metrics(
            settings.metrics.listen, [f.name for f in settings.folders], __version__
        )
        self.metrics.credits_floor(settings.credits.floor)
        self.client = self._make_client(settings)
        self.worker = Worker(
            self.queue, self.cache, self.metrics, _worker_config(settings), lambda: self.client
        )
        self.dispatcher = Dispatcher(
            self.queue,
            self.worker,
            self.pacer,
            self.credits,
            lambda: self.client,
            self.metrics,
            max_in_flight=settings.api.max_in_flight,
            lease_seconds=settings.api.timeout_seconds + 60.0,
            on_state_change=self._dirty.set,
        )
        self.watcher = self._make_watcher(settings)
        self.notifier = Notifier.from_environ(os.environ)
        self._ingest = threading.Thread(
            target=self._ingest_loop, name="bgsyncd-ingest", daemon=True
        )

    # -- wiring helpers --------------------------------------------------------------

    def _make_client(self, settings: Settings) -> Client:
        return Client(
            settings.api.base_url,
            self._key,
            settings.api.timeout_seconds,
            gate=self.pacer.acquire,
            observe=self.metrics.api_request,
        )

    def _make_watcher(self, settings: Settings) -> Watcher:
        return Watcher(
            settings.folders,
            self._sink,
            self.queue.is_unchanged,
            settings.queue.settle_seconds,
            settings.queue.rescan_interval_seconds,
        )

    # -- running ---------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped (or, with ``once``, until nothing can be sent now).

        Returns 0, or 1 when a component crashed (``daemon.crashed`` was logged).
        """
        self._install_signals()
        previous_hook = threading.excepthook
        threading.excepthook = self._on_thread_crash
        self.metrics.start()
        self._ingest.start()
        self._swapper.start()
        self.dispatcher.start()
        try:
            seen = self._start_watching()
            if seen is not None:  # else stopped during the start-up scan: never ready
                names = [f.name for f in self.settings.folders]
                log.info("daemon.ready", folders=names, files_seen=seen)
                self.notifier.ready()
                self._refresh()
                self._loop()
            elif self.once:
                self._exit_code = EXIT_FAILURE  # interrupted before the run was over
        except BgsyncdError:
            raise  # a clear one-line error (cli prints it): not a crash
        except Exception as exc:
            self._crash(threading.current_thread().name, exc)
        finally:
            self._shutdown()
            threading.excepthook = previous_hook
        return 1 if self._crashed.is_set() else self._exit_code

    def _start_watching(self) -> int | None:
        """Start the watcher (its start-up scan) so that a stop signal can cut it short.

        The scan runs on a helper thread while this one waits for it or for a
        stop: signal handlers only set flags, and a scan of a large inbox must
        not hold up SIGTERM. Returns the files seen, or None when stopped first.
        """
        outcome: list[int | BaseException] = []

        def start() -> None:
            try:
                outcome.append(self.watcher.start())
            except BaseException as exc:  # handed to the main thread below
                outcome.append(exc)
            self._wake.set()

        starter = threading.Thread(target=start, name="bgsyncd-startup-scan", daemon=True)
        starter.start()
        while starter.is_alive() and not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
        if self._stop.is_set():
            self.watcher.stop()  # abandons the scan
            starter.join(timeout=10)
            return None
        result = outcome[0]
        if isinstance(result, OSError):
            raise BgsyncdError(str(result)) from None
        if isinstance(result, BaseException):
            raise result
        return result

    def _loop(self) -> None:
        interval = REFRESH_SECONDS
        if self.notifier.watchdog_interval:
            interval = min(interval, self.notifier.watchdog_interval)
        progress = Progress.for_stderr(self.once)
        while not self._stop.is_set():
            self._wake.wait(0.2 if self.once else interval)
            self._wake.clear()
            try:
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                self._heartbeat()
                if self._refresh_due():
                    self._dirty.clear()
                    self._refresh()
                if self.once and self._once_step(progress):
                    return
            except (QueueError, QueueUnavailable):  # a busy or full disk must not end the daemon
                log.exception("daemon.loop_error")
            except Exception as exc:
                self._crash(threading.current_thread().name, exc)
        if self.once:  # stopped before the run was over: a signal, or a crash
            self._exit_code = EXIT_FAILURE
            progress.finish(self._run.finished, self._run.total, "interrupted", [])

    def _once_step(self, progress: Progress) -> bool:
        """Show where ``once`` is; True when it is over (its exit status is set)."""
        folders = self.worker.config.folders.keys()
        still_open = open_jobs(self.queue.counts(), folders)
        finished = self._run.update(still_open)
        verdict = decide(self._snapshot(still_open, folders))
        if not verdict.over:
            progress.show(finished, self._run.total, verdict.waiting)
            return False
        self._exit_code = verdict.exit_code
        leftovers = self._once_leftovers()
        ending = verdict.waiting
        if leftovers:
            ending = "; ".join(
                filter(None, [ending, f"{len(leftovers)} wait on a retry over a minute away:"])
            )
        progress.finish(finished, self._run.total, ending, leftovers)
        if verdict.exit_code != EXIT_OK:
            log.warning("once.paused", reason=self.dispatcher.paused)
        return True

    def _snapshot(self, still_open: int, folders: Collection[str]) -> Snapshot:
        paused = self.dispatcher.paused
        now = time.monotonic()
        if paused is None:
            self._paused_since = None
        elif self._paused_since is None:
            self._paused_since = now
        ready_at = self.queue.next_ready_at(folders)
        return Snapshot(
            open_jobs=still_open,
            in_flight=self.dispatcher.in_flight,
            intake_busy=bool(self._found.unfinished_tasks or self.watcher.pending()),
            ready_in=None if ready_at is None else max(0.0, ready_at - time.time()),
            rate_wait=self.pacer.delay(),
            paused=paused,
            paused_for=0.0 if self._paused_since is None else now - self._paused_since,
            next_check_in=self.credits.seconds_until_check(),
        )

    def _once_leftovers(self) -> list[str]:
        """The files ``once`` leaves waiting on a retry, for its summary."""
        folders = self.worker.config.folders.keys()
        out = []
        for job in self.queue.retry_waiting():
            if job.folder not in folders:
                continue
            when = job.next_attempt_at or time.time()
            out.append(
                f"{job.folder}/{job.relpath}: retry in {max(0, round(when - time.time()))} s "
                f"(attempt {job.attempts}; {job.last_error or 'no error recorded'})"
            )
        return out

    def _heartbeat(self) -> None:
        if self.dispatcher.alive() and self.watcher.alive() and self._ingest.is_alive():
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

    # -- supervision -----------------------------------------------------------------

    def _on_thread_crash(self, args: threading.ExceptHookArgs) -> None:
        """``threading.excepthook``: an exception escaped some thread's loop."""
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        name = args.thread.name if args.thread is not None else "unknown"
        self._crash(name, args.exc_value)

    def _crash(self, thread: str, exc: BaseException) -> None:
        """One ``daemon.crashed`` event, /healthz 503 at once, then stop and exit 1.

        No thread dies silently: systemd restarts a daemon that exits 1, and a
        half-alive one would look healthy while doing nothing.
        """
        if self._crashed.is_set():
            return  # the first crash is the one that matters; others follow from it
        self._crashed.set()
        self.metrics.crashed()
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log.critical("daemon.crashed", thread=thread, error=repr(exc), traceback=text)
        self._stop.set()
        self._wake.set()

    def _sink(self, found: Found) -> None:
        """Hand a complete file to the ingest thread; give up once stopping.

        The hand-over queue is bounded; if the ingest thread died, a scan must
        not block forever (and with it the stop). A file dropped here is found
        again by the next start's scan.
        """
        while True:
            try:
                self._found.put(found, timeout=0.5)
                return
            except stdqueue.Full:
                if self._stop.is_set():
                    return

    def _ingest_loop(self) -> None:
        """Batch found files into the queue: one transaction per batch."""
        while True:
            item = self._found.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < INGEST_BATCH:
                try:
                    nxt = self._found.get_nowait()
                except stdqueue.Empty:
                    break
                if nxt is None:
                    self._found.put(None)
                    break
                batch.append(nxt)
            try:
                queued = self.queue.enqueue_many(batch)
            except (QueueError, QueueUnavailable):
                # The database refused (busy, full, read-only): the next scan finds them again.
                log.exception("queue.ingest_failed", files=len(batch))
                queued = []
            finally:
                for _ in batch:
                    self._found.task_done()
            self._run.queued(len(queued))
            for found in queued:
                self.metrics.file_discovered(found.folder)
                log.info("file.queued", folder=found.folder, path=found.relpath, size=found.size)
            if queued:
                self._dirty.set()
                self.dispatcher.wake()

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

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload.set()
        self._wake.set()

    def reload(self) -> None:
        """Re-read the configuration and the key; re-check credits at once."""
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
        for name in ("database", "cache_max_megabytes"):
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
        if key != self._key or new.api.base_url != old.api.base_url:
            self._key = key
            self._old_clients.append(self.client)
            self.client = self._make_client(new)
        for folder in new.folders:
            self.metrics.add_folder(folder.name)
        self.credits.set_check_interval(new.credits.check_interval_seconds)
        self.worker.config = _worker_config(new)
        watching = ("settle_seconds", "rescan_interval_seconds")
        if new.folders != old.folders or any(
            getattr(new.queue, k) != getattr(old.queue, k) for k in watching
        ):
            # Off the main loop: a full scan of a large inbox must not starve
            # the systemd watchdog. The swapper takes the newest wish only.
            with self._swap_cond:
                self._swap_wanted = new
                self._swap_cond.notify_all()
        else:
            self.watcher.rescan()
        self.settings = new
        log.info("config.reloaded", folders=[f.name for f in new.folders])
        self.dispatcher.recheck_credits()

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
                settings, self._swap_wanted = self._swap_wanted, None
                assert settings is not None
                new = self._starting = self._make_watcher(settings)
            names = [f.name for f in settings.folders]
            try:
                new.start()
            except Exception as exc:
                log.error("config.watch_failed", error=str(exc), note="still watching the old")
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
                log.info("config.watch_abandoned", folders=names, note="stopping")
                return
            old.stop()
            log.info("config.watching", folders=names)

    def _swap_stop_requested(self) -> bool:
        return self._swap_stopping

    def _stop_swapper(self) -> None:
        """No more swaps; stop a watcher still in its start-up scan, wait for the swapper."""
        with self._swap_cond:
            self._swap_stopping = True
            starting = self._starting
            self._swap_cond.notify_all()
        if starting is not None:
            starting.stop()  # abandons its scan; the swapper then drops it
        if self._swapper.is_alive():
            self._swapper.join(timeout=10)

    def _secrets(self) -> Sequence[str]:
        return [self._key]

    # -- stopping --------------------------------------------------------------------

    def _shutdown(self) -> None:
        drain = self.settings.api.timeout_seconds
        self.notifier.stopping()
        self.notifier.extend_timeout(drain + 10)
        log.info("daemon.stopping", in_flight=self.dispatcher.in_flight)
        self._stop_swapper()
        self.watcher.stop()
        left = self.dispatcher.stop(timeout=drain)
        if left:
            self.stuck = True
            log.warning("daemon.returned_jobs", jobs=len(left))
        if self._ingest.is_alive():
            self._found.put(None)
            self._ingest.join(timeout=10)
        try:
            self._refresh()
        except Exception as exc:  # after a crash the same fault may strike again
            log.warning("daemon.final_refresh_failed", error=repr(exc))
        self.metrics.stop()
        for client in [*self._old_clients, self.client]:
            client.close()
        self._request_log.close()
        self.queue.close()
        log.info("daemon.stopped")


def _lock_database(database: Path) -> int:
    """Hold an exclusive lock beside the database for the life of the process.

    Two daemons (or `once` beside the service) on one queue would take each
    other's jobs for crashed ones and send them again, and each would count
    credits on its own.
    """
    database.parent.mkdir(parents=True, exist_ok=True)
    path = database.with_name(database.name + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise BgsyncdError(
            f"another bgsyncd is already running on {database} (it holds {path})"
        ) from None
    return fd


def _worker_config(settings: Settings) -> WorkerConfig:
    return WorkerConfig(
        folders={f.name: f for f in settings.folders},
        max_upload_bytes=settings.api.max_upload_bytes,
        max_attempts=settings.queue.max_attempts,
        retry_base_seconds=settings.queue.retry_base_seconds,
        retry_max_seconds=settings.queue.retry_max_seconds,
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
