"""The fault matrix of the video providers: for every fault, the right retry or failure happens
within the deadline, the call's note/error says what happened, and no create is sent twice.

Each row runs one generation of one provider against its mock with the fault scripted.
"""

from __future__ import annotations

import time

import httpx
import pytest

from providers.base import ProviderError
from providers.heygen import HeyGenVideo
from providers.higgsfield import HiggsfieldSpeak
from providers.synclabs import SyncLabsLipSync
from tests.mocks import Fault, HeyGenMock, HiggsfieldMock, SyncMock
from tests.mocks import heygen as heygen_faults
from tests.mocks import higgsfield as hf_faults
from tests.mocks import synclabs as sync_faults
from tests.providers.conftest import fast_limits, key

DEADLINE_S = 2.0


def rate(provider: str, retry_after: str | None) -> Fault:
    return {"synclabs": sync_faults.rate_limited, "heygen": heygen_faults.rate_limited,
            "higgsfield": lambda ra: hf_faults.error(429, "Rate limit exceeded", ra)}[provider](retry_after)


def concurrency(provider: str) -> Fault:
    return {"synclabs": sync_faults.active_job_limit(),
            "heygen": heygen_faults.error(429, "rate_limit_exceeded", "Too many concurrent video jobs"),
            "higgsfield": hf_faults.error(429, "Too many concurrent requests")}[provider]


def credits(provider: str) -> Fault:
    return {"synclabs": sync_faults.error(402, "insufficient_credits", "Not enough credits"),
            "heygen": heygen_faults.error(402, "insufficient_credit", "Not enough credit"),
            "higgsfield": hf_faults.error(403, "Not enough credits")}[provider]


# name: (route, faults(provider) or a mock switch, expected: "ok" | error code | {provider: error code})
MATRIX = {
    "create 429 rate, Retry-After": ("create", lambda p: [rate(p, "1")], "ok"),
    "create 429 rate, no Retry-After": ("create", lambda p: [rate(p, None)], "ok"),
    "create 429 concurrency": ("create", lambda p: [concurrency(p), concurrency(p)], "ok"),
    "create 500": ("create", lambda p: [Fault(500, {"message": "Internal server error"})], "http_500"),
    "create slow (lost response)": ("create", lambda p: [Fault(delay_s=1.0, passthrough=True)], "timeout"),
    "create malformed JSON": ("create", lambda p: [Fault(200, raw=b'{"id": "gen_')], "malformed_response"),
    "create connection dropped": ("create", lambda p: [Fault(drop=True)], "network_error"),
    "create 402/403 no credits": ("create", lambda p: [credits(p)], {
        "synclabs": "insufficient_credits", "heygen": "insufficient_credit", "higgsfield": "insufficient_credits"}),
    "status 503": ("status", lambda p: [Fault(503, b"Service Unavailable")], "ok"),
    "status 500 twice": ("status", lambda p: [Fault(500, {}), Fault(500, {})], "ok"),
    "status malformed JSON": ("status", lambda p: [Fault(200, raw=b"<html>gateway</html>")], "ok"),
    "status slow": ("status", lambda p: [Fault(delay_s=1.0, passthrough=True)], "ok"),
    "status 429 Retry-After": ("status", lambda p: [rate(p, "1")], "ok"),
    "download 500": ("download", lambda p: [Fault(500, b"")], "ok"),
    "stuck in pending": ("switch", {"outcome": "stuck"}, "generation_timeout"),
    "failed with a reason": ("switch", {"outcome": "fail"}, {
        "synclabs": "face_not_detected", "heygen": "avatar_not_found", "higgsfield": "generation_failed"}),
    "failed without a reason": ("switch", {"outcome": "fail_silently"}, "generation_failed"),
    "unknown status string": ("switch", {"unknown_status": "warming_up_gpu"}, "ok"),
    "expired output URL": ("switch", {"expire_first_url": True}, "ok"),
    "webhook duplicated": ("switch", {"webhook": "duplicate"}, "ok"),
    "webhook missing": ("switch", {"webhook": "none"}, "ok"),
}
PROVIDERS = ["synclabs", "higgsfield", "heygen"]


def build(provider: str, mock, sleep, store):
    limits = fast_limits(deadline_s=DEADLINE_S, timeout=httpx.Timeout(0.5, connect=0.5))
    common = dict(limits=limits, store=store, sleep=sleep)
    if provider == "synclabs":
        return SyncLabsLipSync(key(mock.api_key), base_url=mock.url, **common)
    if provider == "heygen":
        return HeyGenVideo(key(mock.api_key), base_url=mock.url, upload_url=mock.url, **common)
    key_id, secret = mock.auth.removeprefix("Key ").split(":", 1)
    return HiggsfieldSpeak(key(key_id), key(secret), base_url=mock.url, **common)


def run(provider, client, persona, avatar, portrait, speech, out, video_id="job-1"):
    if provider == "synclabs":
        return client.lipsync(avatar, speech, out, video_id=video_id)
    return client.generate(persona, portrait, speech, out, video_id=video_id)


@pytest.fixture
def mock(request):
    cls = {"synclabs": SyncMock, "higgsfield": HiggsfieldMock, "heygen": HeyGenMock}[request.param]
    with cls() as m:
        yield m


@pytest.mark.parametrize("fault", list(MATRIX))
@pytest.mark.parametrize("mock", PROVIDERS, indirect=True)
def test_fault_matrix(mock, fault, sleep, store, persona, avatar, portrait, speech, tmp_path):
    provider = mock.name
    route, setup, expected = MATRIX[fault]
    # Given the fault scripted on the mock (or its state machine switched)
    if route == "switch":
        for name, value in setup.items():
            setattr(mock.book, name, value)
    else:
        mock.inject(route, *setup(provider))
    client = build(provider, mock, sleep, store)
    # When one generation runs
    started = time.monotonic()
    try:
        result, error = run(provider, client, persona, avatar, portrait, speech, tmp_path / "out.mp4"), None
    except ProviderError as e:
        result, error = None, e
    elapsed = time.monotonic() - started
    # Then it ended within the deadline (plus one request timeout of slack) ...
    assert elapsed < DEADLINE_S + 1.0, elapsed
    # ... no create was sent twice unless the provider refused the first one (429) ...
    refused_first = route == "create" and expected == "ok"
    assert mock.counts["create"] <= (1 + len(setup(provider)) if refused_first else 1)
    assert mock.book.created <= 1
    # ... and the outcome is the expected one, saying what happened
    if expected == "ok":
        assert error is None, f"{error.code}: {error.message}"
        assert (tmp_path / "out.mp4").stat().st_size > 0 and result.generation_id
        if route not in ("switch",):
            assert result.note, "the retry should be recorded in the note"
        if fault == "expired output URL":
            assert "re-queried" in result.note
        if "Retry-After" in fault and "no Retry-After" not in fault:
            assert 1.0 in sleep.waits
    else:
        assert error is not None, "the fault should have failed the call"
        code = expected[provider] if isinstance(expected, dict) else expected
        assert error.code == code, (error.code, error.message)
        if fault == "failed without a reason":
            assert "gave no reason" in error.message
        if fault == "failed with a reason":  # the provider's own reason reaches the job's attempts
            assert {"synclabs": "Face not detected", "heygen": "detect a face", "higgsfield": "no face"}[provider] in error.message
        if fault == "create 402/403 no credits":  # no retry can help, and the account is at fault
            assert not error.retryable and mock.counts["create"] == 1
        if route == "create":
            assert mock.counts["create"] == 1  # an ambiguous or refused create is never re-sent
