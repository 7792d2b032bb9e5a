"""The shared retry/poll helper and the circuit breaker, without a network."""

from __future__ import annotations

import pytest

from providers._retry import (AttemptFailed, CreateOutcomeUnknown, Deadline, Failure, FailureKind, GenerationState,
                              GenerationStatus, RetryPolicy, call_with_retry, classify_status, generation_state, poll_job)
from providers.base import ProviderError
from providers.http import CircuitBreaker
from tests.providers.conftest import FastSleep

POLICY = RetryPolicy(max_attempts=3, base_s=0.1, cap_s=1.0)


@pytest.mark.parametrize("code,message,kind", [
    ("too_many_concurrent_requests", "Too many concurrent requests", FailureKind.concurrency),  # ElevenLabs legacy
    ("concurrent_limit_exceeded", "limit", FailureKind.concurrency),  # ElevenLabs current
    ("system_busy", "heavy traffic", FailureKind.busy),
    ("rate_limit_exceeded", "Rate limit exceeded", FailureKind.rate),
    ("concurrency_limit_exceeded", "Active job limit reached", FailureKind.concurrency),  # Sync
    (None, "Too Many Requests", FailureKind.rate),  # no body code: treated as a rate limit
])
def test_429_variants_are_told_apart(code, message, kind):
    assert classify_status(429, code, message).kind is kind


@pytest.mark.parametrize("status,kind", [(503, FailureKind.busy), (500, FailureKind.transient),
                                         (502, FailureKind.transient), (408, FailureKind.transient),
                                         (400, FailureKind.permanent), (401, FailureKind.permanent),
                                         (404, FailureKind.permanent), (422, FailureKind.permanent)])
def test_statuses_map_to_kinds(status, kind):
    assert classify_status(status, None, "x").kind is kind


def scripted(*outcomes):
    """An attempt function answering each call with the next outcome (a Failure or a value)."""
    calls = []

    def attempt():
        outcome = outcomes[len(calls)]
        calls.append(outcome)
        if isinstance(outcome, Failure):
            raise AttemptFailed(outcome)
        return outcome

    return attempt, calls


def test_retry_after_is_honoured_even_above_the_backoff_cap():
    # Given a 429 with Retry-After: 3 (above the 1 s cap), then success
    attempt, calls = scripted(classify_status(429, "rate_limit_exceeded", "slow down", "3"), "ok")
    sleep = FastSleep()
    # When called
    result = call_with_retry(attempt, provider="p", what="w", policy=POLICY, deadline=Deadline(10), sleep=sleep)
    # Then it waited exactly what the provider asked, once
    assert result == "ok" and sleep.waits == [3.0] and len(calls) == 2


def test_backoff_grows_without_retry_after():
    attempt, _ = scripted(classify_status(503, None, "busy"), classify_status(503, None, "busy"), "ok")
    sleep = FastSleep()
    call_with_retry(attempt, provider="p", what="w", policy=POLICY, deadline=Deadline(10), sleep=sleep)
    assert len(sleep.waits) == 2
    assert 0.05 <= sleep.waits[0] <= 0.1 and 0.1 <= sleep.waits[1] <= 0.2  # jittered halves of 0.1, 0.2


def test_concurrency_waits_do_not_use_up_tries():
    # Given five "over concurrency" refusals, more than max_attempts (3), then success
    busy = classify_status(429, "too_many_concurrent_requests", "wait")
    attempt, calls = scripted(busy, busy, busy, busy, busy, "ok")
    # Then the call still succeeds: waiting for a slot is not a failure
    assert call_with_retry(attempt, provider="p", what="w", policy=POLICY, deadline=Deadline(10),
                           sleep=FastSleep()) == "ok"
    assert len(calls) == 6


def test_rate_limits_give_up_after_max_tries():
    rate = classify_status(429, "rate_limit_exceeded", "slow down")
    attempt, calls = scripted(rate, rate, rate, "never")
    with pytest.raises(ProviderError) as e:
        call_with_retry(attempt, provider="p", what="w", policy=POLICY, deadline=Deadline(10), sleep=FastSleep())
    assert e.value.code == "rate_limit_exceeded" and e.value.retryable and len(calls) == 3


def test_a_retry_after_beyond_the_deadline_ends_the_call_at_once():
    # Given a 429 asking for 120 s and a 5 s deadline
    attempt, calls = scripted(classify_status(429, "rate_limit_exceeded", "later", "120"), "never")
    sleep = FastSleep()
    with pytest.raises(ProviderError) as e:
        call_with_retry(attempt, provider="p", what="w", policy=POLICY, deadline=Deadline(5), sleep=sleep)
    # Then it did not sleep at all, and says why
    assert sleep.waits == [] and len(calls) == 1
    assert "deadline" in e.value.message


def test_a_create_is_not_resent_after_a_5xx_but_is_after_a_429():
    # Given a create answered 500 (it may have been processed)
    attempt, calls = scripted(classify_status(500, None, "oops"), "never")
    with pytest.raises(CreateOutcomeUnknown):
        call_with_retry(attempt, provider="p", what="create", policy=POLICY, deadline=Deadline(5),
                        create=True, sleep=FastSleep())
    assert len(calls) == 1
    # And a create refused with 429 (certainly not processed) is resent
    attempt, calls = scripted(classify_status(429, "rate_limit_exceeded", "x"), "created")
    assert call_with_retry(attempt, provider="p", what="create", policy=POLICY, deadline=Deadline(5),
                           create=True, sleep=FastSleep()) == "created"
    # And a connect error (never sent) is resent too
    not_sent = Failure(FailureKind.transient, "network_error", "refused", sent=False)
    attempt, calls = scripted(not_sent, "created")
    assert call_with_retry(attempt, provider="p", what="create", policy=POLICY, deadline=Deadline(5),
                           create=True, sleep=FastSleep()) == "created"


def test_permanent_errors_are_not_retried_and_input_errors_do_not_blame_the_provider():
    attempt, calls = scripted(classify_status(422, "validation_error", "text: Field required"), "never")
    with pytest.raises(ProviderError) as e:
        call_with_retry(attempt, provider="p", what="w", policy=POLICY, deadline=Deadline(5), sleep=FastSleep())
    assert len(calls) == 1 and not e.value.retryable and not e.value.provider_fault
    attempt, _ = scripted(classify_status(401, "invalid_api_key", "Invalid API key"))
    with pytest.raises(ProviderError) as e:
        call_with_retry(attempt, provider="p", what="w", policy=POLICY, deadline=Deadline(5), sleep=FastSleep())
    assert e.value.provider_fault  # a bad key keeps failing: it should open the circuit


def test_unknown_statuses_are_not_terminal():
    assert generation_state("waiting_for_gpu", succeeded={"completed"}, failed={"failed"}) is GenerationState.running
    assert generation_state(None, succeeded={"completed"}, failed={"failed"}) is GenerationState.running
    assert generation_state("COMPLETED", succeeded={"completed"}, failed={"failed"}) is GenerationState.succeeded


def test_polling_survives_fetch_errors_and_stops_at_the_deadline():
    # Given a job that answers: error, unknown status, running... forever
    answers = iter([ProviderError("http_503", "busy"), GenerationStatus(GenerationState.running, "warming_up")])

    def fetch():
        answer = next(answers, GenerationStatus(GenerationState.running, "processing"))
        if isinstance(answer, Exception):
            raise answer
        return answer

    sleep = FastSleep(cap_s=0.05)
    with pytest.raises(ProviderError) as e:
        poll_job(fetch, provider="p", generation_id="g1", deadline=Deadline(0.4), base_s=0.05, cap_s=0.1, sleep=sleep)
    # Then it kept polling through the error and gave up only at the deadline, naming the status
    assert e.value.code == "generation_timeout" and "still processing" in e.value.message
    assert len(sleep.waits) >= 3 and max(sleep.waits) <= 0.1


def test_circuit_opens_after_consecutive_failures_and_half_opens_after_the_cooldown():
    now = [1000.0]
    breaker = CircuitBreaker("p", failures=2, cooldown_s=30, clock=lambda: now[0])
    breaker.record_failure()
    assert breaker.allow() and breaker.reason() is None
    breaker.record_failure()
    # Then it is open, and the reason names when it reopens
    assert not breaker.allow() and breaker.reason().startswith("circuit open until ")
    now[0] += 31
    assert breaker.allow()  # half-open: one trial
    assert not breaker.allow()  # ... and only one
    breaker.record_failure()
    assert not breaker.allow()  # the trial failed: open again
    now[0] += 31
    assert breaker.allow()
    breaker.record_success()
    assert breaker.allow() and breaker.allow()  # closed
