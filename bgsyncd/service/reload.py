"""A reload (SIGHUP) decided: what of the new settings needs a restart, or a new watcher.

Pure functions on two :class:`~bgsyncd.config.schema.Settings`, the one in force and
the one just read; the daemon acts on their answers. Everything not named
here takes effect at once (rate limit, credit floor and interval, the key, the
worker's settings: :func:`worker_config`, built at start and at every reload).
"""

from __future__ import annotations

from bgsyncd.config.schema import Settings
from bgsyncd.jobs.worker import WorkerConfig

# Keys a running daemon cannot take on: the store, the pool, the metrics socket.
RESTART_QUEUE = ("backend", "database", "dsn", "host_id", "lease_seconds", "cache_max_megabytes")
RESTART_API = ("max_in_flight", "timeout_seconds")
# Keys a watcher is built with: a change replaces the watcher.
WATCHER_QUEUE = ("settle_seconds", "rescan_interval_seconds")


def restart_needed(old: Settings, new: Settings) -> list[str]:
    """The keys (``queue.database``...) that changed but take effect only at a restart."""
    keys = [f"queue.{k}" for k in RESTART_QUEUE if getattr(new.queue, k) != getattr(old.queue, k)]
    keys += [f"api.{k}" for k in RESTART_API if getattr(new.api, k) != getattr(old.api, k)]
    if new.metrics.listen != old.metrics.listen:
        keys.append("metrics.listen")
    return keys


def watcher_changed(old: Settings, new: Settings) -> bool:
    """The folders, or how files are watched, changed: the watcher must be replaced."""
    return new.folders != old.folders or any(
        getattr(new.queue, k) != getattr(old.queue, k) for k in WATCHER_QUEUE
    )


def worker_config(settings: Settings) -> WorkerConfig:
    """The parts of ``settings`` the worker uses."""
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
