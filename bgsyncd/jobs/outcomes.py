"""What becomes of a job: a pure decision from what happened to an ``Outcome``.

The worker does things (reads the input, asks the API, writes outputs) and
reports what happened as one of the ``Happening`` values below; :func:`decide`
turns it, with the job's history (:class:`Context`), into an :class:`Outcome`
whose :class:`Transition` is what becomes of the job; the applier carries it
out in one place and reports it to the dispatcher as a :class:`Result` (the
same transition, with what it means for the account). Nothing here touches a file, the
queue, a clock or a lock, so every credit-spending rule is a unit test.

The rules (SPEC §4, §5), by what happened:

===================================  =========================================
what happened                        outcome
===================================  =========================================
outputs written (API, cache, found)  done; charged only when the API answered
413, 415, rejected by the API        quarantine at once, no retry
401, 402, 403                        back to pending, no attempt; pause (reason)
3xx                                  back to pending, no attempt; pause
                                     ``unexpected_redirect`` (target logged)
429                                  back to pending, no attempt; wait
5xx, timeout, connection, malformed  retry with an attempt, charged and a
                                     resend when the outcome is unknown; no
                                     attempt in an outage (:mod:`.outage`)
a 200 we cannot use                  charged, an attempt; retried once, then
                                     ``rejected_by_api``; the third in a row
                                     for the account pauses ``api_malformed``
a local verdict (unsupported,        final once the file is ``settle_seconds``
corrupt, too large)                  old; younger: wait, no attempt
a local fault writing (ENOSPC, …)    back to pending, no attempt; pause
                                     ``output_unwritable``
short of descriptors (EMFILE,        the same, wherever it hit (reading
ENFILE)                              the input or writing)
a refused write (ELOOP, ENOTDIR)     retry with an attempt; then
                                     ``output_refused``
any other write or internal error    retry with an attempt; then
                                     ``retries_exhausted``
input vanished                       forgotten
stopping, folder no longer set up    back to pending, no attempt
===================================  =========================================

A retry becomes a quarantine at ``max_attempts`` counted attempts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from bgsyncd import errors
from bgsyncd.api import outage
from bgsyncd.reasons import API_MALFORMED, API_UNREACHABLE, OUTPUT_UNWRITABLE

# Unusable answers in a row, for the whole account, that pause dispatch.
UNUSABLE_STREAK_LIMIT = 3
# Unusable answers one file may get: the second quarantines it.
UNUSABLE_PER_FILE = 2
# ``last_error`` of a job whose last failure was an unusable answer starts so:
# the per-file count survives a restart.
UNUSABLE_PREFIX = "unusable answer: "

LOCAL_VERDICTS = frozenset({"unsupported_media", "corrupt_image", "too_large"})
NEEDS_REQUEST = "needs a request"  # ``Interrupted.why`` of work that is not free (SPEC §4)


class Transition(enum.Enum):
    """What happens to the job's row in the queue."""

    DONE = "done"  # outputs written and the job marked done (by the doing side)
    QUARANTINE = "quarantine"  # moved to the quarantine with its sidecar
    RETRY = "retry"  # an attempt counted, tried again after a backoff
    DEFER = "defer"  # tried again at ``Outcome.at``, no attempt counted
    RELEASE = "release"  # back to pending, no attempt counted
    FORGET = "forget"  # the input is gone
    REQUEUE = "requeue"  # the input changed after it was read: its new version is queued


# -- what happened ------------------------------------------------------------------


@dataclass(frozen=True)
class Finished:
    """The outputs were written; ``source`` is ``api``, ``cache`` or ``outputs``.

    ``outputs``: every one of them, the folder's own and each rendition's (as
    ``jobs.delivery.Tree.output`` records them), for ``job.done``.
    """

    source: str
    outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ApiFailed:
    """The image request ended in ``error`` (anything in the ``ApiError`` tree)."""

    error: errors.ApiError


@dataclass(frozen=True)
class LocalVerdict:
    """The input itself cannot be sent; ``age``: seconds since it last changed or was queued."""

    reason: str
    message: str
    age: float


@dataclass(frozen=True)
class WriteFailed:
    """Writing under ``folder`` (output, sidecar, quarantine, done) raised ``error``.

    ``charged``: this run's request was answered (the result is kept, so the
    retry costs no credit).
    """

    error: OSError
    folder: str
    during: str
    charged: bool = False


@dataclass(frozen=True)
class Changed:
    """The input was rewritten after it was read: what was decided was about old bytes."""

    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class Vanished:
    """The input disappeared (or its path now leads through a symlink)."""

    during: str | None = None


@dataclass(frozen=True)
class Interrupted:
    """Nothing was sent: the daemon is stopping, or the folder was removed by a reload."""

    why: str


@dataclass(frozen=True)
class Crashed:
    """An unexpected exception (a bug); ``charged`` as for ``WriteFailed``."""

    error: BaseException
    charged: bool = False


Happening = (
    Finished | ApiFailed | LocalVerdict | WriteFailed | Changed | Vanished | Interrupted | Crashed
)


@dataclass(frozen=True)
class Context:
    """What the decision needs to know besides what happened."""

    attempts: int  # attempts counted before this one
    max_attempts: int
    settle_seconds: float
    earlier_unusable: int = 0  # unusable answers this file got before
    unusable_streak: int = 0  # unusable answers in a row for the account before this one
    failures_before: int = 0  # 5xx, timeouts... in a row for the account before this one


# -- the decision ---------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """Everything the doing side needs to finish a job, decided in one place."""

    transition: Transition
    event: str  # the log line's event name
    level: str = "info"  # its level: info, warning, error
    counts_attempt: bool = False
    charged: bool = False  # a credit was (or may have been) spent by this run's request
    resend: bool = False  # the next send may be a second charge (outcome unknown)
    pause: str | None = None  # dispatch pauses for this reason
    reason: str | None = None  # quarantine reason
    message: str = ""
    http_status: int | None = None
    wait: float | None = None  # DEFER: seconds to wait; RELEASE after a 429: Retry-After
    rate_limited: bool = False
    unusable: bool = False  # an unusable answer: counts for the file and the account
    usable: bool = False  # a usable answer: ends the account's streak
    finished: str | None = None  # metrics outcome: success, cached, quarantined
    move: bool = True  # QUARANTINE: move the input (False: mark it only, it cannot move)
    requeue_as: tuple[int, int, int] | None = None  # REQUEUE: the new size, mtime_ns, inode
    fields: Mapping[str, object] = field(default_factory=dict)  # more for the log line


def decide(what: Happening, ctx: Context) -> Outcome:
    """The outcome of ``what`` for a job with history ``ctx``; pure."""
    if isinstance(what, Finished):
        return Outcome(
            Transition.DONE,
            "job.done",
            charged=what.source == "api",
            usable=what.source == "api",
            finished="success" if what.source == "api" else "cached",
            fields={"source": what.source, "outputs": list(what.outputs)},
        )
    if isinstance(what, ApiFailed):
        return _api_failed(what.error, ctx)
    if isinstance(what, LocalVerdict):
        if what.age < ctx.settle_seconds:
            # Perhaps a writer between two appends: final only once it is quiet.
            return Outcome(
                Transition.DEFER,
                "file.settling",
                wait=ctx.settle_seconds - what.age,
                message=what.message,
                fields={"verdict": what.reason},
            )
        return _quarantine(what.reason, what.message, None, ctx, counted=False)
    if isinstance(what, WriteFailed):
        return _write_failed(what, ctx)
    if isinstance(what, Vanished):
        during = {} if what.during is None else {"during": what.during}
        return Outcome(Transition.FORGET, "file.vanished", fields=during)
    if isinstance(what, Changed):
        # A verdict on bytes that are no longer there is no verdict: the new
        # version is queued afresh (attempts from zero) and judged on its own.
        return Outcome(
            Transition.REQUEUE,
            "file.changed",
            requeue_as=(what.size, what.mtime_ns, what.inode),
            fields={"note": "changed while processed; queued again"},
        )
    if isinstance(what, Interrupted):  # a free look that found a request needed is routine
        level = "debug" if what.why == NEEDS_REQUEST else "info"
        return Outcome(Transition.RELEASE, "job.released", level, fields={"why": what.why})
    if isinstance(what.error, OSError) and errors.is_out_of_descriptors(what.error):
        # The daemon's own shortage (EMFILE, ENFILE) wherever it hit, never the
        # file's: as a full disk, nothing counted; the output probe lifts the pause.
        text = errors.describe_os_error(what.error)
        return Outcome(
            Transition.RELEASE,
            "daemon.out_of_descriptors",
            level="error",
            charged=what.charged,
            pause=OUTPUT_UNWRITABLE,
            message=f"short of file descriptors: {text}",
        )
    message = f"internal error: {errors.describe(what.error)}"
    return _retry(message, None, ctx, charged=what.charged, level="error")


def quiet_for(now: float, mtime: float, queued_at: float) -> float:
    """Seconds an input has been quiet: since its last write and the close that queued it.

    An mtime in the future (another host's clock, ``touch -d``) is not believed,
    or a bad file would wait for that date: the time it was queued counts alone.
    """
    since = queued_at if mtime > now else max(mtime, queued_at)
    return max(0.0, now - since)


def _api_failed(error: errors.ApiError, ctx: Context) -> Outcome:
    if isinstance(error, errors.PermanentFileError):
        return _quarantine(error.reason, error.message, error.status, ctx, counted=False)
    if isinstance(error, errors.UnexpectedRedirect):
        return Outcome(
            Transition.RELEASE,
            "api.redirect",
            level="warning",
            pause=error.reason,
            message=error.message,
            http_status=error.status,
            fields={"location": error.location},
        )
    if isinstance(error, errors.AccountError):
        return Outcome(
            Transition.RELEASE,
            "api.account_error",
            level="warning",
            pause=error.reason,
            message=error.message,
            http_status=error.status,
        )
    if isinstance(error, errors.RateLimited):
        return Outcome(
            Transition.RELEASE,
            "api.rate_limited",
            level="warning",
            rate_limited=True,
            wait=error.retry_after,
            http_status=429,
            fields={"retry_after": error.retry_after},
        )
    if isinstance(error, errors.UnusableAnswer):
        return _unusable(error, ctx)
    assert isinstance(error, errors.TransientError)  # the last branch of the tree
    unknown = error.outcome_unknown
    paused = outage.pauses(error, ctx.failures_before)
    if paused or ctx.failures_before:  # not the file's fault: nothing counted (SPEC §5)
        return Outcome(
            Transition.RELEASE,
            "api.unreachable" if paused else "api.failed",
            level="warning",
            charged=unknown,
            resend=unknown,
            pause=API_UNREACHABLE if paused else None,
            message=error.message,
            http_status=error.status,
            fields={"failures_in_a_row": ctx.failures_before + 1},
        )
    # A request whose outcome is unknown may have been charged: the local
    # count errs low (the floor holds) and the next send is a resend.
    return _retry(error.message, error.status, ctx, charged=unknown, resend=unknown)


def _unusable(error: errors.ApiError, ctx: Context) -> Outcome:
    streak = ctx.unusable_streak + 1
    pause = API_MALFORMED if streak >= UNUSABLE_STREAK_LIMIT else None
    message = UNUSABLE_PREFIX + error.message
    if ctx.earlier_unusable + 1 >= UNUSABLE_PER_FILE:
        out = _quarantine("rejected_by_api", message, error.status, ctx, counted=True)
    else:
        out = _retry(message, error.status, ctx, charged=True)
    fields = {**out.fields, "unusable_in_a_row": streak}
    return replace(out, charged=True, unusable=True, pause=pause, fields=fields)


def _write_failed(what: WriteFailed, ctx: Context) -> Outcome:
    text = errors.describe_os_error(what.error)
    fields = {"folder_path": what.folder, "during": what.during, "error": text}
    if errors.is_local_fault(what.error):
        # The disk, not the input: nothing is quarantined and nothing counted;
        # the probe lifts the pause, and the kept result makes the resume free.
        return Outcome(
            Transition.RELEASE,
            "output.unwritable",
            level="error",
            charged=what.charged,
            pause=OUTPUT_UNWRITABLE,
            message=f"writing to {what.folder} failed: {text}",
            fields=fields,
        )
    message = f"{what.during} in {what.folder} failed: {text}"
    if errors.is_refused(what.error):
        if ctx.attempts + 1 >= ctx.max_attempts:
            # Refused again at the last attempt: if it was the quarantine
            # itself that was refused, the input stays where it is.
            out = _quarantine("output_refused", message, None, ctx, counted=True)
            return replace(out, charged=what.charged, move=what.during != "quarantine")
        return _retry(message, None, ctx, charged=what.charged, fields=fields)
    if what.during == "quarantine":
        # Neither the disk nor a swap (a name, say): the input stays, the job ends.
        return replace(
            _quarantine("retries_exhausted", message, None, ctx, counted=False),
            charged=what.charged,
            move=False,
        )
    return _retry(message, None, ctx, charged=what.charged, fields=fields)


def _retry(
    message: str,
    status: int | None,
    ctx: Context,
    *,
    charged: bool,
    resend: bool = False,
    level: str = "warning",
    fields: Mapping[str, object] | None = None,
) -> Outcome:
    attempts = ctx.attempts + 1
    if attempts >= ctx.max_attempts:
        out = _quarantine("retries_exhausted", message, status, ctx, counted=True)
        return replace(out, charged=charged)
    return Outcome(
        Transition.RETRY,
        "job.retry",
        level=level,
        counts_attempt=True,
        charged=charged,
        resend=resend,
        message=message,
        http_status=status,
        fields={"attempts": attempts, **(fields or {})},
    )


def _quarantine(
    reason: str, message: str, status: int | None, ctx: Context, *, counted: bool
) -> Outcome:
    return Outcome(
        Transition.QUARANTINE,
        "job.quarantined",
        level="warning",
        counts_attempt=counted,
        reason=reason,
        message=message,
        http_status=status,
        finished="quarantined",
        fields={"attempts": ctx.attempts + (1 if counted else 0)},
    )


# -- what the dispatcher reads -----------------------------------------------------------

# Called with a pause reason (and context) before the job returns to the queue.
PauseHook = Callable[..., None]


@dataclass(frozen=True)
class Result:
    """An outcome once carried out, as the dispatcher reads it: the same ``transition``,
    and what it means for the account (a credit spent, a pause, a 429's wait)."""

    transition: Transition
    charged: bool = False  # a credit was (or may have been) spent
    reason: str | None = None  # QUARANTINE: its reason; else the pause's
    rate_limited: bool = False  # a 429: the pacer waits ``retry_after``
    retry_after: float | None = None
    settle_in: float | None = None  # a local verdict, final once the input is quiet this long
    pause: str | None = None  # dispatch pauses for this reason
    pause_context: Mapping[str, object] = field(default_factory=dict)  # logged with the pause
