"""The Prometheus recorder, served on /metrics and /healthz by :mod:`bgsyncd.ops.server`.

The rest of bgsyncd talks to a :class:`Recorder`, never to prometheus_client (which
is imported here alone). The base :class:`Recorder` does nothing; :class:`Metrics`
records into its own registry and serves it. Metrics observe, they never steer:
every recording method of :class:`Metrics` logs and swallows its own failures.
No label holds a file path: ``folder`` is the configured folder name, ``endpoint``
the API endpoint name, ``code`` an HTTP status or ``error``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bgsyncd.api.endpoints import ENDPOINTS, UPLOAD_ENDPOINTS
from bgsyncd.config.rules import parse_listen
from bgsyncd.logs import get_logger
from bgsyncd.ops.server import MetricsServer
from bgsyncd.reasons import REASONS
from bgsyncd.storage.contract import STATES

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

OUTCOMES = ("success", "cached", "quarantined")
# bgsyncd_hooks_total: kinds of hook and results of one try (SPEC §10).
HOOK_KINDS = ("command", "webhook")
HOOK_RESULTS = ("ok", "failed", "timeout")
# An API call takes from a tenth of a second to the 120 s default timeout.
API_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 90.0, 120.0)
# Queued -> written includes waiting for the rate limit: seconds to most of a day.
JOB_BUCKETS = (
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
    *(1800.0, 3600.0, 7200.0, 21600.0, 86400.0),
)

_log = get_logger("bgsyncd.metrics")


class Recorder:
    """What the daemon, dispatcher and worker report; implementations never raise.

    This base records nothing: it is the recorder when metrics are disabled,
    and in tests. :class:`Metrics` records into Prometheus.
    """

    def file_discovered(self, folder: str) -> None:
        """A complete file was queued in ``folder``."""

    def job_finished(self, folder: str, outcome: str, duration: float | None) -> None:
        """A job ended (success, cached, quarantined) ``duration`` s after it was queued."""

    def api_request(self, endpoint: str, code: str, seconds: float) -> None:
        """One API request ended with HTTP status ``code`` (or ``"error"``)."""

    def rate_limited(self) -> None:
        """The API answered 429."""

    def credits(self, available: int | None, expires_at: float | None) -> None:
        """The last known credit balance and its expiry (epoch seconds); None = unknown."""

    def credits_floor(self, floor: int) -> None:
        """The configured credit floor."""

    def paused(self, reason: str | None) -> None:
        """Dispatch is paused for ``reason``, or running when None."""

    def jobs(self, counts: Mapping[str, int], oldest_pending_age: float | None) -> None:
        """Jobs by state, and the age of the oldest job not yet finished."""

    def next_request(self, seconds: float) -> None:
        """The next request may start in ``seconds`` (0: now; NaN: when a pause is lifted)."""

    def resend(self) -> None:
        """A request whose earlier outcome was unknown is sent again."""

    def upload_bytes(self, endpoint: str, size: int) -> None:
        """``size`` bytes of image data were sent to ``endpoint`` (a name of ENDPOINTS)."""

    def heartbeat(self) -> None:
        """The main loop is alive."""

    def crashed(self) -> None:
        """A component died: /healthz answers 503 from now on, whatever the heartbeat."""

    def add_folder(self, folder: str) -> None:
        """A folder was added (on reload): create its series."""

    def retire_folder(self, folder: str) -> None:
        """A reload removed ``folder``: it is no longer watched."""

    def folder_up(self, folder: str, up: float) -> None:
        """The inbox of ``folder`` is there and watched (1), polled for want of inotify
        watches (0.5), or lost (0)."""

    def fleet_hosts(self, hosts: int) -> None:
        """PostgreSQL: the fleet's hosts seen within ``lease_seconds``."""

    def hook_finished(self, folder: str, kind: str, result: str) -> None:
        """One try of a hook (kind command | webhook) ended: ok, failed or timeout."""

    def hooks_pending(self, pending: int) -> None:
        """Hooks recorded and not yet delivered or dropped."""


F = TypeVar("F", bound=Callable[..., None])


def _guarded(method: F) -> F:
    """Log and swallow any exception of a recording method: observers never steer."""

    @functools.wraps(method)
    def wrapper(*args: object, **kwargs: object) -> None:
        try:
            method(*args, **kwargs)
        except Exception as exc:
            # A broken log must not break the caller either.
            with contextlib.suppress(Exception):
                _log.warning("metrics.error", method=method.__name__, error=repr(exc))

    return wrapper  # type: ignore[return-value]


class Metrics(Recorder):
    """The Prometheus recorder: its own registry, served on ``listen`` by :meth:`start`."""

    def __init__(
        self,
        listen: str,
        folders: Sequence[str],
        version: str,
        clock: Callable[[], float] = time.time,
        stall_seconds: float = 30.0,
        *,
        fleet: bool = False,
    ) -> None:
        # Process-wide switch; _created series only confuse rate() and promtool.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self._address = parse_listen(listen)
        self._clock = clock
        self._stall = stall_seconds
        # Start with a grace period: the loop has until stall_seconds to beat first.
        self._last_beat = clock()
        self._crashed = False
        self._folders_lock = threading.Lock()
        self._retired: set[str] = set()  # removed by a reload; see retire_folder
        self.registry = CollectorRegistry(auto_describe=True)
        self._define(self.registry)
        self._server = MetricsServer(prometheus_client.make_wsgi_app(self.registry), self.healthy)
        self._build_info.labels(version=version).set(1)
        for state in STATES:
            self._jobs.labels(state=state).set(0)
        for reason in REASONS:
            self._paused.labels(reason=reason).set(0)
        self._reasons = list(REASONS)
        for endpoint in ENDPOINTS:
            self._api_requests.labels(endpoint=endpoint, code="200")
            self._api_duration.labels(endpoint=endpoint)
        for endpoint in UPLOAD_ENDPOINTS:
            self._upload_bytes.labels(endpoint=endpoint)
        self._credits_available.set(math.nan)  # unknown until the first credit check
        self._next_request_at = clock()  # counted down at each scrape
        self._next_request.set_function(self._seconds_to_next_request)
        self._credits_expiry.set(math.nan)
        for folder in folders:
            self.add_folder(folder)
        # Only a fleet member (PostgreSQL) exports the fleet's size.
        self._fleet_hosts: Gauge | None = None
        if fleet:
            self._fleet_hosts = Gauge(
                "bgsyncd_fleet_hosts",
                "Hosts of the fleet seen within lease_seconds (PostgreSQL).",
                registry=self.registry,
            )

    def _define(self, r: CollectorRegistry) -> None:
        self._build_info = Gauge(
            "bgsyncd_build_info", "bgsyncd version (always 1).", ["version"], registry=r
        )
        self._discovered = Counter(
            "bgsyncd_files_discovered_total",
            "Complete files queued, by folder.",
            ["folder"],
            registry=r,
        )
        self._jobs = Gauge("bgsyncd_jobs", "Jobs in the queue, by state.", ["state"], registry=r)
        self._finished = Counter(
            "bgsyncd_jobs_finished_total",
            "Jobs finished, by outcome.",
            ["folder", "outcome"],
            registry=r,
        )
        self._api_requests = Counter(
            "bgsyncd_api_requests_total",
            "API requests by endpoint and HTTP status (or error).",
            ["endpoint", "code"],
            registry=r,
        )
        self._api_duration = Histogram(
            "bgsyncd_api_request_duration_seconds",
            "API request duration.",
            ["endpoint"],
            buckets=API_BUCKETS,
            registry=r,
        )
        self._rate_limited = Counter(
            "bgsyncd_rate_limited_total", "API answers 429 Too Many Requests.", registry=r
        )
        self._credits_available = Gauge(
            "bgsyncd_credits_available", "Last known available credits (NaN: unknown).", registry=r
        )
        self._credits_floor = Gauge("bgsyncd_credits_floor", "Configured credit floor.", registry=r)
        self._credits_expiry = Gauge(
            "bgsyncd_credits_expiry_timestamp_seconds",
            "When the credits expire (NaN: unknown).",
            registry=r,
        )
        self._paused = Gauge(
            "bgsyncd_dispatch_paused",
            "1 while dispatch is paused for reason.",
            ["reason"],
            registry=r,
        )
        self._oldest = Gauge(
            "bgsyncd_oldest_pending_age_seconds",
            "Age of the oldest job not yet done or quarantined.",
            registry=r,
        )
        self._job_duration = Histogram(
            "bgsyncd_job_duration_seconds",
            "Time from file queued to output written.",
            ["folder"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self._last_success = Gauge(
            "bgsyncd_last_success_timestamp_seconds",
            "When a job last succeeded (0: never).",
            ["folder"],
            registry=r,
        )
        self._upload_bytes = Counter(
            "bgsyncd_upload_bytes",
            "Bytes of image data sent, by endpoint.",
            ["endpoint"],
            registry=r,
        )
        self._resends = Counter(
            "bgsyncd_resends_total",
            "Requests sent again whose earlier outcome was unknown.",
            registry=r,
        )
        self._next_request = Gauge(
            "bgsyncd_dispatch_next_request_seconds",
            "Seconds until the next request may start (0: now; NaN: paused until lifted).",
            registry=r,
        )
        self._hooks = Counter(
            "bgsyncd_hooks",
            "Tries of hooks (SPEC section 10), by folder, kind and result.",
            ["folder", "kind", "result"],
            registry=r,
        )
        self._hooks_pending = Gauge(
            "bgsyncd_hooks_pending",
            "Hooks recorded and not yet delivered or dropped.",
            registry=r,
        )
        self._folder_up = Gauge(
            "bgsyncd_folder_up",
            "1 while the folder's inbox is there and watched; 0.5 while it is polled"
            " because inotify ran out of watches; 0 while it is lost.",
            ["folder"],
            registry=r,
        )

    # --- Recorder -------------------------------------------------------------

    @_guarded
    def add_folder(self, folder: str) -> None:
        """Create every series of ``folder`` so they exist before the first event."""
        self._discovered.labels(folder=folder)
        for outcome in OUTCOMES:
            self._finished.labels(folder=folder, outcome=outcome)
        self._job_duration.labels(folder=folder)
        self._last_success.labels(folder=folder)
        for kind in HOOK_KINDS:
            for result in HOOK_RESULTS:
                self._hooks.labels(folder=folder, kind=kind, result=result)
        # 0 until the watcher reports it watched; a reload's call keeps the value.
        with self._folders_lock:
            self._retired.discard(folder)
            self._folder_up.labels(folder=folder)

    @_guarded
    def retire_folder(self, folder: str) -> None:
        """Drop ``folder``'s ``bgsyncd_folder_up``: a folder not configured is not "up".

        Its counters stay (what it did is history); a late report from the
        watcher being replaced is ignored until the folder is added again.
        """
        with self._folders_lock:
            self._retired.add(folder)
            with contextlib.suppress(KeyError):
                self._folder_up.remove(folder)

    @_guarded
    def fleet_hosts(self, hosts: int) -> None:
        """The fleet has ``hosts`` hosts seen within ``lease_seconds``."""
        if self._fleet_hosts is not None:
            self._fleet_hosts.set(hosts)

    @_guarded
    def hook_finished(self, folder: str, kind: str, result: str) -> None:
        """Count one try of a hook."""
        self._hooks.labels(folder=folder, kind=kind, result=result).inc()

    @_guarded
    def hooks_pending(self, pending: int) -> None:
        """Set the hooks waiting to be delivered."""
        self._hooks_pending.set(float(pending))

    @_guarded
    def folder_up(self, folder: str, up: float) -> None:
        """Set 1 while ``folder``'s inbox is watched, 0.5 while polled instead, 0 while lost."""
        with self._folders_lock:
            if folder not in self._retired:
                self._folder_up.labels(folder=folder).set(float(up))

    @_guarded
    def file_discovered(self, folder: str) -> None:
        """Count a file queued in ``folder``."""
        self._discovered.labels(folder=folder).inc()

    @_guarded
    def job_finished(self, folder: str, outcome: str, duration: float | None) -> None:
        """Count the outcome; a success also times the job and stamps the last success."""
        self._finished.labels(folder=folder, outcome=outcome).inc()
        if outcome in ("success", "cached"):
            if duration is not None:
                self._job_duration.labels(folder=folder).observe(duration)
            self._last_success.labels(folder=folder).set(self._clock())

    @_guarded
    def api_request(self, endpoint: str, code: str, seconds: float) -> None:
        """Count and time one API request."""
        self._api_requests.labels(endpoint=endpoint, code=code).inc()
        self._api_duration.labels(endpoint=endpoint).observe(seconds)

    @_guarded
    def rate_limited(self) -> None:
        """Count a 429."""
        self._rate_limited.inc()

    @_guarded
    def credits(self, available: int | None, expires_at: float | None) -> None:
        """Set the credit balance and expiry; None is exported as NaN (unknown)."""
        self._credits_available.set(math.nan if available is None else float(available))
        self._credits_expiry.set(math.nan if expires_at is None else float(expires_at))

    @_guarded
    def credits_floor(self, floor: int) -> None:
        """Set the configured floor."""
        self._credits_floor.set(float(floor))

    @_guarded
    def paused(self, reason: str | None) -> None:
        """Set 1 for ``reason`` and 0 for every other reason."""
        if reason is not None and reason not in self._reasons:
            self._reasons.append(reason)
        for known in self._reasons:
            self._paused.labels(reason=known).set(1 if known == reason else 0)

    @_guarded
    def jobs(self, counts: Mapping[str, int], oldest_pending_age: float | None) -> None:
        """Set jobs by state (missing states are 0) and the oldest pending age (0: none)."""
        for state in (*STATES, *(s for s in counts if s not in STATES)):
            self._jobs.labels(state=state).set(float(counts.get(state, 0)))
        self._oldest.set(0.0 if oldest_pending_age is None else float(oldest_pending_age))

    @_guarded
    def next_request(self, seconds: float) -> None:
        """The next request may start in ``seconds``: counted down until the next report."""
        self._next_request_at = self._clock() + seconds

    def _seconds_to_next_request(self) -> float:
        left = self._next_request_at - self._clock()
        return left if math.isnan(left) else max(0.0, left)

    @_guarded
    def resend(self) -> None:
        """Count a re-send of a request whose outcome was unknown."""
        self._resends.inc()

    @_guarded
    def upload_bytes(self, endpoint: str, size: int) -> None:
        """Add ``size`` bytes of image data sent to ``endpoint``."""
        self._upload_bytes.labels(endpoint=endpoint).inc(size)

    @_guarded
    def heartbeat(self) -> None:
        """Note that the main loop is alive."""
        self._last_beat = self._clock()

    def crashed(self) -> None:
        """A component died: unhealthy at once and for good (the daemon is exiting)."""
        self._crashed = True

    # --- serving --------------------------------------------------------------

    def healthy(self) -> bool:
        """True while the last heartbeat is younger than ``stall_seconds`` and nothing crashed."""
        return not self._crashed and self._clock() - self._last_beat < self._stall

    @property
    def port(self) -> int | None:
        """The bound port once started (useful with port 0), else None."""
        return self._server.port

    def serve_page(self, app: WSGIApplication) -> None:
        """Serve the status page (``bgsyncd.web``) on every other path of the listener."""
        self._server.page = app

    def start(self) -> None:
        """Serve /metrics and /healthz in a daemon thread; nothing when listen is ''."""
        if self._address is not None:
            self._server.start(*self._address)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.stop()
