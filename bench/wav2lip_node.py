"""Wav2Lip engine figures on random-weight official checkpoints, measured in one run.

    python bench/wav2lip_node.py [--seconds 10] [--long-seconds 60] [--base-seconds 3]

A 720p base video (the demo avatar placed on a 1280x720 canvas) and synthetic speech. Prints:
  generator_fps            frames/s of the generator alone (inputs ready, batches of WAV2LIP_BATCH_SIZE)
  node_warm_fps            frames/s of a whole render (`--engine wav2lip`) in a process that has
                           rendered before, the avatar prepared: what a worker sees
  node_cold_fps            the first render of a fresh process on an empty avatar cache (decode,
                           S3FD on keyframes and tracking between them, first torch calls)
  warm_vs_generator        node_warm_fps / generator_fps (goal >= 0.87)
  peak_rss_mb_cold         peak RSS of the process that prepared the avatar (S3FD included)
  peak_rss_mb_short/long   peak RSS of a warm render process for --seconds / --long-seconds of speech
  rss_long_vs_short        their ratio (goal <= 1.2; and <= 1.5 GB at 720p)

Random S3FD weights do not find faces, so the detector here runs the real S3FD network and
post-processing on every (downscaled) frame for timing, then answers with the avatar's known face
box so the generator has work on every frame, as it would with real weights.
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

from bench.inputs import CANVAS, demo_box, make_base720, speech_samples  # noqa: E402
from node.media import write_wav  # noqa: E402



def make_inputs(tmp: Path, base_seconds: float, speech_seconds: list[float]) -> None:
    make_base720(tmp / "base720.mp4", base_seconds)
    for seconds in speech_seconds:
        write_wav(tmp / f"speech{seconds:g}.wav", speech_samples(seconds), 16000)
    from tests.checkpoints import random_state_dict, save, training_container

    weights = tmp / "weights"
    weights.mkdir()
    save(training_container(random_state_dict("wav2lip_generator", seed=1)), weights / "wav2lip_gan.pth")
    save(random_state_dict("s3fd", seed=2), weights / "s3fd.pth")


def child(args) -> None:
    """Two renders in one process, as a worker does them: the first (an empty avatar cache: decode
    + S3FD + the first torch calls) is the cold figure, the second (`--speech` seconds) the warm
    one. Prints a JSON line with both and the process's peak RSS."""
    from node.config import Settings
    from node.engines import build_local_engines
    from node.engines.wav2lip import Wav2LipEngine
    from node.job import parse_job
    from node.pipeline import Renderer

    tmp = Path(args.tmp)
    settings = Settings(_env_file=None, weights_dir=tmp / "weights", temp_dir=tmp / "t",
                        avatar_cache_dir=tmp / args.cache, video_encoder="libx264", x264_preset="veryfast")
    engine = Wav2LipEngine(settings)
    engine.load()
    box = demo_box()

    load_real_detector = engine._load_detector

    def timed_detector_factory():
        real_detect = load_real_detector()

        def timed_detector(frames):
            real_detect(frames)  # the real network + post-processing, for the cost
            scale = frames.shape[2] / CANVAS[0]
            return [[v * scale for v in box]] * len(frames)
        return timed_detector

    engine._load_detector = timed_detector_factory
    engines = build_local_engines(settings) | {"wav2lip": engine}
    renderer = Renderer(settings, engines=engines)

    def timed_render(seconds: float) -> float:
        job = parse_job({"video_id": "bench", "audio": str(tmp / f"speech{seconds:g}.wav"),
                         "avatar": str(tmp / "base720.mp4"), "engine": "wav2lip", "strategy": "lipsync"})
        t0 = time.perf_counter()
        result = renderer.render(job, tmp / f"out-{args.cache}.mp4")
        assert result.status == "succeeded", result.as_dict()
        return round(result.duration_s * 25) / (time.perf_counter() - t0)

    first = timed_render(args.first)
    second = timed_render(args.speech)
    print(json.dumps({"first_fps": first, "fps": second,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_child(tmp: Path, first: float, speech: float, cache: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--tmp", str(tmp), "--first", str(first), "--speech", str(speech),
           "--cache", cache]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "LOG_LEVEL": "WARNING"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def generator_fps(tmp: Path, frames: int) -> float:
    """The engine's own generator call (input layout, forward, output to uint8) on ready inputs."""
    from node.config import Settings
    from node.engines.wav2lip import Wav2LipEngine

    settings = Settings(_env_file=None, weights_dir=tmp / "weights")
    engine = Wav2LipEngine(settings)
    engine.load()
    batch = settings.batch_size_for("wav2lip")[0]  # the model batch a render uses
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (batch, 96, 96, 3), dtype=np.uint8)
    mel = rng.standard_normal((batch, 80, 16)).astype(np.float32)
    engine._generate(mel, crops)  # burn-in
    calls = max(1, frames // batch)
    t0 = time.perf_counter()
    for _ in range(calls):
        engine._generate(mel, crops)
    return calls * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--long-seconds", type=float, default=60.0)
    ap.add_argument("--base-seconds", type=float, default=3.0)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--tmp")
    ap.add_argument("--speech", type=float)
    ap.add_argument("--first", type=float)
    ap.add_argument("--cache")
    args = ap.parse_args()
    if args.child:
        return child(args)
    from node.config import Settings

    batch = Settings(_env_file=None).batch_size_for("wav2lip")[0]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_inputs(tmp, args.base_seconds, [args.seconds, args.long_seconds])
        gen = generator_fps(tmp, int(args.seconds * 25))
        short = run_child(tmp, args.seconds, args.seconds, "cache")  # cold (prepares), then warm
        # Peak RSS against speech length: two processes that differ only in their second render
        # (the avatar is prepared by now, so neither runs the detector).
        warm_short = run_child(tmp, args.seconds, args.seconds, "cache")
        warm_long = run_child(tmp, args.seconds, args.long_seconds, "cache")
    print(f"base=1280x720 {args.base_seconds:g}s  speech={args.seconds:g}s/{args.long_seconds:g}s  batch={batch}  "
          f"threads={__import__('torch').get_num_threads()}")
    print(f"generator_fps={gen:.1f}")
    print(f"node_warm_fps={short['fps']:.1f}")
    print(f"node_cold_fps={short['first_fps']:.1f}")
    print(f"warm_vs_generator={short['fps'] / gen:.2f}x")
    print(f"peak_rss_mb_cold={short['peak_rss_mb']:.0f}")
    print(f"peak_rss_mb_short={warm_short['peak_rss_mb']:.0f}")
    print(f"peak_rss_mb_long={warm_long['peak_rss_mb']:.0f}")
    print(f"rss_long_vs_short={warm_long['peak_rss_mb'] / warm_short['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
