"""The hook runner: recorded hooks delivered, at least once, never in the pipeline's way.

One thread (``bgsyncd-hooks``) claims due hooks of the configured folders
from the store (``storage.HookQueue``; a fleet's other hosts' folders are
theirs, and a folder removed from the configuration keeps its hooks pending,
as it keeps its jobs, until it is configured again) while fewer than
``hooks.max_running`` run, and runs
each on a thread of its own (``bgsyncd-hook``): the folder's command
(:mod:`.commands`) or its webhook (``api.webhook``), as the folder's settings
say now. A hook that succeeds is deleted; one that fails is tried again after
:func:`backoff` until ``hooks.max_attempts`` tries, then logged
``hook.failed`` and dropped. The worker never waits for any of it: the hooks
were recorded with the job's transition, and the runner reads them from the
store. A daemon killed meanwhile leaves the claimed rows; the next start
gives them back (``release_hooks``) and they run again (the event id lets a
receiver drop the repeat). Time is injected (``clock``, ``rng``).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bgsyncd.api.webhook import WebhookSender
from bgsyncd.config.schema import FolderSettings, Settings
from bgsyncd.errors import BgsyncdError
from bgsyncd.files import rootfd
from bgsyncd.hooks import commands, events
from bgsyncd.logs import get_logger
from bgsyncd.ops.metrics import Recorder
from bgsyncd.storage.contract import HookQueue, PendingHook

log = get_logger("bgsyncd.hooks")

# A claim outlives the longest try by this much before another claimer may take it.
LEASE_MARGIN_SECONDS = 30.0
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class HookConfig:
    """The settings the runner uses (read anew for each hook: a reload takes effect)."""

    folders: Mapping[str, FolderSettings]
    timeout: float = 60.0
    max_running: int = 2
    max_attempts: int = 5
    retry_base: float = 5.0
    retry_max: float = 300.0
    secret: bytes | None = None


def hook_config(settings: Settings) -> HookConfig:
    """The parts of ``settings`` the runner uses."""
    h = settings.hooks
    secret = settings.webhook_secret
    return HookConfig(
        folders={f.name: f for f in settings.folders},
        timeout=h.timeout_seconds,
        max_running=h.max_running,
        max_attempts=h.max_attempts,
        retry_base=h.retry_base_seconds,
        retry_max=h.retry_max_seconds,
        secret=None if secret is None else secret.get_secret_value().encode("utf-8"),
    )


def backoff(failed: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Seconds before the next try after ``failed`` failed tries: ``base``, then
    doubling, each up to a quarter more at random (jitter), never over ``cap``."""
    # The exponent stops at 64 (far above any cap): max_attempts is the operator's to
    # choose, and 2 ** 1100 would not convert to a float at all.
    return float(min(cap, base * 2.0 ** min(failed - 1, 64) * (1.0 + 0.25 * rng())))


@dataclass(frozen=True)
class Delivery:
    """How one try went: ``result`` ok | failed | timeout, ``dropped`` (nothing to run),
    or ``left`` (the folder is not configured here: another host's, or a reload's)."""

    result: str
    detail: str = ""


def _fault(exc: Exception, secret: bytes | None) -> str:
    """A try's unexpected error for the log, the secret never in it."""
    text = f"{type(exc).__name__}: {exc}"
    if secret:
        text = text.replace(secret.decode("utf-8", errors="replace"), "********")
    return text


class HookRunner:
    """Delivers recorded hooks beside the pipeline; ``start()``, then ``stop()``."""

    def __init__(
        self,
        store: HookQueue,
        recorder: Recorder,
        config: Callable[[], HookConfig],
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._store = store
        self._recorder = recorder
        self._config = config
        self._clock = clock
        self._rng = rng
        self._environ = dict(os.environ if environ is None else environ)
        self._sender = WebhookSender()
        self._lock = threading.Lock()
        self._running: dict[int, threading.Thread] = {}  # hook id -> its thread
        self._groups: set[int] = set()  # process groups of commands running now
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the loop --------------------------------------------------------------------

    def start(self) -> None:
        """Give back the hooks a dead run had claimed, then deliver until stopped."""
        released = self._store.release_hooks()
        if released:
            log.warning("hooks.recovered", hooks=released, note="interrupted; run again")
        self._thread = threading.Thread(target=self._loop, name="bgsyncd-hooks", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """A job changed: look for due hooks now rather than at the next poll."""
        self._wake.set()

    def alive(self) -> bool:
        """The loop thread is running (or was never started)."""
        return self._thread is None or self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.step()
            except BgsyncdError as exc:  # the database away: try again at the next poll
                log.warning("hooks.store_error", error=str(exc))
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def step(self) -> int:
        """Claim due hooks for the free places and start them; how many started."""
        config = self._config()
        with self._lock:
            free = config.max_running - len(self._running)
        started = 0
        if free > 0 and not self._stopping.is_set():
            lease = config.timeout + LEASE_MARGIN_SECONDS
            for hook in self._store.claim_hooks(free, lease, config.folders.keys()):
                thread = threading.Thread(
                    target=self._run, args=(hook,), name="bgsyncd-hook", daemon=True
                )
                with self._lock:
                    self._running[hook.id] = thread
                thread.start()
                started += 1
        self._recorder.hooks_pending(self._store.hooks_pending())
        return started

    def running(self) -> int:
        """Hooks being tried now."""
        with self._lock:
            return len(self._running)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop claiming; kill the commands running (their hooks run again at the next
        start); give webhook calls up to ``timeout`` seconds."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            groups = list(self._groups)
            threads = list(self._running.values())
        for pgid in groups:
            commands.kill_group(pgid)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._sender.close()

    # -- one hook --------------------------------------------------------------------

    def _run(self, hook: PendingHook) -> None:
        try:
            config = self._config()
            event: dict[str, Any] = json.loads(hook.event.payload)
            bound = log.bind(
                folder=hook.event.folder,
                kind=hook.event.kind,
                hook_event=event.get("event"),
                event_id=hook.event.event_id,
                path=event.get("relpath"),
                attempt=hook.attempts + 1,
            )
            try:
                delivery = self._deliver(hook, event, config, bound)
            except Exception as exc:
                delivery = Delivery("failed", _fault(exc, config.secret))
            if self._stopping.is_set() and delivery.result != "ok":
                return  # killed by the stop, not failed: it runs again at the next start
            self._settle(hook, delivery, config, bound)
        except (
            BgsyncdError
        ) as exc:  # the store could not be told: the lease runs out, it runs again
            log.warning("hooks.store_error", error=str(exc), event_id=hook.event.event_id)
        finally:
            with self._lock:
                self._running.pop(hook.id, None)
            self._wake.set()

    def _deliver(
        self, hook: PendingHook, event: dict[str, Any], config: HookConfig, bound: Any
    ) -> Delivery:
        folder = config.folders.get(hook.event.folder)
        if folder is None:
            # A reload removed it after the claim: left under the claim, due again when
            # the lease runs out, for this host if the folder comes back or for
            # another that serves it. Never dropped: it is not this host's to drop.
            return Delivery("left", "the folder is not configured here")
        if hook.event.kind == events.WEBHOOK:
            if not folder.webhook:
                return Delivery("dropped", "the folder no longer has a webhook")
            answer = self._sender.post(
                folder.webhook,
                hook.event.payload.encode("utf-8"),
                event=str(event["event"]),
                event_id=hook.event.event_id,
                secret=config.secret,
                timeout=config.timeout,
            )
            if answer.ok:
                return Delivery("ok", f"HTTP {answer.status}")
            return Delivery("timeout" if answer.timed_out else "failed", answer.detail)
        done = event["event"] == events.DONE
        argv = folder.on_done if done else folder.on_quarantine
        if not argv:
            return Delivery("dropped", "the folder no longer has this command")
        return self._command(argv, hook, event, folder.outbox if done else folder.quarantine,
                             config, bound)  # fmt: skip

    def _command(
        self,
        argv: tuple[str, ...],
        hook: PendingHook,
        event: dict[str, Any],
        where: Path,
        config: HookConfig,
        bound: Any,
    ) -> Delivery:
        env = commands.child_environment(events.environment(event), self._environ)
        try:
            fd = rootfd.open_path(where)
        except OSError as exc:
            return Delivery("failed", f"cannot open its working folder {where}: {exc.strerror}")
        groups: list[int] = []

        def started(pgid: int) -> None:
            groups.append(pgid)
            self._started(pgid)

        try:
            result = commands.run_command(
                argv,
                stdin=hook.event.payload.encode("utf-8") + b"\n",
                env=env,
                cwd_fd=fd,
                timeout=config.timeout,
                started=started,
            )
        except OSError as exc:
            return Delivery("failed", f"cannot start {argv[0]}: {exc.strerror or exc}")
        finally:
            os.close(fd)
            with self._lock:  # its group is gone: never kill a number the system reuses
                self._groups.difference_update(groups)
        if result.output:
            text = result.output.decode("utf-8", errors="replace")
            bound.info("hook.output", output=text, truncated=result.truncated)
        if result.timed_out:
            return Delivery("timeout", f"killed after {config.timeout:g} s")
        if result.ok:
            return Delivery("ok")
        return Delivery("failed", f"exit status {result.returncode}")

    def _started(self, pgid: int) -> None:
        with self._lock:
            self._groups.add(pgid)
            if not self._stopping.is_set():
                return
        commands.kill_group(pgid)  # started as the daemon stops: it runs at the next start

    def _settle(
        self, hook: PendingHook, delivery: Delivery, config: HookConfig, bound: Any
    ) -> None:
        kind, folder = hook.event.kind, hook.event.folder
        if delivery.result == "left":
            bound.warning("hook.left", why=delivery.detail)
            return
        if delivery.result == "dropped":
            self._store.drop_hook(hook)
            bound.warning("hook.dropped", why=delivery.detail)
            return
        self._recorder.hook_finished(folder, kind, delivery.result)
        if delivery.result == "ok":
            self._store.hook_delivered(hook)
            bound.info("hook.done", detail=delivery.detail or None)
            return
        tries = hook.attempts + 1
        if tries >= config.max_attempts:
            self._store.drop_hook(hook)
            bound.error("hook.failed", result=delivery.result, error=delivery.detail, tries=tries)
            return
        delay = backoff(tries, config.retry_base, config.retry_max, self._rng)
        self._store.hook_failed(hook, self._clock() + delay)
        bound.warning("hook.retry", result=delivery.result, error=delivery.detail,
                      delay=round(delay, 2))  # fmt: skip
