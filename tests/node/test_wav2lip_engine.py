"""The wav2lip engine on random-weight checkpoints in the official containers."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from node.engines.face_track import CROP_SIZE
from node.engines.wav2lip import Wav2LipEngine, generator_input
from node.job import parse_job
from node.pipeline import Renderer
from tests.checkpoints import random_state_dict, save, training_container
from tests.conftest import make_speech, make_video
from tests.node.engine_checks import assert_pauses_keep_the_source_mouth, open_base, speech_of
from tests.node.test_render import assert_output_contract
from tests.synthetic_face import face_shown, make_face_video

BOX = (40, 30, 120, 110)  # x1, y1, x2, y2 in the 160x120 test video


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    save(training_container(random_state_dict("wav2lip_generator", seed=1)), folder / "wav2lip_gan.pth")
    save(random_state_dict("s3fd", seed=2), folder / "s3fd.pth")
    return folder


class CountingDetector:
    """A detector with a known answer, judged from the pixels it is shown: BOX, except where the
    box is blacked out (make_face_video's faceless frames). It used to answer by call order, which
    assumed it saw every frame; the face track now detects keyframes only and follows the face in
    between, so a faceless frame must look faceless."""

    def __init__(self):
        self.calls = 0

    def __call__(self, frames):
        self.calls += 1
        return [BOX if face_shown(frame, BOX) else None for frame in frames]


def engine_for(settings, weights_dir, detector=None):
    s = settings.model_copy(update={"weights_dir": weights_dir})
    return Wav2LipEngine(s, detector=detector, detector_id="fixed-box" if detector else None)


def test_generator_input_layout():
    crops = np.random.default_rng(0).integers(0, 256, (2, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    x = generator_input(crops)
    assert x.shape == (2, 6, 96, 96) and x.dtype == np.float32
    assert np.all(x[:, :3, 48:] == 0)  # lower half of the first three channels masked
    assert np.allclose(x[:, :3, :48], x[:, 3:, :48])  # upper halves identical
    assert np.allclose(x[:, 3:].transpose(0, 2, 3, 1) * 255, crops)  # BGR order kept


def test_unavailable_without_generator_or_detector(settings, tmp_path):
    (tmp_path / "s3fd.pth").write_bytes(b"x")
    reason = engine_for(settings, tmp_path).unavailable_reason()
    assert "wav2lip_gan.pth or wav2lip.pth" in reason and "download_weights.py --engine wav2lip" in reason


def test_render_with_wav2lip_meets_contract(tmp_path, settings, weights_dir, ffprobe):
    # Given random-weight official checkpoints and the real S3FD loader (random weights find
    # whatever they find; the render must succeed either way)
    avatar = make_video(tmp_path / "a.mp4", seconds=0.4)
    speech = make_speech(tmp_path / "s.wav", 1.2)
    s = settings.model_copy(update={"weights_dir": weights_dir})
    job = parse_job({"video_id": "w2l", "audio": str(speech), "avatar": str(avatar), "engine": "wav2lip"})
    result = Renderer(s).render(job, tmp_path / "o.mp4")
    assert result.status == "succeeded", result.as_dict()
    assert result.providers == {"tts": "upload", "lipsync": "wav2lip"}
    assert set(result.extra["lipsync_report"]) >= {"passthrough_s", "source_mouth_s"}
    assert_output_contract(tmp_path / "o.mp4", 1.2, Fraction(25))


def test_generated_mouth_changes_only_the_lower_face(tmp_path, settings, weights_dir, ffprobe):
    # a still face in BOX (frames between keyframes follow the pixels: the test pattern moves)
    base = open_base(make_face_video(tmp_path / "a.mp4", BOX, seconds=0.4), settings)
    engine = engine_for(settings, weights_dir, CountingDetector())
    speech = speech_of(make_speech(tmp_path / "s.wav", 0.8, bursts=[(0.0, 0.8)]))
    out = np.concatenate(list(engine.frames(base, speech, 20, 8)))
    src = base.take(base.pingpong_indices(20))
    changed = np.any(out != src, axis=(0, 3))  # (H, W): any frame, any channel
    x1, y1, x2, y2 = 40, 30, 120, 120  # the box after the official +10 px chin pad (clipped)
    outside = changed.copy()
    outside[y1:y2, x1:x2] = False
    assert not outside.any()  # the frame outside the face box is the source, bit for bit
    upper = changed[y1:y1 + (y2 - y1) // 3, x1:x2]
    lower = changed[y1 + (y2 - y1) * 2 // 3:y2, x1:x2]
    assert lower.mean() > 0.5 and upper.mean() < 0.05  # the mouth changes, the eyes do not


def test_faceless_frames_pass_through_and_are_reported(tmp_path, settings, weights_dir, ffprobe):
    base = open_base(make_face_video(tmp_path / "a.mp4", BOX, seconds=0.4, faceless={2, 3, 4}), settings)  # 10 frames
    engine = engine_for(settings, weights_dir, CountingDetector())
    speech = speech_of(make_speech(tmp_path / "s.wav", 0.8, bursts=[(0.0, 0.8)]))
    report = {}
    out = np.concatenate(list(engine.frames(base, speech, 20, 8, report)))
    indices = base.pingpong_indices(20)
    src = base.take(indices)
    for k, i in enumerate(indices):
        assert np.array_equal(out[k], src[k]) == (i in {2, 3, 4}), (k, i)
    faceless_outputs = int(np.isin(indices, [2, 3, 4]).sum())
    assert report["passthrough_s"] == pytest.approx(faceless_outputs / 25)
    assert report["faceless_base_frames"] == 3


def test_pauses_keep_the_source_mouth(tmp_path, settings, weights_dir, ffprobe):
    base = open_base(make_video(tmp_path / "a.mp4", seconds=0.4), settings)
    assert_pauses_keep_the_source_mouth(engine_for(settings, weights_dir, CountingDetector()), base, tmp_path)


def test_second_job_on_the_same_avatar_skips_detection(tmp_path, settings, weights_dir, ffprobe):
    path = make_video(tmp_path / "a.mp4", seconds=0.4)
    speech = speech_of(make_speech(tmp_path / "s.wav", 0.4))
    first = CountingDetector()
    list(engine_for(settings, weights_dir, first).frames(open_base(path, settings), speech, 10, 8))
    assert first.calls > 0
    second = CountingDetector()  # a new engine, as in a new process
    list(engine_for(settings, weights_dir, second).frames(open_base(path, settings), speech, 10, 8))
    assert second.calls == 0


def test_frames_are_produced_lazily_one_batch_at_a_time(tmp_path, settings, weights_dir, ffprobe):
    base = open_base(make_video(tmp_path / "a.mp4", seconds=0.4), settings)
    engine = engine_for(settings, weights_dir, CountingDetector())
    engine.prepare(base)
    taken = []
    original = base.take
    base.take = lambda idx: taken.append(len(idx)) or original(idx)
    speech = speech_of(make_speech(tmp_path / "s.wav", 2.0))
    batches = engine.frames(base, speech, 50, 8)
    assert len(next(batches)) == 8 and taken == [8]  # nothing beyond the first batch yet
    assert sum(len(b) for b in batches) == 42 and max(taken) == 8


def test_prepared_avatar_renders_without_detecting_again(tmp_path, settings, weights_dir, ffprobe):
    # Given an avatar prepared ahead of time
    s = settings.model_copy(update={"weights_dir": weights_dir, "avatars_dir": tmp_path / "avatars"})
    first = CountingDetector()
    summary = Renderer(s, engines={"wav2lip": engine_for(s, weights_dir, first)}).prepare_avatar(
        make_video(tmp_path / "host.mp4", seconds=0.4), "host")
    assert summary["engines"]["wav2lip"] == {"prepared": True, "faceless_frames": 0} and first.calls > 0
    # When a job uses it by name on a fresh renderer (a new process)
    later = CountingDetector()
    job = parse_job({"video_id": "p", "audio": str(make_speech(tmp_path / "s.wav", 0.6)), "avatar": "host",
                     "engine": "wav2lip", "strategy": "lipsync"})
    result = Renderer(s, engines={"wav2lip": engine_for(s, weights_dir, later)}).render(job, tmp_path / "o.mp4")
    # Then it lip-syncs without running the detector
    assert result.status == "succeeded" and later.calls == 0


@pytest.mark.parametrize(("own", "expected"), [(None, (5, "LIPSYNC_BATCH_SIZE")), (3, (3, "WAV2LIP_BATCH_SIZE"))])
def test_one_batch_rule_sets_the_drain_points(tmp_path, settings, weights_dir, ffprobe, own, expected):
    # Given LIPSYNC_BATCH_SIZE=5, with WAV2LIP_BATCH_SIZE left at its default or set
    avatar = make_video(tmp_path / "a.mp4", seconds=0.4)
    speech = make_speech(tmp_path / "s.wav", 0.8)
    s = settings.model_copy(update={"weights_dir": weights_dir, "lipsync_batch_size": 5,
                                    **({"wav2lip_batch_size": own} if own else {})})
    assert s.batch_size_for("wav2lip") == expected
    # When a Wav2Lip job renders, watching its progress (reported at every batch boundary)
    renderer = Renderer(s)
    seen: list[int] = []
    job = parse_job({"video_id": "batches", "audio": str(speech), "avatar": str(avatar), "engine": "wav2lip"})
    result = renderer.render(job, tmp_path / "o.mp4", progress=lambda done, total: seen.append(done))
    # Then the batches, and so the drain checks, come every `size` frames, as the summary says
    size, source = expected
    assert result.status == "succeeded", result.as_dict()
    assert seen == [min(size * (k + 1), 20) for k in range(len(seen))] and seen[-1] == 20
    assert f"wav2lip {size} frames ({source})" in renderer.batch_summary()  # what a worker logs at start
