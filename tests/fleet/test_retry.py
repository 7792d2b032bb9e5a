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


def test_slots_get_one_gpu_each_when_there_are_several():
    from node.fleet_cli import slot_devices

    assert slot_devices("auto", 4, 4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert slot_devices("auto", 2, 8) == ["cuda:0", "cuda:1"]
    assert slot_devices("auto", 3, 2) == ["cuda:0", "cuda:1"]  # slot 2 shares GPU 0's renderer
    assert slot_devices("auto", 1, 0) == ["auto"] and slot_devices("auto", 2, 1) == ["auto"]
    assert slot_devices("cpu", 4, 4) == ["cpu"]  # an explicit device is shared by every slot


def test_a_multi_gpu_worker_shares_one_provider_set(settings):
    # Given a worker with one render slot per GPU on a 2-GPU node
    from node.fleet_cli import slot_renderers

    renderers = slot_renderers(settings, ["cuda:0", "cuda:1"])
    # Then each slot renders on its own GPU ...
    assert [r.settings.torch_device for r in renderers] == ["cuda:0", "cuda:1"]
    # ... but every provider client (its concurrency slots, its circuit breaker) is the process's one
    first, second = renderers
    for name, client in first.remote.items():
        assert second.remote[name] is client, name
    assert [t.name for t in first.tts] == [t.name for t in second.tts]
    assert all(a is b for a, b in zip(first.tts, second.tts))
