"""The credit-spending rules, one per row of the error tree: ``outcomes.decide`` is pure."""

from __future__ import annotations

import errno

import pytest

from bgsyncd import errors
from bgsyncd.jobs.outcomes import (
    UNUSABLE_PREFIX,
    ApiFailed,
    Changed,
    Context,
    Crashed,
    Finished,
    Interrupted,
    LocalVerdict,
    Outcome,
    Transition,
    Vanished,
    WriteFailed,
    decide,
    quiet_for,
)

CTX = Context(attempts=0, max_attempts=5, settle_seconds=2.0)
LAST = Context(attempts=4, max_attempts=5, settle_seconds=2.0)


def api(error: errors.ApiError, ctx: Context = CTX) -> Outcome:
    return decide(ApiFailed(error), ctx)


Shape = tuple[Transition, bool, bool, bool, "str | None", "str | None"]


def shape(out: Outcome) -> Shape:
    return (out.transition, out.counts_attempt, out.charged, out.resend, out.pause, out.reason)


R, Q, T, D, L = (
    Transition.RETRY,
    Transition.QUARANTINE,
    Transition.RELEASE,
    Transition.DEFER,
    Transition.FORGET,
)


# -- one test per row of the error tree ----------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # PermanentFileError: quarantine at once, no attempt, nothing charged
        (errors.FileTooLarge("413", 413), (Q, False, False, False, None, "too_large")),
        (errors.UnsupportedMedia("415", 415), (Q, False, False, False, None, "unsupported_media")),
        (errors.PermanentFileError("no", 422), (Q, False, False, False, None, "rejected_by_api")),
        # AccountError: back to pending, no attempt, the pause named by the error
        (errors.InvalidApiKey("401", 401), (T, False, False, False, "invalid_api_key", None)),
        (
            errors.InsufficientCredits("402", 402),
            (T, False, False, False, "insufficient_credits", None),
        ),
        (errors.CreditsExpired("403", 403), (T, False, False, False, "credits_expired", None)),
        (
            errors.UnexpectedRedirect("307", 307, location="https://elsewhere.example/x"),
            (T, False, False, False, "unexpected_redirect", None),
        ),
        # RateLimited: back to pending, no attempt, no pause
        (errors.RateLimited("429", 30.0), (T, False, False, False, None, None)),
        # TransientError: an attempt; charged and a resend only when the outcome is unknown
        (errors.ServerError("500", 500), (R, True, False, False, None, None)),
        (errors.ServerError("502", 502, outcome_unknown=True), (R, True, True, True, None, None)),
        (errors.RequestTimeout("connect"), (R, True, False, False, None, None)),
        (errors.RequestTimeout("read", outcome_unknown=True), (R, True, True, True, None, None)),
        (errors.ConnectionFailed("refused"), (R, True, False, False, None, None)),
        (
            errors.ConnectionFailed("reset after sending", outcome_unknown=True),
            (R, True, True, True, None, None),
        ),
        (errors.MalformedResponse("bad error body", 500), (R, True, False, False, None, None)),
        # UnusableAnswer (a 200): charged, an attempt, retried once, no resend (outcome known)
        (errors.UnusableAnswer("not an image", 200), (R, True, True, False, None, None)),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else "",
)
def test_each_api_error_has_its_credit_rule(error: errors.ApiError, expected: Shape) -> None:
    assert shape(api(error)) == expected


def test_a_transient_failure_at_the_last_attempt_quarantines_as_retries_exhausted() -> None:
    out = api(errors.RequestTimeout("read", outcome_unknown=True), LAST)
    assert shape(out) == (Q, True, True, False, None, "retries_exhausted")
    assert out.finished == "quarantined" and out.fields["attempts"] == 5


def test_a_rate_limit_carries_its_retry_after_and_counts_as_rate_limited() -> None:
    out = api(errors.RateLimited("429", 12.5))
    assert out.rate_limited and out.wait == 12.5
    assert api(errors.RateLimited("429")).wait is None


def test_a_redirect_names_its_target_for_the_log() -> None:
    out = api(errors.UnexpectedRedirect("307", 307, location="https://evil.example/steal"))
    assert out.fields["location"] == "https://evil.example/steal"
    assert out.event == "api.redirect"


# -- unusable answers (SPEC §5) -----------------------------------------------------------------


def test_a_second_unusable_answer_for_a_file_quarantines_it_as_rejected_by_api() -> None:
    first = api(errors.UnusableAnswer("truncated", 200))
    assert first.transition is R and first.message.startswith(UNUSABLE_PREFIX)
    second = api(errors.UnusableAnswer("truncated", 200), Context(1, 5, 2.0, earlier_unusable=1))
    assert shape(second) == (Q, True, True, False, None, "rejected_by_api")


def test_the_third_unusable_answer_in_a_row_for_the_account_pauses_api_malformed() -> None:
    out = api(errors.UnusableAnswer("x", 200), Context(0, 5, 2.0, unusable_streak=1))
    assert out.pause is None and out.unusable
    out = api(errors.UnusableAnswer("x", 200), Context(0, 5, 2.0, unusable_streak=2))
    assert out.pause == "api_malformed" and out.transition is R and out.charged
    out = api(errors.UnusableAnswer("x", 200), Context(1, 5, 2.0, 1, unusable_streak=7))
    assert (out.pause, out.reason) == ("api_malformed", "rejected_by_api")


def test_only_an_answer_from_the_api_is_charged_and_ends_the_unusable_streak() -> None:
    for source, finished, charged in (
        ("api", "success", True),
        ("cache", "cached", False),
        ("outputs", "cached", False),
    ):
        out = decide(Finished(source), CTX)
        assert (out.transition, out.finished, out.charged, out.usable) == (
            Transition.DONE,
            finished,
            charged,
            charged,
        )
        assert not out.counts_attempt


# -- local verdicts wait for a quiet file (SPEC §4) ------------------------------------------


@pytest.mark.parametrize("reason", ["unsupported_media", "corrupt_image", "too_large"])
def test_a_local_verdict_on_a_young_file_waits_without_an_attempt(reason: str) -> None:
    young = decide(LocalVerdict(reason, "why", age=0.5), CTX)
    assert shape(young) == (D, False, False, False, None, None)
    assert young.wait == pytest.approx(1.5)
    quiet = decide(LocalVerdict(reason, "why", age=2.0), CTX)
    assert shape(quiet) == (Q, False, False, False, None, reason)


# -- local faults and refused writes (SPEC §4) ------------------------------------------------


@pytest.mark.parametrize(
    "code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO]
)
@pytest.mark.parametrize("during", ["writing the outputs", "quarantine", "moving the input"])
def test_a_local_fault_pauses_output_unwritable_without_an_attempt(code: int, during: str) -> None:
    exc = OSError(code, "boom")
    out = decide(WriteFailed(exc, "/srv/out", during, charged=True), LAST)
    assert shape(out) == (T, False, True, False, "output_unwritable", None)
    assert f"[Errno {code}]" in out.message and "/srv/out" in out.message
    assert out.fields["error"] == errors.describe_os_error(exc)


@pytest.mark.parametrize("code", [errno.ELOOP, errno.ENOTDIR])
def test_a_refused_write_is_retried_then_quarantined_as_output_refused(code: int) -> None:
    exc = OSError(code, "refused")
    out = decide(WriteFailed(exc, "/srv/out", "writing the outputs", charged=True), CTX)
    assert shape(out) == (R, True, True, False, None, None)  # kept result: no resend
    assert f"[Errno {code}]" in out.message
    last = decide(WriteFailed(exc, "/srv/out", "writing the outputs"), LAST)
    assert shape(last) == (Q, True, False, False, None, "output_refused") and last.move
    # The quarantine itself refused at the last attempt: marked, the input stays.
    stuck = decide(WriteFailed(exc, "/srv/q", "quarantine"), LAST)
    assert (stuck.reason, stuck.move) == ("output_refused", False)


def test_another_write_error_is_retried_with_its_errno_in_the_message() -> None:
    out = decide(WriteFailed(OSError(errno.ENAMETOOLONG, "File name too long"), "/o", "x"), CTX)
    assert out.transition is R and out.counts_attempt
    assert "[Errno 36] File name too long" in out.message


def test_an_internal_error_names_the_errno_never_just_the_class() -> None:
    out = decide(Crashed(OSError(errno.ENOSPC, "No space left on device")), CTX)
    assert out.transition is R and out.counts_attempt
    assert out.message == "internal error: [Errno 28] No space left on device"
    assert decide(Crashed(KeyError("k"), charged=True), CTX).charged


# -- the rest ----------------------------------------------------------------------------------


def test_vanished_inputs_are_forgotten_and_interruptions_release_the_job() -> None:
    assert shape(decide(Vanished(), CTX)) == (L, False, False, False, None, None)
    assert shape(decide(Interrupted("stopping"), LAST)) == (T, False, False, False, None, None)


def test_quiet_time_counts_from_the_last_write_or_queueing_and_ignores_a_future_mtime() -> None:
    assert quiet_for(now=100.0, mtime=95.0, queued_at=90.0) == 5.0
    assert quiet_for(now=100.0, mtime=90.0, queued_at=97.0) == 3.0
    assert quiet_for(now=100.0, mtime=4e9, queued_at=99.0) == 1.0  # touch -d 2096
    assert quiet_for(now=100.0, mtime=50.0, queued_at=101.0) == 0.0


def test_a_file_rewritten_since_it_was_read_is_queued_again_as_its_new_version() -> None:
    out = decide(Changed(10, 20, 30), LAST)
    assert out.transition is Transition.REQUEUE and out.requeue_as == (10, 20, 30)
    assert not out.counts_attempt and not out.charged and out.pause is None
    assert out.event == "file.changed"


# -- outages (SPEC §5): not the file's fault ---------------------------------------------------


def test_no_connection_at_all_pauses_api_unreachable_with_no_attempt_even_at_the_last() -> None:
    for ctx in (CTX, LAST):
        out = api(errors.Unreachable("available-credit: ConnectError: refused"), ctx)
        assert shape(out) == (T, False, False, False, "api_unreachable", None)
        assert out.event == "api.unreachable"


def test_the_third_failure_in_a_row_pauses_and_a_failure_after_a_failure_counts_nothing() -> None:
    def after(n: int, error: errors.ApiError, ctx: Context = LAST) -> Outcome:
        return api(error, Context(ctx.attempts, ctx.max_attempts, 2.0, failures_before=n))

    # The first after an answer: counted as ever (a file's own 500s still quarantine it).
    assert shape(after(0, errors.ServerError("500", 500))) == (
        Q, True, False, False, None, "retries_exhausted",
    )  # fmt: skip
    second = after(1, errors.ServerError("500", 500))
    assert shape(second) == (T, False, False, False, None, None)
    third = after(2, errors.RequestTimeout("read", outcome_unknown=True))
    # Charged and a resend when its outcome is unknown, like any such failure.
    assert shape(third) == (T, False, True, True, "api_unreachable", None)
    assert third.fields["failures_in_a_row"] == 3
    # An unusable 200 is an answer: api_malformed's rule, never this one.
    unusable = after(5, errors.UnusableAnswer("x", 200), CTX)
    assert unusable.pause is None and unusable.transition is R
