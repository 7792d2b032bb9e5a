"""ElevenLabs TTS (official SDK) against the loopback mock."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from node.media import probe
from providers.base import ProviderError
from providers.elevenlabs import ElevenLabsTTS
from tests.mocks import Fault
from tests.mocks import elevenlabs as el
from tests.providers.conftest import fast_limits, key


def client(mock, sleep, **limits) -> ElevenLabsTTS:
    return ElevenLabsTTS(key(mock.api_key), base_url=mock.url, limits=fast_limits(**limits), sleep=sleep)


def test_persona_voice_model_and_settings_are_sent(el_mock, sleep, persona, tmp_path):
    # Given the Papá Noel persona
    spoken = client(el_mock, sleep).synthesize("¡Jo, jo, jo!", persona, tmp_path)
    # Then the request carried its voice (path), format (query), model and voice settings (body)
    request = next(r for r in el_mock.requests if r.method == "POST")
    assert request.path == f"/v1/text-to-speech/{persona.elevenlabs.voice_id}"
    assert request.query["output_format"] == "mp3_44100_128"
    assert request.headers["xi-api-key"] == el_mock.api_key
    body = el_mock.bodies[0]
    assert body["text"] == "¡Jo, jo, jo!" and body["model_id"] == "eleven_multilingual_v2"
    assert body["voice_settings"] == {"stability": 0.5, "similarity_boost": 0.75, "style": 0.0,
                                      "use_speaker_boost": True}
    # And the output is a real MP3 the pipeline can read
    assert spoken.provider == "elevenlabs" and spoken.path.suffix == ".mp3"
    assert probe(spoken.path).audio_duration_s == pytest.approx(1.2, abs=0.1)
    assert spoken.note is None  # nothing went wrong


def test_headerless_pcm_is_wrapped_in_wav(el_mock, sleep, persona, tmp_path):
    voice = dataclasses.replace(persona.elevenlabs, output_format="pcm_16000")
    spoken = client(el_mock, sleep).synthesize("hola", dataclasses.replace(persona, elevenlabs=voice), tmp_path)
    assert spoken.path.suffix == ".wav" and spoken.path.read_bytes()[:4] == b"RIFF"
    assert probe(spoken.path).audio_duration_s == pytest.approx(1.2, abs=0.05)


@pytest.mark.parametrize("fault,kind", [
    (el.too_many_concurrent(), "concurrency"), (el.too_many_concurrent("1"), "concurrency"),
    (el.concurrent_limit_exceeded(), "concurrency"), (el.concurrent_limit_exceeded("1"), "concurrency"),
    (el.system_busy(), "busy"), (el.system_busy("1"), "busy"),
    (el.rate_limited(), "rate"), (el.rate_limited("1"), "rate"),
    (Fault(500, {"detail": {"status": "internal_error", "message": "oops"}}), "transient"),
    (Fault(503, b"<html>503</html>"), "busy"),
    (Fault(drop=True), "transient"),
])
def test_each_429_variant_and_5xx_is_retried(el_mock, sleep, persona, tmp_path, fault, kind):
    # Given one fault before a good answer
    el_mock.inject("tts", fault)
    # When synthesising
    spoken = client(el_mock, sleep).synthesize("hola", persona, tmp_path)
    # Then one retry happened, of the right kind, honouring Retry-After when sent
    assert el_mock.counts["tts"] == 2
    assert f"({kind})" in spoken.note
    if fault.headers.get("Retry-After"):
        assert sleep.waits == [1.0]


def test_bad_key_fails_at_once_without_retries(el_mock, sleep, persona, tmp_path):
    tts = ElevenLabsTTS(key("wrong"), base_url=el_mock.url, limits=fast_limits(), sleep=sleep)
    with pytest.raises(ProviderError) as e:
        tts.synthesize("hola", persona, tmp_path)
    assert e.value.code == "invalid_api_key" and not e.value.retryable
    assert el_mock.counts["tts"] == 1 and sleep.waits == []


def test_quota_exceeded_is_permanent(el_mock, sleep, persona, tmp_path):
    el_mock.inject("tts", el.error(401, "quota_exceeded", "This request exceeds your quota", legacy=True))
    with pytest.raises(ProviderError) as e:
        client(el_mock, sleep).synthesize("hola", persona, tmp_path)
    assert e.value.code == "quota_exceeded" and el_mock.counts["tts"] == 1


def test_character_limit_is_a_clear_error(el_mock, sleep, persona, tmp_path):
    voice = dataclasses.replace(persona.elevenlabs, model_id="eleven_v3")
    with pytest.raises(ProviderError) as e:
        client(el_mock, sleep).synthesize("x" * 3001, dataclasses.replace(persona, elevenlabs=voice), tmp_path)
    assert e.value.code == "max_character_limit_exceeded" and not e.value.provider_fault


def test_bytes_that_are_not_audio_never_reach_the_pipeline(el_mock, sleep, persona, tmp_path):
    el_mock.inject("tts", Fault(200, b"<html>maintenance</html>"))
    with pytest.raises(ProviderError) as e:
        client(el_mock, sleep).synthesize("hola", persona, tmp_path)
    assert e.value.code == "tts_bad_output"


def test_slow_response_times_out_and_is_retried_within_the_deadline(el_mock, sleep, persona, tmp_path):
    import httpx

    el_mock.inject("tts", Fault(delay_s=1.0, passthrough=True))
    spoken = client(el_mock, sleep, timeout=httpx.Timeout(0.4, connect=0.4)).synthesize("hola", persona, tmp_path)
    assert "timeout" in spoken.note and el_mock.counts["tts"] == 2


def test_local_concurrency_limit_keeps_the_provider_under_its_plan(el_mock, persona, tmp_path):
    # Given a plan of 1 concurrent request on the mock and a client limited to 1
    el_mock.concurrency_limit, el_mock.hold_s = 1, 0.15
    tts = client(el_mock, sleep=lambda s: None, concurrency=1)
    errors = []

    def speak(i):
        try:
            tts.synthesize(f"línea {i}", persona, tmp_path)
        except ProviderError as e:  # pragma: no cover - the assertion below reports it
            errors.append(e)

    # When three threads speak at once
    threads = [threading.Thread(target=speak, args=(i,)) for i in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    # Then the mock never refused one for concurrency: our semaphore queued them
    assert errors == [] and el_mock.counts["tts"] == 3


def test_repr_masks_the_key(el_mock):
    tts = ElevenLabsTTS(key("sk-very-secret"), base_url=el_mock.url)
    assert "sk-very-secret" not in repr(tts) and "********" in repr(tts)
