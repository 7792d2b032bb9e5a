"""The strategy chain through the Renderer and the CLI, with every provider on a loopback mock
(configured by base-URL settings only)."""

from __future__ import annotations

import json
from fractions import Fraction

from prometheus_client import REGISTRY

from node.job import parse_job
from node.pipeline import Renderer
from tests.conftest import make_speech, make_video, require_tool
from tests.mocks import Fault
from tests.node.test_cli import run_cli
from tests.node.test_render import assert_output_contract
from tests.providers.conftest import provider_settings


def job(tmp_path, video_id="j1", **fields):
    avatar = make_video(tmp_path / "avatar.mp4", seconds=0.4)
    if "text" not in fields:
        fields.setdefault("audio", str(make_speech(tmp_path / "speech.wav", seconds=1.2)))
    return parse_job({"video_id": video_id, "avatar": str(avatar), **fields})


def mock_env(el=None, sync=None, hf=None, heygen=None) -> dict[str, str]:
    env = {"PROVIDER_POLL_BASE_S": "0.01", "PROVIDER_POLL_CAP_S": "0.05", "PROVIDER_RETRY_BASE_S": "0.05"}
    if el:
        env |= {"ELEVENLABS_BASE_URL": el.url, "ELEVENLABS_API_KEY": el.api_key}
    if sync:
        env |= {"SYNCLABS_BASE_URL": sync.url, "SYNCLABS_API_KEY": sync.api_key}
    if hf:
        key_id, secret = hf.auth.removeprefix("Key ").split(":", 1)
        env |= {"HIGGSFIELD_BASE_URL": hf.url, "HIGGSFIELD_API_KEY_ID": key_id, "HIGGSFIELD_API_KEY_SECRET": secret}
    if heygen:
        env |= {"HEYGEN_BASE_URL": heygen.url, "HEYGEN_UPLOAD_URL": heygen.url, "HEYGEN_API_KEY": heygen.api_key}
    return env


def test_cli_render_lipsync_with_synclabs(tmp_path, ffprobe, el_mock, sync_mock):
    # Given the node pointed at the mocks by base-URL settings only
    make_video(tmp_path / "avatar.mp4", seconds=0.4)
    env = mock_env(el=el_mock, sync=sync_mock) | {"AUDIO_CACHE_DIR": str(tmp_path / "audio-cache")}
    # When `render --strategy lipsync --engine synclabs` runs as a user would run it
    proc = run_cli(["render", "--text", "¡Jo, jo, jo!", "--avatar", "avatar.mp4", "--strategy", "lipsync",
                    "--engine", "synclabs", "-o", "o.mp4", "--json", "--video-id", "cli-sync"], tmp_path, **env)
    # Then Sync lip-synced it, with ElevenLabs speech, into a video meeting the output contract
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["strategy"] == "lipsync" and result["providers"] == {"tts": "elevenlabs", "lipsync": "synclabs"}
    assert [(a["stage"], a["provider"], a["outcome"]) for a in result["attempts"]] == [
        ("tts", "elevenlabs", "succeeded"), ("lipsync", "synclabs", "succeeded")]
    assert_output_contract(tmp_path / "o.mp4", result["duration_s"], Fraction(25))
    assert sync_mock.counts["create"] == 1 and el_mock.counts["tts"] == 1


def test_cli_render_full_video_falls_from_higgsfield_to_heygen(tmp_path, ffprobe, hf_mock, heygen_mock):
    # Given Higgsfield failing its generations and HeyGen healthy
    hf_mock.book.outcome = "fail"
    make_video(tmp_path / "avatar.mp4", seconds=0.4)
    make_speech(tmp_path / "speech.wav", seconds=1.2)
    proc = run_cli(["render", "--audio", "speech.wav", "--avatar", "avatar.mp4", "--strategy", "full_video",
                    "-o", "o.mp4", "--json"], tmp_path, **mock_env(hf=hf_mock, heygen=heygen_mock))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    # Then HeyGen made it, and the attempts say why Higgsfield did not
    assert result["strategy"] == "full_video" and result["providers"] == {"tts": "upload", "video": "heygen"}
    higgsfield, heygen = result["attempts"]
    assert higgsfield["outcome"] == "failed" and "no face found" in higgsfield["reason"]
    assert heygen["outcome"] == "succeeded"
    assert_output_contract(tmp_path / "o.mp4", 1.2, Fraction(25))


def test_every_remote_failing_without_weights_still_succeeds_through_strategy_3(
        tmp_path, settings, ffprobe, sync_mock, hf_mock, heygen_mock):
    # Given every provider broken in a different way, and no local weights
    sync_mock.inject("create", Fault(500, {"message": "Internal server error"}))
    hf_mock.book.outcome = "stuck"
    heygen_mock.inject("asset", Fault(401, {"error": {"code": "unauthorized", "message": "Invalid API key"}}))
    s = provider_settings(settings, sync=sync_mock, hf=hf_mock, heygen=heygen_mock, higgsfield_deadline_s=0.5)
    # When a job runs the whole chain
    result = Renderer(s).render(job(tmp_path), tmp_path / "o.mp4")
    # Then strategy 3 delivered, and each step's outcome and cause is recorded in chain order
    assert result.status == "succeeded" and result.strategy == "base_video"
    steps = [(a.stage, a.provider, a.outcome, a.code) for a in result.attempts]
    local = steps[:-4]  # the local engines, whatever LIPSYNC_ENGINE_ORDER lists: no weights here
    assert local and all(outcome == "skipped" for _, _, outcome, _ in local)
    assert steps[-4:] == [("lipsync", "synclabs", "failed", "http_500"),
                          ("full_video", "higgsfield", "failed", "generation_timeout"),
                          ("full_video", "heygen", "failed", "unauthorized"),
                          ("base_video", "base_video", "succeeded", None)]
    assert "not re-sent" in result.attempts[-4].reason and sync_mock.counts["create"] == 1
    assert_output_contract(tmp_path / "o.mp4", 1.2, Fraction(25))


def test_elevenlabs_down_falls_back_to_espeak_and_says_so(tmp_path, settings, ffprobe, el_mock):
    require_tool("espeak-ng")
    # Given ElevenLabs answering 500 to everything
    el_mock.inject("tts", *[Fault(500, {"detail": {"status": "internal_error", "message": "down"}})] * 5)
    s = provider_settings(settings, el=el_mock)
    result = Renderer(s).render(job(tmp_path, text="¡Jo, jo, jo!", strategy="base_video"), tmp_path / "o.mp4")
    # Then espeak-ng spoke, the result says so, and the ElevenLabs failure is in the attempts
    assert result.status == "succeeded" and result.providers["tts"] == "espeak"
    first, second = result.attempts[:2]
    assert (first.stage, first.provider, first.outcome, first.code) == ("tts", "elevenlabs", "failed", "internal_error")
    assert "on 3 tries" in first.reason and el_mock.counts["tts"] == 3
    assert (second.provider, second.outcome) == ("espeak", "succeeded")


def test_a_cached_line_skips_elevenlabs_on_the_next_job(tmp_path, settings, ffprobe, el_mock):
    renderer = Renderer(provider_settings(settings, el=el_mock))
    for video_id in ("a", "b"):
        result = renderer.render(job(tmp_path, video_id, text="¡Feliz Navidad!", strategy="base_video"),
                                 tmp_path / f"{video_id}.mp4")
        assert result.providers["tts"] == "elevenlabs"
    assert el_mock.counts["tts"] == 1 and result.attempts[0].reason == "audio cache hit"


def test_an_open_circuit_is_a_skip_reason(tmp_path, settings, ffprobe, sync_mock):
    # Given a circuit that opens after one failure, and Sync failing its first create
    sync_mock.inject("create", Fault(503, b"overloaded"), Fault(503, b""), Fault(503, b""))
    s = provider_settings(settings, sync=sync_mock, provider_circuit_failures=1, provider_max_tries=3)
    renderer = Renderer(s, engines={})  # providers (and their circuits) live as long as the Renderer
    first = renderer.render(job(tmp_path, "c1", strategy="lipsync", engine="synclabs"), tmp_path / "1.mp4")
    second = renderer.render(job(tmp_path, "c2", strategy="lipsync", engine="synclabs"), tmp_path / "2.mp4")
    # Then the second job skipped Sync at once, saying until when, without calling it
    assert first.attempts[0].outcome == "failed"
    assert second.attempts[0].outcome == "skipped"
    assert second.attempts[0].reason.startswith("circuit open until ")
    assert sync_mock.counts["create"] == 3


def test_metrics_record_the_strategy_and_provider_used(tmp_path, settings, ffprobe, sync_mock):
    labels = {"stage": "lipsync", "provider": "synclabs", "outcome": "succeeded"}
    before = REGISTRY.get_sample_value("lipsync_chain_steps_total", labels) or 0
    calls_before = REGISTRY.get_sample_value("lipsync_provider_calls_total",
                                             {"provider": "synclabs", "outcome": "succeeded"}) or 0
    Renderer(provider_settings(settings, sync=sync_mock), engines={}).render(
        job(tmp_path, strategy="lipsync", engine="synclabs"), tmp_path / "o.mp4")
    assert REGISTRY.get_sample_value("lipsync_chain_steps_total", labels) == before + 1
    assert REGISTRY.get_sample_value("lipsync_provider_calls_total",
                                     {"provider": "synclabs", "outcome": "succeeded"}) == calls_before + 1


def test_a_remote_output_is_scored_from_its_own_frames(tmp_path, settings, ffprobe, sync_mock):
    # Given Sync as the only lip-sync step and a scorer that records how it was asked to find faces
    from tests.node.test_sync import FixedScores

    renderer = Renderer(provider_settings(settings, sync=sync_mock, lipsync_engine_order="synclabs"), engines={})
    renderer.sync = scores = FixedScores((0.4, 1))
    speech = make_speech(tmp_path / "s.wav", 1.0)
    job = parse_job({"video_id": "remote-sync", "audio": str(speech), "avatar": str(make_video(tmp_path / "a.mp4")),
                     "strategy": "lipsync"})
    result = renderer.render(job, tmp_path / "o.mp4")
    # Then the provider's video was scored on its decoded frames (faces detected, not taken from
    # the avatar's track: its framing need not be the base video's), every frame of it
    assert result.providers["lipsync"] == "synclabs" and scores.calls == [False]
    assert scores.frames == 25 and result.extra["sync"]["confidence"] == 0.4
