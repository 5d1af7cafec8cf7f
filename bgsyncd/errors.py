"""The errors bgsyncd raises, and what each one means for a job.

::

    BgsyncdError
     ├── ConfigError              bad configuration: exit status 2, never a traceback
     ├── Stopped                  the daemon is shutting down; a wait was abandoned
     ├── QueueUnavailable         the queue database cannot be read or written now: pause
     │                            (``queue_unavailable``), resume when it answers
     └── ApiError                 anything the API (or the way to it) answered
          ├── PermanentFileError  this file will never succeed: quarantine, no retry
          │    ├── FileTooLarge        413
          │    └── UnsupportedMedia    415
          ├── AccountError        the whole account is blocked: pause every dispatch
          │    ├── InvalidApiKey       401
          │    ├── InsufficientCredits 402
          │    ├── CreditsExpired      403
          │    └── UnexpectedRedirect  3xx: never followed (the key stays home)
          ├── RateLimited         429: wait (retry_after when given), no attempt counted
          └── TransientError      try again later with backoff, counting attempts
               ├── ServerError         5xx (and any other unexpected status)
               ├── RequestTimeout      connect/read/write/pool timeout
               ├── ConnectionFailed    reset, dropped connection
               │    └── Unreachable    no connection at all (refused, DNS, TLS, no route)
               └── MalformedResponse   an answer whose body we cannot use
                    └── UnusableAnswer  a 200 we cannot use: charged (see SPEC §5)

``TransientError.outcome_unknown`` is True when the request body may have reached
the API and been charged (read timeout, connection dropped after sending): a
re-send of such a request may cost a second credit and is counted as a resend.

Local filesystem failures are plain ``OSError`` values; what their errno means is
decided by :func:`is_local_fault` (the disk, or the daemon short of
descriptors, :func:`is_out_of_descriptors`; not the input: pause with
``output_unwritable``) and :func:`is_refused` (a symlink or non-folder on the
way under an outbox, quarantine or done folder: retry, then ``output_refused``).

No message here ever contains the API key: the client builds messages from the
status, the endpoint and the API's own error text only.
"""

from __future__ import annotations

import errno


class BgsyncdError(Exception):
    """Base of every error bgsyncd raises on purpose."""


class ConfigError(BgsyncdError):
    """The configuration is invalid; the message names the key and the file."""


class Stopped(BgsyncdError):
    """A blocking wait was abandoned because the daemon is stopping."""


class HostConflict(BgsyncdError):
    """Another live daemon of the fleet already uses this ``host_id``."""


class QueueUnavailable(BgsyncdError):
    """The queue database cannot be read or written right now (full, read-only, gone)."""


# The daemon ran short of file descriptors: its own trouble, never a file's.
OUT_OF_DESCRIPTORS_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
# Writing failed because of the disk (or the daemon's descriptors), not the
# input: pause, probe, resume.
LOCAL_FAULT_ERRNOS = (
    frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})
    | OUT_OF_DESCRIPTORS_ERRNOS
)
# A folder on the way was swapped for a symlink or a file: the write is refused.
REFUSED_ERRNOS = frozenset({errno.ELOOP, errno.ENOTDIR})


def is_local_fault(exc: BaseException) -> bool:
    """``exc`` is a failure of the disk (full, read-only, no permission, I/O error),
    or the daemon is short of descriptors (``is_out_of_descriptors``)."""
    return isinstance(exc, OSError) and exc.errno in LOCAL_FAULT_ERRNOS


def is_out_of_descriptors(exc: BaseException) -> bool:
    """``exc`` says the process or the system has no descriptor left (``EMFILE``, ``ENFILE``)."""
    return isinstance(exc, OSError) and exc.errno in OUT_OF_DESCRIPTORS_ERRNOS


def is_refused(exc: BaseException) -> bool:
    """``exc`` says a path led through a symlink or a non-folder (``ELOOP``, ``ENOTDIR``)."""
    return isinstance(exc, OSError) and exc.errno in REFUSED_ERRNOS


def describe_os_error(exc: OSError) -> str:
    """``[Errno 28] No space left on device``: the errno and its text, never a bare class name."""
    if exc.errno is None:
        return str(exc) or type(exc).__name__
    return f"[Errno {exc.errno}] {exc.strerror or errno.errorcode.get(exc.errno, '')}"


def describe(exc: BaseException) -> str:
    """An exception for a message: the errno for an OSError, never just the class."""
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ApiError(BgsyncdError):
    """An API call failed; ``status`` is the HTTP status, or None without one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class PermanentFileError(ApiError):
    """The API will never accept this file; ``reason`` is the quarantine reason."""

    reason = "rejected_by_api"


class FileTooLarge(PermanentFileError):
    """413: the upload was over the API's size limit."""

    reason = "too_large"


class UnsupportedMedia(PermanentFileError):
    """415: the API could not read the image."""

    reason = "unsupported_media"


class AccountError(ApiError):
    """The account cannot be used right now; ``reason`` names the pause."""

    reason = "account_error"


class InvalidApiKey(AccountError):
    """401: the key was refused."""

    reason = "invalid_api_key"


class InsufficientCredits(AccountError):
    """402: no credits left."""

    reason = "insufficient_credits"


class CreditsExpired(AccountError):
    """403: the credits have expired."""

    reason = "credits_expired"


class UnexpectedRedirect(AccountError):
    """3xx: never followed, so the key never leaves for another host; ``location`` is the target."""

    reason = "unexpected_redirect"

    def __init__(self, message: str, status: int | None = None, location: str = "") -> None:
        super().__init__(message, status)
        self.location = location


class RateLimited(ApiError):
    """429: too many requests; ``retry_after`` is in seconds when the API said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message, 429)
        self.retry_after = retry_after


class TransientError(ApiError):
    """A failure that may pass; ``outcome_unknown`` when a credit may be spent."""

    def __init__(
        self, message: str, status: int | None = None, *, outcome_unknown: bool = False
    ) -> None:
        super().__init__(message, status)
        self.outcome_unknown = outcome_unknown


class ServerError(TransientError):
    """5xx, or a status the reference does not name."""


class RequestTimeout(TransientError):
    """The request timed out (connect, write, read or pool)."""


class ConnectionFailed(TransientError):
    """The connection could not be made or was dropped."""


class Unreachable(ConnectionFailed):
    """No connection could be made (refused, DNS, TLS, no route): pause ``api_unreachable``."""


class MalformedResponse(TransientError):
    """The API answered 200 with a body we could not use."""


class UnusableAnswer(MalformedResponse):
    """A 200 whose body cannot be used (not an image, truncated, too large, wrong size).

    It was charged: retried once, then ``rejected_by_api``; three in a row for
    the account pause dispatch (``api_malformed``).
    """
