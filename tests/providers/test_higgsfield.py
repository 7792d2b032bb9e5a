"""Higgsfield Speak client against the loopback mock: auth, WAV uploads, duration buckets, and
no blind re-submit (Higgsfield has no idempotency keys)."""

from __future__ import annotations

import pytest

from providers._retry import CreateOutcomeUnknown
from providers.base import OUTCOME_UNKNOWN, ProviderError
from providers.higgsfield import HiggsfieldSpeak, duration_bucket
from tests.conftest import ffprobe_json, make_speech, stream
from tests.mocks import Fault
from tests.providers.conftest import fast_limits, key


def client(mock, sleep, store, **limits) -> HiggsfieldSpeak:
    key_id, secret = mock.auth.removeprefix("Key ").split(":", 1)
    return HiggsfieldSpeak(key(key_id), key(secret), base_url=mock.url, limits=fast_limits(**limits), store=store,
                           sleep=sleep)


def test_speak_end_to_end(hf_mock, sleep, store, persona, portrait, speech, tmp_path):
    result = client(hf_mock, sleep, store).generate(persona, portrait, speech, tmp_path / "o.mp4", video_id="j1")
    # Then it authenticated with "Key id:secret", uploaded a PNG and a 16-bit WAV without credentials ...
    submit = next(r for r in hf_mock.requests if r.path == "/higgsfield-ai/speak")
    assert submit.headers["authorization"] == "Key hf-id:hf-secret"
    puts = [r for r in hf_mock.requests if r.method == "PUT"]
    assert [p.headers["content-type"] for p in puts] == ["image/png", "audio/wav"]
    assert all("authorization" not in p.headers for p in puts)
    assert puts[1].body[:4] == b"RIFF" and puts[1].body[34:36] == b"\x10\x00"  # 16 bits per sample
    # ... asked for the smallest bucket holding 1.2 s of speech, and followed the status_url
    body = submit.json()
    assert body["duration"] == 5 and body["quality"] == "high" and body["prompt"]
    assert hf_mock.counts["status"] == 3
    assert stream(ffprobe_json(result.path), "video")["codec_name"] == "h264"


@pytest.mark.parametrize("seconds,bucket", [(1.2, 5), (5.0, 5), (5.5, 10), (14.9, 15)])
def test_duration_buckets(seconds, bucket):
    assert duration_bucket(seconds) == bucket


def test_speech_over_15s_is_refused_with_a_reason_before_any_request(hf_mock, sleep, store, persona, portrait,
                                                                     tmp_path):
    long = make_speech(tmp_path / "long.wav", seconds=16.0)
    with pytest.raises(ProviderError) as e:
        client(hf_mock, sleep, store).generate(persona, portrait, long, tmp_path / "o.mp4", video_id="j")
    assert e.value.code == "audio_too_long_for_provider" and "16.0 s" in e.value.message
    assert not e.value.provider_fault and hf_mock.counts == {}


def test_an_ambiguous_submit_is_never_repeated(hf_mock, sleep, store, persona, portrait, speech, tmp_path):
    # Given a submit answered 502 (it may have been queued: Higgsfield has no idempotency key)
    hf_mock.inject("create", Fault(502, {"detail": "Bad Gateway"}))
    with pytest.raises(CreateOutcomeUnknown):
        client(hf_mock, sleep, store).generate(persona, portrait, speech, tmp_path / "o.mp4", video_id="j5")
    assert store.get("j5", "higgsfield") == OUTCOME_UNKNOWN
    # When the job is retried
    with pytest.raises(ProviderError) as e:
        client(hf_mock, sleep, store).generate(persona, portrait, speech, tmp_path / "o.mp4", video_id="j5")
    # Then it refuses to submit again (the chain moves on to HeyGen), saying why
    assert e.value.code == "create_outcome_unknown" and not e.value.retryable
    assert hf_mock.counts["create"] == 1


def test_nsfw_is_a_failure(hf_mock, sleep, store, persona, portrait, speech, tmp_path):
    hf_mock.book.outcome = "nsfw"
    with pytest.raises(ProviderError) as e:
        client(hf_mock, sleep, store).generate(persona, portrait, speech, tmp_path / "o.mp4", video_id="j")
    assert e.value.code == "nsfw"


def test_validation_errors_come_back_in_fastapi_shape(hf_mock, sleep, store, persona, portrait, speech, tmp_path):
    hf_mock.inject("create", Fault(422, {"detail": [{"loc": ["body", "duration"], "msg": "Input should be 5, 10 "
                                                     "or 15", "type": "literal_error"}]}))
    with pytest.raises(ProviderError) as e:
        client(hf_mock, sleep, store).generate(persona, portrait, speech, tmp_path / "o.mp4", video_id="j")
    assert e.value.code == "validation_error" and "body.duration: Input should be 5, 10 or 15" in e.value.message
    assert not e.value.provider_fault
