"""End-to-end renders through strategy 3 and the mock engine, checked with ffprobe."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from node.errors import Cancelled, RenderFailed
from node.job import parse_job
from node.pipeline import Renderer
from tests.conftest import (decode_frames, require_tool, ffprobe_json, fps_of, make_speech, make_video, stream,
                            top_level_boxes)


def assert_output_contract(path: Path, speech_s: float, fps: Fraction) -> dict:
    info = ffprobe_json(path)
    video, audio = stream(info, "video"), stream(info, "audio")
    assert video["codec_name"] == "h264"
    assert video["profile"] == "High"
    assert video["level"] == 40
    assert video["pix_fmt"] == "yuv420p"
    assert audio["codec_name"] == "aac"
    boxes = top_level_boxes(path)
    assert boxes.index("moov") < boxes.index("mdat"), boxes  # +faststart
    assert fps_of(info) == fps
    frame_s = 1 / float(fps)
    assert abs(float(video["duration"]) - speech_s) <= frame_s + 1e-3
    assert abs(float(audio["duration"]) - speech_s) <= frame_s + 1e-3
    assert abs(float(info["format"]["duration"]) - speech_s) <= frame_s + 1e-3
    return info


@pytest.mark.parametrize("fps", ["25", "30000/1001", "30"])
@pytest.mark.parametrize("strategy,engine", [("base_video", None), ("lipsync", "mock")])
def test_render_meets_output_contract(tmp_path, settings, ffprobe, fps, strategy, engine):
    # Given a short base video at `fps` and 1.6 s of speech
    avatar = make_video(tmp_path / "avatar.mp4", fps=fps, seconds=0.8)
    speech = make_speech(tmp_path / "speech.wav", seconds=1.6)
    job = parse_job({"video_id": "t1", "audio": str(speech), "avatar": str(avatar),
                     "strategy": strategy, "engine": engine})
    # When it is rendered
    result = Renderer(settings).render(job, tmp_path / "out.mp4")
    # Then the output follows the contract and runs as long as the speech
    assert result.status == "succeeded", result.as_dict()
    assert result.strategy == strategy
    assert_output_contract(tmp_path / "out.mp4", 1.6, Fraction(fps))
    assert set(result.timings_s) == {"tts", "lipsync", "encode", "total"}
    assert not list(tmp_path.glob(".out.mp4.*"))  # no partial file left beside the output


def test_base_video_loops_forth_and_back(tmp_path, settings, ffprobe):
    # Given a 10-frame base video and speech lasting 25 frames
    avatar = make_video(tmp_path / "a.mp4", fps="25", seconds=0.4)
    speech = make_speech(tmp_path / "s.wav", seconds=1.0)
    job = parse_job({"video_id": "pp", "audio": str(speech), "avatar": str(avatar), "strategy": "base_video"})
    Renderer(settings).render(job, tmp_path / "o.mp4")
    # Then output frame k shows source frame 0,1,..,9,8,..,0,1,.. (compared after both went
    # through lossy H.264, so by nearest source frame)
    source = decode_frames(avatar).astype(np.int16)
    out = decode_frames(tmp_path / "o.mp4").astype(np.int16)
    assert len(source) == 10 and len(out) == 25
    nearest = [int(np.argmin([np.abs(frame - s).mean() for s in source])) for frame in out]
    assert nearest == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6]


def test_mock_engine_opens_the_mouth_with_the_speech(tmp_path, settings, ffprobe):
    # Given speech that is loud only in 0.2-0.6 s and 1.0-1.4 s
    avatar = make_video(tmp_path / "a.mp4", 200, 160, seconds=0.4)
    speech = make_speech(tmp_path / "s.wav", seconds=1.6)
    job = parse_job({"video_id": "m", "audio": str(speech), "avatar": str(avatar), "engine": "mock"})
    mock = Renderer(settings).render(job, tmp_path / "mock.mp4")
    base = Renderer(settings).render(job.model_copy(update={"strategy": "base_video", "engine": None}),
                                     tmp_path / "base.mp4")
    assert mock.providers == {"tts": "upload", "lipsync": "mock"}
    assert base.providers == {"tts": "upload", "video": "base_video"}
    # Then the mouth region differs from the plain base video more while speech is loud
    diff = np.abs(decode_frames(tmp_path / "mock.mp4").astype(int) - decode_frames(tmp_path / "base.mp4"))
    mouth = diff[:, 90:134, 70:130].mean(axis=(1, 2, 3))  # around (0.5 w, 0.7 h)
    loud = mouth[[10, 11, 12, 30, 31, 32]].mean()  # frames at 0.4 s and 1.2 s
    quiet = mouth[[0, 1, 21, 22, 39]].mean()
    assert loud > 2 * quiet + 5, (loud, quiet)


class FailingEngine:
    """Yields one good batch, then fails: a mid-stream engine crash."""

    name, licence = "failing", "test"

    def unavailable_reason(self):
        return None

    def frames(self, base, speech, frame_count, batch_size, report=None):
        yield np.zeros((min(batch_size, frame_count), base.height, base.width, 3), np.uint8)
        raise RenderFailed("synthetic failure", code="engine_crashed")


class MissingEngine:
    name, licence = "absent", "test"

    def unavailable_reason(self):
        return "weights not found in WEIGHTS_DIR"

    def frames(self, *a):  # pragma: no cover - never called
        raise AssertionError("a skipped engine must not run")


def test_chain_records_skips_and_failures_in_order(tmp_path, settings, ffprobe):
    # Given an engine order: absent (skipped), failing (fails mid-stream), then the rest
    s = settings.model_copy(update={"lipsync_engine_order": "absent,failing,synclabs",
                                    "full_video_provider_order": "higgsfield,heygen"})
    engines = {"absent": MissingEngine(), "failing": FailingEngine()}
    avatar = make_video(tmp_path / "a.mp4", seconds=0.4)
    job = parse_job({"video_id": "c", "audio": str(make_speech(tmp_path / "s.wav", 1.2)), "avatar": str(avatar)})
    result = Renderer(s, engines=engines).render(job, tmp_path / "o.mp4")
    # Then every step is recorded in chain order and strategy 3 produced the video
    outcome = [(a.stage, a.provider, a.outcome, a.code) for a in result.attempts]
    assert outcome == [
        ("lipsync", "absent", "skipped", "unavailable"),
        ("lipsync", "failing", "failed", "engine_crashed"),
        ("lipsync", "synclabs", "skipped", "unavailable"),
        ("full_video", "higgsfield", "skipped", "unavailable"),
        ("full_video", "heygen", "skipped", "unavailable"),
        ("base_video", "base_video", "succeeded", None),
    ]
    assert result.status == "succeeded" and result.strategy == "base_video"
    assert "SYNCLABS_API_KEY" in result.attempts[2].reason
    assert_output_contract(tmp_path / "o.mp4", 1.2, Fraction(25))


def test_only_lipsync_with_nothing_available_fails_cleanly(tmp_path, settings, ffprobe):
    # Given strategy lipsync pinned to wav2lip, which has no weights here
    avatar = make_video(tmp_path / "a.mp4", seconds=0.4)
    job = parse_job({"video_id": "f", "audio": str(make_speech(tmp_path / "s.wav", 1.0)),
                     "avatar": str(avatar), "strategy": "lipsync", "engine": "wav2lip"})
    result = Renderer(settings).render(job, tmp_path / "o.mp4")
    # Then the job fails with a code, says why wav2lip was skipped, and writes nothing
    assert result.status == "failed" and result.error["code"] == "all_strategies_failed"
    assert [a.provider for a in result.attempts] == ["wav2lip"]
    assert "run scripts/download_weights.py" in result.attempts[0].reason
    assert not (tmp_path / "o.mp4").exists()


def test_stop_at_batch_boundary_leaves_no_output(tmp_path, settings, ffprobe):
    # Given a render asked to stop after its first batch
    avatar = make_video(tmp_path / "a.mp4", seconds=0.4)
    job = parse_job({"video_id": "d", "audio": str(make_speech(tmp_path / "s.wav", 1.6)),
                     "avatar": str(avatar), "strategy": "base_video"})
    seen = []
    with pytest.raises(Cancelled):
        Renderer(settings).render(job, tmp_path / "o.mp4", progress=lambda d, t: seen.append((d, t)),
                                  should_stop=lambda: True)
    # Then it stopped after exactly one batch and left neither output nor partial file
    assert seen == [(settings.lipsync_batch_size, 40)]
    assert list(tmp_path.glob("*o.mp4*")) == []


def test_text_job_uses_offline_tts(tmp_path, settings, ffprobe):
    require_tool("espeak-ng")
    job = parse_job({"video_id": "tts", "text": "¡Jo, jo, jo! Hola Lucía"})
    result = Renderer(settings).render(job, tmp_path / "o.mp4")
    assert result.status == "succeeded"
    assert result.providers["tts"] == "espeak"
    assert result.attempts[0].as_dict()["outcome"] == "succeeded"
    assert_output_contract(tmp_path / "o.mp4", result.duration_s, Fraction(25))
