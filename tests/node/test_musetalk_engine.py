"""The musetalk engine on random weights in the official layouts (reduced UNet and VAE configs).

Most tests inject a fixed-box detector and a face parser over a stub network (skin everywhere,
so the blend mask is known to be non-empty); the render-contract test runs the real S3FD and
BiSeNet loaders on their random weights as `lipsync-node render --engine musetalk` would.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from node.chain import plan_steps
from node.engines import build_local_engines
from node.engines.face_track import FaceTrack
from node.engines.face_track import load_or_prepare as load_face_track
from node.engines.musetalk import AudioWindows, MuseTalkEngine
from node.engines.musetalk_prep import cache_folder
from node.health import node_health
from node.job import parse_job
from node.pipeline import Renderer
from node.weights import DWPOSE
from tests.checkpoints import random_state_dict, save
from tests.conftest import make_speech, make_video
from tests.models.face.build_dwpose import build_dwpose_onnx
from tests.models.musetalk.build_bisenet import build_bisenet
from tests.models.musetalk.build_unet_vae import build_unet, build_vae_dir
from tests.models.musetalk.build_whisper import build_whisper_dir
from tests.node.engine_checks import assert_pauses_keep_the_source_mouth, open_base, speech_of
from tests.node.test_render import assert_output_contract
from tests.synthetic_face import face_shown, make_face_video

BOX = (40, 30, 120, 100)  # x1, y1, x2, y2 in the 160x120 test video
MARGIN = 10  # v1.5 extra chin margin (crop_face)
SKIN, NOSE = 1, 10


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """Every required file in the official layout; whisper as the official pickled .bin."""
    root = tmp_path_factory.mktemp("musetalk-weights")
    save(random_state_dict("s3fd", seed=2), root / "s3fd.pth")
    build_unet(root / "musetalkV15", seed=3)
    build_vae_dir(root / "sd-vae", seed=4, container="safetensors", reduced=True)
    build_whisper_dir(root / "whisper", seed=5, container="bin")
    build_bisenet(root / "face-parse-bisent", seed=6)
    return root


@pytest.fixture(scope="module")
def dwpose_weights_dir(weights_dir, tmp_path_factory):
    """The same files plus a (random, tiny) DWPose export at its manifest path."""
    root = tmp_path_factory.mktemp("musetalk-weights-dwpose")
    for path in weights_dir.rglob("*"):
        if path.is_file():
            (root / path.relative_to(weights_dir)).parent.mkdir(parents=True, exist_ok=True)
            (root / path.relative_to(weights_dir)).symlink_to(path)
    (root / DWPOSE).parent.mkdir(parents=True)
    build_dwpose_onnx(root / DWPOSE)
    return root


class CountingDetector:
    """BOX, except where the box is blacked out (make_face_video's faceless frames), judged from
    the pixels: the preparation detects keyframes only, so answering by call order (as this did)
    no longer says which frame is faceless."""

    def __init__(self):
        self.calls = 0

    def __call__(self, frames):
        self.calls += 1
        return [BOX if face_shown(frame, BOX) else None for frame in frames]


class SkinNet(torch.nn.Module):
    """A parameter-less parser network: skin everywhere but a nose square in the middle."""

    def forward(self, x):
        logits = torch.zeros((x.shape[0], 19, *x.shape[2:]))
        logits[:, SKIN] = 1.0
        logits[:, NOSE, 200:260, 230:280] = 2.0
        return logits


class CountingParser:
    def __init__(self):
        from models.musetalk.face_parsing import FaceParser

        self.inner, self.calls = FaceParser(SkinNet()), 0

    def mask(self, image_rgb, mode="jaw"):
        self.calls += 1
        return self.inner.mask(image_rgb, mode)


def engine_for(settings, weights_dir, detector=None, parser="stub"):
    s = settings.model_copy(update={"weights_dir": weights_dir, "torch_device": "cpu"})
    parser = CountingParser() if parser == "stub" else parser
    return MuseTalkEngine(s, detector=detector or CountingDetector(), detector_id="fixed-box",
                          parser=parser, parser_id="skin")


def full_frame_alpha(avatar, i, height, width) -> np.ndarray:
    """Frame i's cached blend mask placed on the frame (0 outside the crop box)."""
    x1, y1, x2, y2 = avatar.crop_box(i)
    alpha = np.zeros((height, width), np.uint8)
    mask = avatar.mask(i)
    fx1, fy1, fx2, fy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    alpha[fy1:fy2, fx1:fx2] = mask[fy1 - y1:fy2 - y1, fx1 - x1:fx2 - x1]
    return alpha


# --- audio windows -----------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [25.0, 30000 / 1001])
def test_lazy_audio_windows_equal_the_model_windows(weights_dir, fps):
    # The engine gathers windows per batch from the encoder states instead of holding all N.
    from models.musetalk.audio import WhisperFeatures

    whisper = WhisperFeatures(weights_dir / "whisper")
    wav = np.random.default_rng(0).uniform(-0.5, 0.5, int(16000 * 1.37)).astype(np.float32)
    expected = whisper.windows(wav, fps)
    lazy = AudioWindows(whisper, wav, fps)
    assert len(lazy) == len(expected) == math.floor(len(wav) / 16000 * fps)
    frames = np.arange(len(lazy))
    got = torch.cat([lazy(frames[i:i + 7]) for i in range(0, len(frames), 7)])
    assert torch.equal(got, expected)
    assert torch.equal(lazy(np.array([len(lazy) - 1, 0])), expected[[len(lazy) - 1, 0]])


# --- readiness ---------------------------------------------------------------------------------


def test_missing_weights_skip_the_engine_with_the_files_and_the_command(tmp_path, settings):
    (tmp_path / "s3fd.pth").write_bytes(b"x")
    reason = engine_for(settings, tmp_path).unavailable_reason()
    assert "musetalkV15/unet.pth" in reason and "download_weights.py --engine musetalk" in reason


def test_chain_puts_musetalk_first_by_default(settings, weights_dir):
    s = settings.model_copy(update={"weights_dir": weights_dir})
    engines = build_local_engines(s)
    steps = plan_steps(parse_job({"video_id": "c", "text": "hi"}), s, engines, remote={})
    assert steps[0].name == "musetalk" and isinstance(steps[0].engine, MuseTalkEngine)
    assert steps[0].unavailable_reason() is None  # every required file is in place


def test_health_says_how_faces_are_placed(settings, weights_dir, dwpose_weights_dir):
    def musetalk_row(root):
        s = settings.model_copy(update={"weights_dir": root})
        return next(c for c in node_health(s)["components"] if c["kind"] == "engine" and c["name"] == "musetalk")

    without, with_dwpose = musetalk_row(weights_dir), musetalk_row(dwpose_weights_dir)
    assert without["ready"] and with_dwpose["ready"]
    assert "DWPose absent" in without["note"] and "S3FD boxes" in without["note"]
    assert "DWPose landmarks" in with_dwpose["note"]


# --- rendering ---------------------------------------------------------------------------------


def test_render_with_musetalk_meets_contract(tmp_path, settings, weights_dir, ffprobe):
    # Given random-weight official files and the real S3FD and BiSeNet loaders (random weights
    # find whatever they find; the render must succeed either way)
    avatar = make_video(tmp_path / "a.mp4", seconds=0.2)
    speech = make_speech(tmp_path / "s.wav", 0.6)
    s = settings.model_copy(update={"weights_dir": weights_dir, "torch_device": "cpu"})
    job = parse_job({"video_id": "mt", "audio": str(speech), "avatar": str(avatar), "engine": "musetalk"})
    result = Renderer(s).render(job, tmp_path / "o.mp4")
    assert result.status == "succeeded", result.as_dict()
    assert result.providers == {"tts": "upload", "lipsync": "musetalk"}
    report = result.extra["lipsync_report"]
    assert report["avatar_cache"] == "miss" and report["box_source"] == "s3fd"
    assert set(report) >= {"passthrough_s", "source_mouth_s", "faceless_base_frames"}
    assert_output_contract(tmp_path / "o.mp4", 0.6, Fraction(25))


def test_generated_face_changes_only_the_blend_region(tmp_path, settings, weights_dir, ffprobe):
    base = open_base(make_video(tmp_path / "a.mp4", seconds=0.2), settings)  # 5 frames
    engine = engine_for(settings, weights_dir)
    speech = speech_of(make_speech(tmp_path / "s.wav", 0.48, bursts=[(0.0, 0.48)]))
    report = {}
    batches = list(engine.frames(base, speech, 12, 5, report))
    assert [len(b) for b in batches] == [5, 5, 2]  # no dropped last frame
    out = np.concatenate(batches)
    indices = base.pingpong_indices(12)
    src = base.take(indices)
    avatar = engine.prepare(base)
    assert avatar.box(0) == (BOX[0], BOX[1], BOX[2], BOX[3] + MARGIN)
    for k, i in enumerate(indices):
        alpha = full_frame_alpha(avatar, i, base.height, base.width)
        # Then pixels where the blend mask is 0 are the source, bit for bit ...
        assert np.array_equal(out[k][alpha == 0], src[k][alpha == 0]), k
        # ... and the face changed under the mask (random weights make a very different face)
        assert np.mean(out[k][alpha == 255] != src[k][alpha == 255]) > 0.5, k
    assert report["passthrough_s"] == 0 and report["avatar_cache"] == "miss"


def test_faceless_frames_pass_through_in_pingpong_order(tmp_path, settings, weights_dir, ffprobe):
    base = open_base(make_face_video(tmp_path / "a.mp4", BOX, seconds=0.2, faceless={1, 3}), settings)  # 5 frames
    engine = engine_for(settings, weights_dir, CountingDetector())
    speech = speech_of(make_speech(tmp_path / "s.wav", 0.48, bursts=[(0.0, 0.48)]))
    report = {}
    out = np.concatenate(list(engine.frames(base, speech, 12, 4, report)))
    indices = base.pingpong_indices(12)  # 0 1 2 3 4 3 2 1 0 1 2 3
    src = base.take(indices)
    for k, i in enumerate(indices):
        assert np.array_equal(out[k], src[k]) == (i in {1, 3}), (k, i)
    assert report["passthrough_s"] == pytest.approx(int(np.isin(indices, [1, 3]).sum()) / 25)
    assert report["faceless_base_frames"] == 2


def test_pauses_keep_the_source_mouth(tmp_path, settings, weights_dir, ffprobe):
    base = open_base(make_video(tmp_path / "a.mp4", seconds=0.2), settings)
    assert_pauses_keep_the_source_mouth(engine_for(settings, weights_dir), base, tmp_path)


def test_second_job_runs_no_preparation(tmp_path, settings, weights_dir, ffprobe, monkeypatch):
    # Given an avatar prepared ahead of time (`avatar prepare`) by one engine
    from models.musetalk.vae import MuseTalkVAE

    encodes = []
    original = MuseTalkVAE.encode_for_unet
    monkeypatch.setattr(MuseTalkVAE, "encode_for_unet", lambda self, *a, **k: encodes.append(1) or original(self, *a, **k))
    s = settings.model_copy(update={"weights_dir": weights_dir, "avatars_dir": tmp_path / "avatars"})
    first = engine_for(s, weights_dir)
    summary = Renderer(s, engines={"musetalk": first}).prepare_avatar(
        make_video(tmp_path / "host.mp4", seconds=0.2), "host")
    assert summary["engines"]["musetalk"] == {"prepared": True, "faceless_frames": 0}
    assert first._detector.calls and first._parser.calls == 5 and encodes
    # When a job uses it on a fresh engine (a new process)
    encodes.clear()
    later = engine_for(s, weights_dir)
    job = parse_job({"video_id": "p", "audio": str(make_speech(tmp_path / "s.wav", 0.6)), "avatar": "host",
                     "engine": "musetalk", "strategy": "lipsync"})
    result = Renderer(s, engines={"musetalk": later}).render(job, tmp_path / "o.mp4")
    # Then it renders with no detection, no parsing and no VAE encode, and says so
    assert result.status == "succeeded", result.as_dict()
    assert later._detector.calls == 0 and later._injected_parser.calls == 0 and encodes == []
    assert result.extra["lipsync_report"]["avatar_cache"] == "hit"


def test_frames_are_produced_one_batch_at_a_time(tmp_path, settings, weights_dir, ffprobe):
    base = open_base(make_video(tmp_path / "a.mp4", seconds=0.2), settings)
    engine = engine_for(settings, weights_dir)
    engine.prepare(base)
    taken = []
    original = base.take
    base.take = lambda idx: taken.append(len(idx)) or original(idx)
    batches = engine.frames(base, speech_of(make_speech(tmp_path / "s.wav", 1.0)), 25, 4)
    assert len(next(batches)) == 4 and sum(taken) <= 8  # the first batch, at most one more ahead
    assert sum(len(b) for b in batches) == 21 and max(taken) == 4


def test_dwpose_places_the_box_when_present(tmp_path, settings, weights_dir, dwpose_weights_dir, monkeypatch,
                                            ffprobe):
    # Given a DWPose whose face landmarks span x 50..110, y 40..100 with point 29 at y 60
    import models.face.dwpose as dwpose_module

    class FakeDWPose:
        def __call__(self, frame):
            kp = np.zeros((133, 2))
            face = np.stack([np.linspace(50, 110, 68), np.linspace(40, 100, 68)], axis=1)
            face[29, 1] = 60.0
            kp[23:91] = face
            return kp, np.ones(133, np.float32)

    monkeypatch.setattr(dwpose_module, "load_dwpose", lambda path, **kw: FakeDWPose())
    base = open_base(make_video(tmp_path / "a.mp4", seconds=0.2), settings)
    with_dwpose = engine_for(settings, dwpose_weights_dir).prepare(base)
    without = engine_for(settings, weights_dir).prepare(base)
    # Then the half-face rule sets the box (y1 = 60 - (100 - 60)), S3FD only says a face is there
    assert with_dwpose.box(0) == (50, 20, 110, 100 + MARGIN)
    assert without.box(0) == (BOX[0], BOX[1], BOX[2], BOX[3] + MARGIN)
    assert with_dwpose.meta["dwpose_frames"] == 5 and without.meta["s3fd_frames"] == 5
    # and the two are cached apart (the DWPose file is part of the key)
    assert with_dwpose.folder != without.folder and with_dwpose.folder.parent == without.folder.parent


def test_cache_folder_depends_on_engine_parameters(tmp_path, settings, weights_dir, ffprobe):
    base = open_base(make_video(tmp_path / "a.mp4", seconds=0.2), settings)
    plain = engine_for(settings, weights_dir)
    softer = MuseTalkEngine(settings.model_copy(update={"weights_dir": weights_dir}), detector=CountingDetector(),
                            detector_id="fixed-box", parser=CountingParser(), parser_id="skin")
    softer.blur_ratio = 0.1
    other_detector = engine_for(settings, weights_dir, CountingDetector())
    other_detector._detector_id = "other"
    folders = {cache_folder(settings.avatar_cache_dir, base, e.cache_params())
               for e in (plain, softer, other_detector)}
    assert len(folders) == 3


def test_face_track_reports_cache_hits(tmp_path, settings, ffprobe):
    # The Wav2Lip face track says whether it came from the cache too (its report's avatar_cache)
    base = open_base(make_video(tmp_path / "a.mp4", seconds=0.2), settings)
    first = load_face_track(base, CountingDetector, "fixed", settings.avatar_cache_dir)
    second = load_face_track(base, CountingDetector, "fixed", settings.avatar_cache_dir)
    assert isinstance(first, FaceTrack) and not first.cache_hit and second.cache_hit


def test_precision_follows_the_placement_probe(settings, weights_dir):
    # fp16 where node.device chose it (CUDA, compute capability >= 7.0), fp32 elsewhere; the
    # prepared latents are keyed by it
    from node.device import Placement

    engine = engine_for(settings, weights_dir)
    engine._placement = Placement("cuda", True, True, "compute capability 9.0: fp16 autocast")
    fp16 = (engine.dtype, engine.cache_params()["precision"])
    engine._placement = Placement("cpu", False, True, "no CUDA device")
    assert fp16 == (torch.float16, "fp16") and (engine.dtype, engine.cache_params()["precision"]) == (
        torch.float32, "fp32")


def test_cli_render_with_musetalk(tmp_path, weights_dir, ffprobe):
    # Given the random-weight official files in WEIGHTS_DIR and the real loaders (S3FD's random
    # weights answer with boxes far outside the frame: they are clipped, never crash the engine)
    import json
    import os
    import subprocess
    import sys

    make_video(tmp_path / "a.mp4", seconds=0.4)
    make_speech(tmp_path / "s.wav", 1.0)
    env = {**os.environ, "WEIGHTS_DIR": str(weights_dir), "TEMP_DIR": str(tmp_path / "t"),
           "AVATAR_CACHE_DIR": str(tmp_path / "c"), "X264_PRESET": "ultrafast", "VIDEO_ENCODER": "libx264"}
    # When the user renders with --engine musetalk
    proc = subprocess.run([sys.executable, "-m", "node.cli", "render", "--audio", "s.wav", "--avatar", "a.mp4",
                           "--engine", "musetalk", "-o", "o.mp4", "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    # Then MuseTalk itself made the video (no fallback), lip-syncing the frames it found a face in
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["strategy"] == "lipsync" and result["providers"]["lipsync"] == "musetalk", result["attempts"]
    report = result["lipsync_report"]
    assert report["avatar_cache"] == "miss" and report["passthrough_s"] < 1.0
    assert_output_contract(tmp_path / "o.mp4", 1.0, Fraction(25))
