"""The storage contract: what the daemon keeps, whichever engine keeps it.

Records (:class:`Found`, :class:`Job`), the error (:class:`QueueError`) and
one narrow Protocol per thing stored:

- :class:`JobStore` — the jobs: discovery, dispatch, status and retry;
- :class:`OutputClaims` — which input owns which output name;
- :class:`StateStore` — small named values (pause reason, last credits...);
- :class:`StoreHealth` — is the store still there and writable;
- :class:`RequestLog` / :class:`SharedRequestLog` — request starts for the pacer;
- :class:`ResultStore` — API results by content hash (the cache);
- :class:`HookQueue` — hooks waiting to be delivered (SPEC §10).

:class:`Store` is what a daemon opens: jobs, claims, state, hooks and health on one
database. Two engines implement it: SQLite (``storage.sqlite.store.SqliteStore``, one host) and
PostgreSQL (``storage.postgres.store.PostgresStore``, a fleet, SPEC §8). Neither engine's driver
is imported here, so every module may depend on this one.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from bgsyncd.errors import BgsyncdError

STATES = ("pending", "in_flight", "retry_wait", "done", "quarantined")


class QueueError(BgsyncdError):
    """The queue database cannot be opened, read or written."""


class LeaseLost(BgsyncdError):
    """A change to a job was refused: the claim it was made under no longer holds the job.

    Another host took the job over (this one was frozen, cut off or slow past
    its lease), the job was given back, or it is gone. Nothing was changed;
    the caller drops the job's result (SPEC §8).
    """


@dataclass(frozen=True)
class Found:
    """A complete file in an inbox, as the watcher saw it."""

    folder: str
    relpath: str
    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class Job:
    """One input file's row in the queue."""

    id: int
    folder: str
    relpath: str
    size: int
    mtime_ns: int
    inode: int
    sha256: str | None
    state: str
    attempts: int
    first_seen: float
    queued_at: float
    resend: bool  # was in flight when a run died: the next send may be a second charge
    reason: str | None = None  # quarantine reason
    last_error: str | None = None  # last failure or quarantine message
    http_status: int | None = None
    next_attempt_at: float | None = None
    outputs: tuple[str, ...] = ()
    claim_token: str | None = None  # the claim that took it in flight (``JobStore.claim``)


@dataclass(frozen=True)
class Recent:
    """A job as the status page lists it: ``at`` is when its state last changed."""

    job: Job
    at: float  # unix seconds, this host's clock


@dataclass(frozen=True)
class HookEvent:
    """A hook to deliver, recorded with its job's transition (SPEC §10).

    ``event_id`` is the event's, the same for every kind of one event and for
    every try; ``kind`` is ``command`` or ``webhook``; ``payload`` is the
    event as one JSON object (text), what the command reads and the webhook gets.
    """

    event_id: str
    folder: str
    kind: str
    payload: str


@dataclass(frozen=True)
class PendingHook:
    """A recorded hook as claimed for a try: ``attempts`` tries failed before this one."""

    id: int
    event: HookEvent
    attempts: int
    claim_token: str


# The columns a Job is read from, in both engines' ``jobs`` table (SELECT {COLUMNS}).
COLUMNS = (
    "id, folder, relpath, size, mtime_ns, inode, sha256, state, attempts, first_seen,"
    " queued_at, resend, reason, last_error, http_status, next_attempt_at, outputs, claim_token"
)


def job_of(row: Sequence[Any]) -> Job:
    """A :class:`Job` from a row of :data:`COLUMNS` (either engine)."""
    return Job(
        id=row[0], folder=row[1], relpath=row[2], size=row[3], mtime_ns=row[4], inode=row[5],
        sha256=row[6], state=row[7], attempts=row[8], first_seen=row[9], queued_at=row[10],
        resend=bool(row[11]), reason=row[12], last_error=row[13], http_status=row[14],
        next_attempt_at=row[15], outputs=tuple(json.loads(row[16])), claim_token=row[17],
    )  # fmt: skip


class JobStore(Protocol):
    """The jobs: one row per input file, through pending, in flight and done.

    Fencing (SPEC §8): ``claim`` hands out a job with a fresh ``claim_token``.
    Every change to a claimed job (``record_version``, ``set_sha256``,
    ``complete``, ``quarantine``, ``retry_later``, ``release``, ``defer``,
    ``forget``) takes the :class:`Job`
    as claimed and is made only while that claim still holds it (in flight,
    same token); otherwise nothing changes and :class:`LeaseLost` is raised.
    ``holds`` asks the same question without changing anything.

    ``complete`` and ``quarantine`` record their ``hooks`` in the same
    transaction as the transition (SPEC §10): a job is never done without
    its hooks, and a refused change records none.
    """

    def is_unchanged(
        self, folder: str, relpath: str, size: int, mtime_ns: int, inode: int
    ) -> bool: ...
    def enqueue_many(self, found: Iterable[Found]) -> list[Found]: ...
    def forget(self, job: Job) -> None: ...
    def recover(self) -> int: ...
    def claim(self, lease_seconds: float, folders: Collection[str] | None = None) -> Job | None: ...
    def holds(self, job: Job) -> bool: ...
    def claim_path(self, folder: str, relpath: str, lease_seconds: float) -> Job | None: ...
    def next_ready_at(self, folders: Collection[str] | None = None) -> float | None: ...
    def record_version(self, job: Job, size: int, mtime_ns: int, inode: int) -> None: ...
    def set_sha256(self, job: Job, sha256: str) -> None: ...
    def complete(
        self, job: Job, outputs: Sequence[str], hooks: Sequence[HookEvent] = ()
    ) -> None: ...
    def quarantine(
        self,
        job: Job,
        reason: str,
        message: str,
        http_status: int | None,
        location: str | None = None,
        hooks: Sequence[HookEvent] = (),
    ) -> None: ...
    def retry_later(self, job: Job, at: float, error: str, *, resend: bool = False) -> int: ...
    def release(self, job: Job, *, resend: bool = False) -> None: ...
    def defer(self, job: Job, at: float, note: str) -> None: ...
    def counts(self) -> dict[str, dict[str, int]]: ...
    def oldest_pending_queued_at(self) -> float | None: ...
    def quarantined(self, folder: str | None = None) -> list[Job]: ...
    def retry_waiting(self) -> list[Job]: ...
    def requeue(self, job_id: int) -> bool: ...
    def requeue_done(self, folder: str, relpath: str) -> bool: ...
    # the status page (SPEC §11); times are this host's clock
    def recent(self, limit: int) -> list[Recent]: ...
    def done_since(self, t: float) -> dict[str, int]: ...
    def last_done(self) -> dict[str, float]: ...


# The tree of a folder's own outputs (``OutputClaims``); a rendition's is its outbox path.
OWN_TREE = ""


class OutputClaims(Protocol):
    """Output names and the input that owns each (two inputs never write one name).

    A name is claimed with every folder on its way (``names.first_free_output``):
    no file where another output's folder, or an inbox folder holding inputs,
    stands, and no output inside another's file name.

    Names are claimed per tree (SPEC §9): ``tree`` is ``OWN_TREE`` ("") for the
    folder's own outbox (every claim made before renditions existed is one of
    these) and a rendition's resolved outbox path for its tree. The path, not
    the rendition's place in the list: it stays the same across restarts and
    across edits that add, remove or reorder renditions, and a rendition moved
    to another outbox starts an empty tree there, as it should (the names it
    claimed were names in the old folder). An adoption claims the folder's own
    tree.
    """

    def adopt(self, found: Found, outputs: Sequence[str]) -> bool: ...
    def claimed_outputs(self, job_id: int, tree: str = ...) -> list[str]: ...
    def claim_output(
        self, folder: str, job_id: int, candidates: Iterable[str], tree: str = ...
    ) -> str: ...


class HookQueue(Protocol):
    """Hooks waiting to be delivered, at least once (SPEC §10).

    ``claim_hooks`` hands out up to ``limit`` hooks of ``folders`` (the
    folders the claimer serves: never another host's) that are due and not
    claimed, each under a fresh token and a lease of ``lease_seconds``: no
    other claimer (thread or host) gets it meanwhile, and one whose claimer
    died is due again when the lease runs out (or at once after
    ``release_hooks``, which a daemon calls at start for its own claims).
    ``hook_delivered`` deletes it; ``hook_failed`` counts a failed try and
    makes it due again at ``at`` (this host's clock); ``drop_hook`` deletes
    it undelivered. Each acts only while the token still holds the hook.
    """

    def claim_hooks(
        self, limit: int, lease_seconds: float, folders: Collection[str]
    ) -> list[PendingHook]: ...
    def hook_delivered(self, hook: PendingHook) -> None: ...
    def hook_failed(self, hook: PendingHook, at: float) -> None: ...
    def drop_hook(self, hook: PendingHook) -> None: ...
    def release_hooks(self) -> int: ...
    def hooks_pending(self) -> int: ...


class StateStore(Protocol):
    """Small named values the daemon keeps across restarts (shared by a fleet)."""

    def get_state(self, key: str) -> str | None: ...
    def set_state(self, key: str, value: str | None) -> None: ...


class StoreHealth(Protocol):
    """Whether the store is new, still the one opened, and writable now."""

    @property
    def created(self) -> bool: ...
    def lost(self) -> str | None: ...
    def check_writable(self) -> None: ...
    def close(self) -> None: ...


class Store(JobStore, OutputClaims, HookQueue, StateStore, StoreHealth, Protocol):
    """Everything a daemon keeps in its queue database."""


class RequestLog(Protocol):
    """Request start times of one host (SQLite): the pacer records, then sends."""

    def record(self, t: float) -> None: ...
    def since(self, t: float) -> list[float]: ...
    def close(self) -> None: ...


@runtime_checkable
class SharedRequestLog(Protocol):
    """Request starts of one account across a fleet, timed by the database's clock.

    ``try_start`` checks the window and records the start in one step: 0.0
    when the request may begin now, else the seconds to wait.
    """

    def try_start(self, limit: int, window: float, margin: float) -> float: ...
    def since(self, t: float) -> list[float]: ...


class ResultStore(Protocol):
    """API results (PNG bytes) by input sha256 and entry kind, size-bounded, LRU.

    ``fetching(sha256)`` is held while this content's request is in flight,
    so that everyone sharing the store waits for that answer (then ``get``
    finds it) instead of paying for it again: a no-op for one host's cache
    (the worker's own lock covers its threads), a fleet-wide claim for the
    fleet's (SPEC §8). The wait is bounded; it never raises.
    """

    @property
    def enabled(self) -> bool: ...
    @property
    def total_bytes(self) -> int: ...
    def __len__(self) -> int: ...
    def get(self, sha256: str, kind: str = ...) -> bytes | None: ...
    def put(self, sha256: str, data: bytes, kind: str = ...) -> None: ...
    def fetching(self, sha256: str) -> AbstractContextManager[None]: ...
