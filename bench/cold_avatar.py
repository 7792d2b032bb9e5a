"""A new avatar's first render against the same job warm, with keyframe detection and tracking.

    python bench/cold_avatar.py [--seconds 10] [--clip talking|edited] [--width 1280 --height 720]

A synthetic moving-face base video (tests/synthetic_face.py: a real face photo panned, zoomed and
shaken, its mouth moving; `edited` adds hard cuts, a faceless span and a re-appearance) of
--seconds, speech of the same length, random-weight Wav2Lip and S3FD checkpoints. One fresh
process renders the job twice on an empty avatar cache, as a worker meets a new avatar: the first
render is cold (frame cache decode, face track, first torch calls), the second warm. Every
detector call runs the real S3FD network and post-processing on the frame it is given (random
weights find no face, so this is for its cost) and answers with the oracle's true box, read from
the frame's index barcode. Prints:

  cold_s / warm_s / cold_vs_warm   wall time of the two renders and their ratio (goal <= 2)
  detector                         detector calls / frames, the fraction (goal <= 15 %) and the
                                   seconds spent in S3FD
  accuracy_raw                     tracked boxes (before smoothing and padding) vs the truth:
                                   fraction of face frames with every corner within 2 px, worst
  accuracy_smoothed                the same for the smoothed boxes the crops are cut from
                                   (padding taken off)
  presence_errors                  frames reported faceless with a face, or the reverse
  peak_rss_mb_cold                 peak RSS of that process (goal < 1200 at 720p)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.inputs import speech_samples  # noqa: E402 (after the path insert)
from node.media import write_wav  # noqa: E402

CLIPS = ("talking", "edited")


def make_video(args):
    from tests import synthetic_face

    return getattr(synthetic_face, "talking_head" if args.clip == "talking" else "edited")(
        args.seconds, args.width, args.height)


def make_inputs(tmp: Path, args) -> None:
    make_video(args).write_mp4(tmp / "base.mp4")
    write_wav(tmp / "speech.wav", speech_samples(args.seconds), 16000)
    from tests.checkpoints import random_state_dict, save, training_container

    weights = tmp / "weights"
    weights.mkdir()
    save(training_container(random_state_dict("wav2lip_generator", seed=1)), weights / "wav2lip_gan.pth")
    save(random_state_dict("s3fd", seed=2), weights / "s3fd.pth")


def child(args) -> None:
    from node.avatars import BaseVideo, resolve_avatar
    from node.config import Settings
    from node.engines import build_local_engines
    from node.engines.face_track import PADS, track_path
    from node.engines.wav2lip import Wav2LipEngine
    from node.job import parse_job
    from node.media import probe
    from node.pipeline import Renderer
    from tests.synthetic_face import OracleDetector

    tmp = Path(args.tmp)
    settings = Settings(_env_file=None, weights_dir=tmp / "weights", temp_dir=tmp / "t",
                        avatar_cache_dir=tmp / "cache", video_encoder="libx264", x264_preset="veryfast")
    engine = Wav2LipEngine(settings)
    engine.load()
    video = make_video(args)
    oracle = OracleDetector(video)
    spent = {"s3fd_s": 0.0}
    load_real_detector = engine._load_detector

    def costed_oracle_factory():
        real_detect = load_real_detector()

        def detect(frames):
            t0 = time.perf_counter()
            real_detect(frames)  # the real network + post-processing, for the cost
            spent["s3fd_s"] += time.perf_counter() - t0
            return oracle(frames)
        return detect

    engine._load_detector = costed_oracle_factory
    renderer = Renderer(settings, engines=build_local_engines(settings) | {"wav2lip": engine})

    def timed_render() -> float:
        job = parse_job({"video_id": "cold", "audio": str(tmp / "speech.wav"), "avatar": str(tmp / "base.mp4"),
                         "engine": "wav2lip", "strategy": "lipsync"})
        t0 = time.perf_counter()
        result = renderer.render(job, tmp / "out.mp4")
        assert result.status == "succeeded", result.as_dict()
        return time.perf_counter() - t0

    cold = timed_render()
    warm = timed_render()
    path = tmp / "base.mp4"
    base = BaseVideo.open(resolve_avatar(str(path)), probe(path).video, settings.avatar_cache_dir)
    with np.load(track_path(settings.avatar_cache_dir, base, engine._detector_identity())) as track:
        raw, boxes, has_face, reason = (track[k] for k in ("raw_boxes", "boxes", "has_face", "reason"))
    top, bottom, left, right = PADS
    smoothed = boxes.astype(np.float64) + [left, top, -right, -bottom]  # padding off (clipping aside)
    truth_has = video.has_face()
    both = np.flatnonzero(truth_has & has_face)
    truth = np.stack([video.true_box(i) for i in both])
    raw_err = np.abs(raw[both] - truth).max(axis=1)
    smooth_err = np.abs(smoothed[both] - truth).max(axis=1)
    print(json.dumps({
        "cold_s": cold, "warm_s": warm, "frames": len(base), "detector_calls": oracle.calls,
        "detected_frames": int((reason != 0).sum()), "s3fd_s": spent["s3fd_s"],
        "raw_within_2px": float((raw_err <= 2).mean()), "raw_worst_px": float(raw_err.max()),
        "smoothed_within_2px": float((smooth_err <= 2).mean()), "smoothed_worst_px": float(smooth_err.max()),
        "presence_errors": int((truth_has != has_face).sum()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0, help="base video and speech length")
    ap.add_argument("--clip", choices=CLIPS, default="talking")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--tmp")
    args = ap.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_inputs(tmp, args)
        cmd = [sys.executable, __file__, "--child", "--tmp", str(tmp), "--seconds", str(args.seconds),
               "--clip", args.clip, "--width", str(args.width), "--height", str(args.height)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                             env={**os.environ, "LOG_LEVEL": "WARNING"})
        r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"base={args.width}x{args.height} {args.seconds:g}s clip={args.clip}  speech={args.seconds:g}s  "
          f"threads={__import__('torch').get_num_threads()}")
    print(f"cold_s={r['cold_s']:.1f}")
    print(f"warm_s={r['warm_s']:.1f}")
    print(f"cold_vs_warm={r['cold_s'] / r['warm_s']:.2f}x")
    print(f"detector={r['detector_calls']} calls / {r['frames']} frames = {r['detector_calls'] / r['frames']:.1%} "
          f"(detected_frames={r['detected_frames']}, s3fd_s={r['s3fd_s']:.1f})")
    print(f"accuracy_raw={r['raw_within_2px']:.1%} within 2 px, worst {r['raw_worst_px']:.2f} px")
    print(f"accuracy_smoothed={r['smoothed_within_2px']:.1%} within 2 px, worst {r['smoothed_worst_px']:.2f} px")
    print(f"presence_errors={r['presence_errors']}")
    print(f"peak_rss_mb_cold={r['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
