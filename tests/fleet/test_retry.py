"""The retry policy as a pure function: permanent -> dead, transient -> backoff, exhausted -> failed."""

from __future__ import annotations

from node.errors import AllStrategiesFailed, Cancelled, InvalidInput, RenderFailed
from node.retry import JobError, decide_retry

SCHEDULE = dict(base_s=2.0, cap_s=10.0, rand=lambda: 1.0)  # rand 1.0: the top of the jitter range


def test_invalid_input_goes_to_the_dlq_at_once():
    # Given a validation error on the first attempt, with attempts to spare
    error = JobError.of(InvalidInput("avatar_not_found", "no avatar 'x'"))
    # When the policy decides
    decision = decide_retry(error, attempts=1, max_attempts=5, **SCHEDULE)
    # Then the job is dead without a retry
    assert (decision.outcome, decision.delay_s) == ("dead", 0.0)
    assert error.as_dict() == {"code": "avatar_not_found", "message": "no avatar 'x'", "retryable": False}


def test_transient_errors_back_off_exponentially_up_to_the_cap():
    # Given a transient render failure
    error = JobError.of(RenderFailed("ffmpeg died"))
    # When attempts 1..4 of 5 fail
    delays = [decide_retry(error, attempts=n, max_attempts=5, **SCHEDULE).delay_s for n in range(1, 5)]
    # Then each waits twice as long as the one before, capped
    assert delays == [2.0, 4.0, 8.0, 10.0]
    assert decide_retry(error, 1, 5, **SCHEDULE).outcome == "retry"


def test_jitter_spreads_retries_within_the_upper_half():
    error = JobError.of(AllStrategiesFailed("nothing worked"))
    low = decide_retry(error, 3, 5, base_s=2.0, cap_s=100.0, rand=lambda: 0.0).delay_s
    high = decide_retry(error, 3, 5, base_s=2.0, cap_s=100.0, rand=lambda: 1.0).delay_s
    assert (low, high) == (4.0, 8.0)


def test_the_last_attempt_fails_the_job():
    # Given a transient error on the last allowed attempt
    decision = decide_retry(JobError.of(RenderFailed("again")), attempts=3, max_attempts=3, **SCHEDULE)
    # Then the job fails into the DLQ
    assert decision.outcome == "failed"


def test_an_unexpected_exception_is_transient_and_named():
    error = JobError.of(ZeroDivisionError("division by zero"))
    assert error == JobError("internal_error", "ZeroDivisionError: division by zero", True)
    assert decide_retry(error, 1, 3, **SCHEDULE).outcome == "retry"


def test_cancelled_is_never_permanent():
    assert JobError.of(Cancelled("stopped")).retryable
