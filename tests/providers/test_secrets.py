"""Canary keys: run the providers with recognisable secrets, in success and in failure, and grep
everything the node emits (logs at DEBUG, stdout/stderr, results, exceptions, reprs, metrics,
stored generation records and the cache index). The canary must appear nowhere."""

from __future__ import annotations

import json
import logging

from prometheus_client import REGISTRY, generate_latest

from node.job import parse_job
from node.pipeline import Renderer
from providers.base import ProviderError
from node.provider_set import build_providers
from tests.conftest import make_speech, make_video
from tests.mocks import ElevenLabsMock, Fault, HeyGenMock, HiggsfieldMock, SyncMock
from tests.providers.conftest import provider_settings

CANARY = "sk-CANARY-5f0c9d7e1a"
CANARY_ID, CANARY_SECRET = "CANARY-ID-77aa01", "CANARY-SECRET-93bb02"


def test_canary_keys_appear_nowhere(tmp_path, settings, caplog, capfd, ffprobe):
    caplog.set_level(logging.DEBUG)  # every logger, httpx and the SDK included
    el, sync = ElevenLabsMock(api_key=CANARY).start(), SyncMock(api_key=CANARY).start()
    hf, heygen = HiggsfieldMock(CANARY_ID, CANARY_SECRET).start(), HeyGenMock(api_key=CANARY).start()
    try:
        s = provider_settings(settings, el=el, sync=sync, hf=hf, heygen=heygen, higgsfield_deadline_s=0.5)
        avatar = make_video(tmp_path / "a.mp4", seconds=0.4)
        emitted: list[str] = []
        # Given a healthy run (ElevenLabs + Sync) ...
        renderer = Renderer(s)
        ok = renderer.render(parse_job({"video_id": "ok", "text": "hola", "avatar": str(avatar)}), tmp_path / "1.mp4")
        assert ok.providers == {"tts": "elevenlabs", "lipsync": "synclabs"}
        emitted.append(json.dumps(ok.as_dict()))
        # ... and a run where every provider fails in a different way
        el.inject("tts", Fault(401, {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}))
        sync.inject("create", Fault(500, {"message": "boom"}))
        hf.book.outcome = "stuck"
        heygen.inject("asset", Fault(429, {"error": {"code": "rate_limit_exceeded", "message": "slow"}},
                                     {"Retry-After": "600"}))
        bad = renderer.render(parse_job({"video_id": "bad", "audio": str(make_speech(tmp_path / "s.wav")),
                                         "avatar": str(avatar)}), tmp_path / "2.mp4")
        bad_tts = renderer.render(parse_job({"video_id": "bad2", "text": "otra", "avatar": str(avatar),
                                             "strategy": "base_video"}), tmp_path / "3.mp4")
        assert bad.strategy == "base_video" and bad_tts.providers["tts"] == "espeak"
        assert [a.outcome for a in bad.attempts if a.provider in ("synclabs", "higgsfield", "heygen")] == ["failed"] * 3
        emitted += [json.dumps(bad.as_dict()), json.dumps(bad_tts.as_dict())]
        emitted += [a.reason or "" for r in (bad, bad_tts) for a in r.attempts]
        # ... exceptions raised by the clients themselves
        providers = build_providers(s)
        try:
            providers.remote["synclabs"].lipsync(avatar, tmp_path / "s.wav", tmp_path / "x.mp4", video_id="exc")
        except ProviderError as e:
            emitted += [str(e), repr(e), e.message]
        # ... every object's repr, the settings, the metrics, the stored records
        emitted += [repr(providers), repr(providers.tts), repr(providers.remote), repr(renderer.tts), repr(s)]
        emitted.append(generate_latest(REGISTRY).decode())
        emitted += [p.read_text() for p in (s.temp_dir / "generations").glob("*.json")]
        emitted += [p.read_text(errors="replace") for p in s.audio_cache_dir.glob("*.json")]
        captured = capfd.readouterr()
        emitted += [captured.out, captured.err, caplog.text]
        emitted += [str(r.args) for r in caplog.records]
    finally:
        for mock in (el, sync, hf, heygen):
            mock.stop()
    # Then no canary anywhere (and the test did see output, so the grep is not vacuous)
    everything = "\n".join(emitted)
    assert "synclabs" in caplog.text and len(everything) > 2000
    for canary in (CANARY, CANARY_ID, CANARY_SECRET):
        assert canary not in everything
    # While the mocks did receive the keys (so they really were used)
    assert any(r.headers.get("x-api-key") == CANARY for r in sync.requests)
    assert any(r.headers.get("authorization") == f"Key {CANARY_ID}:{CANARY_SECRET}" for r in hf.requests)
