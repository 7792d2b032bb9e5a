"""Sync confidence in the node: the result carries it, the threshold drives the chain, the offset
fix moves the audio, and the real expert checkpoint layout runs end to end.

Random weights make a confidence meaningless, so the chain tests give the Renderer a scorer whose
numbers are set per step; the arithmetic itself is tested in tests/models/wav2lip/test_sync_score.py.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from node.engines.mock import MockEngine
from node.job import parse_job
from node.media import decode_audio
from node.pipeline import Renderer
from node.sync import SCORER
from tests.checkpoints import random_state_dict, save, training_container
from tests.conftest import make_speech, make_video
from tests.node.test_render import assert_output_contract


class NamedMock(MockEngine):
    def __init__(self, name: str):
        super().__init__(enabled=True)
        self.name = name


class FixedScores:
    """A scorer that gives each scored step the next of `scores` (confidence, offset_frames)."""

    def __init__(self, *scores):
        self.scores, self.calls = list(scores), []

    def unavailable_reason(self):
        return None

    def monitor(self, base, speech, frame_count, *, aligned):
        confidence, offset = self.scores.pop(0)
        self.calls.append(aligned)
        outer = self

        class Monitor:
            frames = 0

            def add(self, batch):
                self.frames += len(batch)

            def result(self):
                outer.frames = self.frames
                return {"distance": 0.5, "confidence": confidence, "offset_frames": offset, "windows": 1,
                        "scorer": "fixed"}

            def close(self):
                pass
        return Monitor()


def renderer_with(settings, scores: FixedScores, **update) -> Renderer:
    s = settings.model_copy(update={"lipsync_engine_order": "first,second", **update})
    renderer = Renderer(s, engines={"first": NamedMock("first"), "second": NamedMock("second")})
    renderer.sync = scores
    return renderer


def render(renderer, tmp_path, seconds=1.0, **job):
    avatar = make_video(tmp_path / "a.mp4", seconds=0.4)
    speech = make_speech(tmp_path / "s.wav", seconds)
    request = {"video_id": "sync", "audio": str(speech), "avatar": str(avatar)} | job
    return renderer.render(parse_job(request), tmp_path / "o.mp4"), speech


def test_every_lip_synced_result_carries_its_score(tmp_path, settings, ffprobe):
    # Given a scorer, and no threshold (report only)
    from prometheus_client import REGISTRY

    observed = REGISTRY.get_sample_value("lipsync_sync_confidence_count", {"provider": "first"}) or 0
    scores = FixedScores((0.01, 2))
    result, _ = render(renderer_with(settings, scores), tmp_path)
    assert REGISTRY.get_sample_value("lipsync_sync_confidence_count", {"provider": "first"}) == observed + 1
    # Then the first engine's output is kept and its score is in the result, every frame scored
    assert result.status == "succeeded" and result.providers["lipsync"] == "first"
    assert result.as_dict()["sync"] == {"distance": 0.5, "confidence": 0.01, "offset_frames": 2, "windows": 1,
                                        "scorer": "fixed"}
    assert scores.frames == 25 and scores.calls == [True]  # a local engine: faces from the avatar's track
    assert "sync" in result.timings_s


def test_low_confidence_moves_the_chain_to_the_next_step(tmp_path, settings, ffprobe):
    # Given SYNC_MIN_CONFIDENCE 0.1: the first engine scores 0.05, the second 0.3
    scores = FixedScores((0.05, 0), (0.3, 0))
    result, _ = render(renderer_with(settings, scores, sync_min_confidence=0.1), tmp_path)
    # Then the first step failed with low_sync_confidence and the second one's output is the result
    attempts = [(a.provider, a.outcome, a.code) for a in result.attempts if a.stage == "lipsync"]
    assert attempts == [("first", "failed", "low_sync_confidence"), ("second", "succeeded", None)]
    assert result.providers["lipsync"] == "second" and result.extra["sync"]["confidence"] == 0.3
    assert "fallback" not in result.extra["sync"]
    assert_output_contract(tmp_path / "o.mp4", 1.0, Fraction(25))


def test_the_best_candidate_wins_over_strategy_3(tmp_path, settings, ffprobe):
    # Given every lip-sync step below the threshold (0.04, then 0.07)
    scores = FixedScores((0.04, 0), (0.07, 0))
    result, _ = render(renderer_with(settings, scores, sync_min_confidence=0.1), tmp_path)
    # Then the best-scoring candidate is the result, not the base video, and the result says so
    assert result.status == "succeeded" and result.strategy == "lipsync"
    assert result.providers["lipsync"] == "second" and result.extra["sync"]["confidence"] == 0.07
    assert "kept over strategy 3" in result.extra["sync"]["fallback"]
    assert [a.code for a in result.attempts if a.stage == "lipsync"] == ["low_sync_confidence"] * 2
    assert not any(a.stage == "base_video" for a in result.attempts)
    assert_output_contract(tmp_path / "o.mp4", 1.0, Fraction(25))
    # and the candidate files are gone with the job's work folder
    assert not list(settings.temp_dir.glob("sync-*"))


def _lag_s(reference: np.ndarray, shifted: np.ndarray, sample_rate: int) -> float:
    """How much later `shifted` plays `reference`, seconds (cross-correlation peak)."""
    n = min(len(reference), len(shifted))
    size = 1 << math.ceil(math.log2(2 * n))
    corr = np.fft.irfft(np.fft.rfft(shifted[:n], size) * np.conj(np.fft.rfft(reference[:n], size)), size)
    lag = int(np.argmax(corr))
    return (lag if lag < size // 2 else lag - size) / sample_rate


@pytest.mark.parametrize("offset", [5, -3])
def test_the_offset_fix_moves_the_audio_by_the_measured_frames(tmp_path, settings, ffprobe, offset):
    # Given a confident offset of `offset` frames (video window i matches audio window i + offset)
    scores = FixedScores((0.5, offset))
    renderer = renderer_with(settings, scores, sync_fix_offset=True)
    result, speech = render(renderer, tmp_path, seconds=1.6)
    # Then the audio in the output plays offset / 25 s earlier than the speech (later when negative)
    assert result.extra["sync"]["audio_shift_frames"] == -offset
    heard = decode_audio(tmp_path / "o.mp4")
    said = decode_audio(speech)
    assert _lag_s(said, heard, 16000) == pytest.approx(-offset / 25, abs=0.003)
    # and the file still follows the output contract, as long as the speech
    assert_output_contract(tmp_path / "o.mp4", 1.6, Fraction(25))


def test_without_the_offset_fix_the_audio_stays(tmp_path, settings, ffprobe):
    result, speech = render(renderer_with(settings, FixedScores((0.5, 5))), tmp_path, seconds=1.6)
    assert "audio_shift_frames" not in result.extra["sync"]
    assert _lag_s(decode_audio(speech), decode_audio(tmp_path / "o.mp4"), 16000) == pytest.approx(0, abs=0.003)


def test_scoring_is_skipped_with_a_reason(tmp_path, settings, ffprobe):
    # Given no lipsync_expert.pth, and then SYNC_SCORING=false
    s = settings.model_copy(update={"lipsync_engine_order": "mock"})
    result, _ = render(Renderer(s), tmp_path)
    assert "lipsync_expert.pth" in result.extra["sync"]["skipped"]
    off, _ = render(Renderer(s.model_copy(update={"sync_scoring": False})), tmp_path)
    assert off.extra["sync"] == {"skipped": "SYNC_SCORING=false"} and "sync" not in off.timings_s
    # and strategy 3 is never scored
    base, _ = render(Renderer(s), tmp_path, strategy="base_video")
    assert "sync" not in base.extra
    # and health says the same
    from node.health import node_health

    row = next(c for c in node_health(s)["components"] if c["kind"] == "sync")
    assert row["ready"] is False and "lipsync_expert.pth" in row["reason"]


def test_the_real_expert_scores_a_wav2lip_render(tmp_path, settings, ffprobe):
    # Given the official checkpoint layouts (random weights): generator, S3FD and the expert
    weights = tmp_path / "weights"
    weights.mkdir()
    save(training_container(random_state_dict("wav2lip_generator", seed=1)), weights / "wav2lip_gan.pth")
    save(random_state_dict("s3fd", seed=2), weights / "s3fd.pth")
    save(training_container(random_state_dict("wav2lip_syncnet_expert", seed=7)), weights / "lipsync_expert.pth")
    s = settings.model_copy(update={"weights_dir": weights})
    # When a Wav2Lip job renders
    result, _ = render(Renderer(s), tmp_path, seconds=1.2, engine="wav2lip")
    # Then the result carries a finite score from the expert over the frames with a face (these
    # random S3FD weights find one in some frames of the test video)
    assert result.status == "succeeded" and result.providers["lipsync"] == "wav2lip", result.as_dict()
    sync = result.extra["sync"]
    assert sync["scorer"] == SCORER and sync["windows"] >= 1, sync
    assert 0 <= sync["distance"] <= 2 and math.isfinite(sync["confidence"])
    assert -15 <= sync["offset_frames"] <= 15
    assert_output_contract(tmp_path / "o.mp4", 1.2, Fraction(25))


class RecordingAccumulator:
    def __init__(self, fail_on: int | None = None):
        self.batches, self.fail_on = [], fail_on

    def add(self, crops, valid):
        if self.fail_on is not None and len(self.batches) == self.fail_on:
            raise RuntimeError("boom")
        self.batches.append((crops.copy(), valid.copy()))

    def result(self):
        return None


def test_a_monitor_crops_detected_faces_of_a_remote_video():
    # Given frames with a bright square where a (stand-in) detector says the face is
    from node.sync import SyncMonitor

    frames = np.zeros((3, 120, 160, 3), np.uint8)
    frames[:, 30:90, 40:100] = 200
    box = (40, 30, 100, 80)  # x1, y1, x2, y2: the chin pad adds 10 px below
    monitor = SyncMonitor(RecordingAccumulator(), None, None, detect=lambda f: [box, None, box][:len(f)])
    # When a batch is scored
    monitor.add(frames)
    assert monitor.result() == {"skipped": "no 5-frame window with a face to score", "scorer": SCORER}
    # Then each frame with a face gave a 96x96 crop of exactly the padded box, the other none
    (crops, valid), = monitor._accumulator.batches
    assert valid.tolist() == [True, False, True]
    assert crops.shape == (3, 96, 96, 3) and np.all(crops[0] == 200) and not crops[1].any()


def test_a_scoring_failure_never_costs_the_render():
    from node.sync import SyncMonitor

    monitor = SyncMonitor(RecordingAccumulator(fail_on=1), None, None, detect=lambda f: [None] * len(f))
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    for _ in range(3):
        monitor.add(frames)  # the second batch raises on the scorer's thread: nothing reaches here
    assert monitor.result() == {"skipped": "scoring failed: RuntimeError", "scorer": SCORER}


def test_a_failing_step_leaves_no_scoring_thread(tmp_path, settings, ffprobe):
    # Given a first engine that fails after its first batch, scored by real monitors
    from node.errors import RenderFailed
    from node.sync import SyncMonitor

    class FailingEngine(NamedMock):
        def frames(self, base, speech, frame_count, batch_size, report=None):
            yield base.take(base.pingpong_indices(batch_size))
            raise RenderFailed("the engine broke", code="engine_broke")

    class RealMonitors:
        made: list = []

        def unavailable_reason(self):
            return None

        def monitor(self, base, speech, frame_count, *, aligned):
            self.made.append(SyncMonitor(RecordingAccumulator(), None, None, detect=lambda f: [None] * len(f)))
            return self.made[-1]

    s = settings.model_copy(update={"lipsync_engine_order": "first,second", "lipsync_batch_size": 4})
    renderer = Renderer(s, engines={"first": FailingEngine("first"), "second": NamedMock("second")})
    renderer.sync = monitors = RealMonitors()
    # When the chain moves past the failure
    result, _ = render(renderer, tmp_path)
    # Then the second engine's output is the result, and each step's scoring thread was stopped
    # when its step ended (the failed one's too), not left to the garbage collector
    assert [a.code for a in result.attempts if a.stage == "lipsync"] == ["engine_broke", None]
    assert result.extra["sync"]["skipped"] == "no 5-frame window with a face to score"
    assert len(monitors.made) == 2 and all(m._pool._shutdown for m in monitors.made)
