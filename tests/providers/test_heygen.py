"""HeyGen v3 client against the loopback mock: asset uploads, the create body, Retry-After."""

from __future__ import annotations

import pytest

from providers.base import ProviderError, idempotency_key
from providers.heygen import HeyGenVideo
from tests.conftest import ffprobe_json, stream
from tests.mocks import heygen as heygen_faults
from tests.providers.conftest import fast_limits, key


def client(mock, sleep, store, **limits) -> HeyGenVideo:
    return HeyGenVideo(key(mock.api_key), base_url=mock.url, upload_url=mock.url, limits=fast_limits(**limits),
                       store=store, sleep=sleep)


def test_video_end_to_end(heygen_mock, sleep, store, persona, portrait, speech, tmp_path):
    result = client(heygen_mock, sleep, store).generate(persona, portrait, speech, tmp_path / "o.mp4", video_id="j1")
    # Then both assets were uploaded with a Content-Type matching their bytes ...
    assets = [r.form()[1]["file"][1] for r in heygen_mock.requests if r.path == "/v3/assets"]
    assert assets == ["image/png", "audio/wav"]
    # ... the create named them, once, under the job's idempotency key
    create = next(r for r in heygen_mock.requests if r.path == "/v3/videos")
    body = create.json()
    assert body["type"] == "image" and body["image"] == {"type": "asset_id", "asset_id": "asset_0001"}
    assert body["audio_asset_id"] == "asset_0002" and body["callback_id"] == "j1"
    assert create.headers["idempotency-key"] == idempotency_key("j1", "heygen")
    assert create.headers["x-api-key"] == heygen_mock.api_key
    assert stream(ffprobe_json(result.path), "video")["codec_name"] == "h264"


def test_concurrency_429_honours_retry_after(heygen_mock, sleep, store, persona, portrait, speech, tmp_path):
    heygen_mock.inject("create", heygen_faults.rate_limited("1"), heygen_faults.rate_limited("1"))
    result = client(heygen_mock, sleep, store).generate(persona, portrait, speech, tmp_path / "o.mp4", video_id="j")
    assert sleep.waits[:2] == [1.0, 1.0] and heygen_mock.book.created == 1
    assert "429 rate_limit_exceeded (concurrency)" in result.note


def test_failure_without_a_reason_is_accepted(heygen_mock, sleep, store, persona, portrait, speech, tmp_path):
    heygen_mock.book.outcome = "fail_silently"
    with pytest.raises(ProviderError) as e:
        client(heygen_mock, sleep, store).generate(persona, portrait, speech, tmp_path / "o.mp4", video_id="j")
    assert e.value.code == "generation_failed" and "failed: the provider gave no reason" in e.value.message


def test_failure_with_a_reason_keeps_the_providers_code(heygen_mock, sleep, store, persona, portrait, speech,
                                                        tmp_path):
    heygen_mock.book.outcome = "fail"
    with pytest.raises(ProviderError) as e:
        client(heygen_mock, sleep, store).generate(persona, portrait, speech, tmp_path / "o.mp4", video_id="j")
    assert e.value.code == "avatar_not_found" and "Could not detect a face" in e.value.message


def test_mp3_and_other_audio_is_sent_as_heygen_accepts_it(heygen_mock, sleep, store, persona, portrait, tmp_path):
    import subprocess

    from tests.conftest import make_speech, require_tool

    flac = tmp_path / "speech.flac"
    subprocess.run([require_tool("ffmpeg"), "-v", "error", "-i", str(make_speech(tmp_path / "s.wav")), str(flac)],
                   check=True)
    client(heygen_mock, sleep, store).generate(persona, portrait, flac, tmp_path / "o.mp4", video_id="j")
    assets = [r.form()[1]["file"][1] for r in heygen_mock.requests if r.path == "/v3/assets"]
    assert assets == ["image/png", "audio/wav"]  # FLAC converted: HeyGen takes WAV or MP3
