"""Aggregate frames/s of 1, 2 and 4 warm jobs rendered at once by one node, measured in one run.

    python bench/render_slots.py [--seconds 4] [--slots 1,2,4] [--engine wav2lip]

One Renderer (one copy of the models, as a worker's slots on one GPU share it), the avatar prepared
beforehand, then N jobs started together on N threads, each encode given the slot plan's x264
thread share (node/slots.py). Prints per N: wall seconds, aggregate frames/s and its ratio to one
job. Random-weight official checkpoints; the 720p bench base (bench/inputs.py) with its known face
box, so the generator has work on every frame. On this CPU the models and x264 share the same cores;
on a GPU node the models leave them to the encoders, which is where slots pay most (GPU.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.inputs import demo_box, fixed_detector, make_base720, speech_samples  # noqa: E402
from node.media import write_wav  # noqa: E402

FPS = 25


def build_renderer(tmp: Path, engine: str, slots: int):
    from node.config import Settings
    from node.encoder import EncoderChoice
    from node.engines import build_local_engines
    from node.engines.wav2lip import Wav2LipEngine
    from node.pipeline import Renderer
    from node.slots import available_cores, plan_slots
    from tests.checkpoints import random_state_dict, save, training_container

    weights = tmp / "weights"
    if not weights.is_dir():
        weights.mkdir()
        save(training_container(random_state_dict("wav2lip_generator", seed=1)), weights / "wav2lip_gan.pth")
        save(random_state_dict("s3fd", seed=2), weights / "s3fd.pth")  # present; the fixed box answers
    plan = plan_slots(cores=available_cores(), gpus=0, codec="libx264", slots=slots)
    settings = Settings(_env_file=None, weights_dir=weights, temp_dir=tmp / "t", output_dir=tmp / "o",
                        avatar_cache_dir=tmp / "cache", video_encoder="libx264", x264_preset="veryfast",
                        sync_scoring=False, x264_threads=plan.x264_threads, enable_mock_engine=engine == "mock")
    engines = build_local_engines(settings)
    if engine == "wav2lip":
        engines["wav2lip"] = Wav2LipEngine(settings, detector=fixed_detector(demo_box()), detector_id="bench-box")
    return Renderer(settings, engines=engines, encoder=EncoderChoice("libx264", "bench")), plan


def run_together(renderer, tmp: Path, engine: str, n: int, tag: str) -> tuple[float, int]:
    """Wall seconds and frames of `n` jobs started at once on `n` threads."""
    from node.job import parse_job

    jobs = [parse_job({"video_id": f"{tag}-{n}-{k}", "audio": str(tmp / "speech.wav"),
                       "avatar": str(tmp / "base720.mp4"), "engine": engine, "strategy": "lipsync"})
            for k in range(n)]
    results: list = [None] * n
    start = threading.Barrier(n + 1)

    def one(k: int) -> None:
        start.wait()
        results[k] = renderer.render(jobs[k])

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for r in results:
        assert r.status == "succeeded" and r.strategy == "lipsync", r.as_dict()
    return wall, sum(round(r.duration_s * FPS) for r in results)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0, help="speech per job")
    ap.add_argument("--slots", default="1,2,4")
    ap.add_argument("--engine", default="wav2lip", choices=["wav2lip", "mock"])
    args = ap.parse_args()
    counts = [int(v) for v in args.slots.split(",")]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_base720(tmp / "base720.mp4", 3.0)
        write_wav(tmp / "speech.wav", speech_samples(args.seconds), 16000)
        figures = {}
        import torch

        default_threads = torch.get_num_threads()
        for n in counts:
            renderer, plan = build_renderer(tmp, args.engine, n)
            torch.set_num_threads(plan.torch_threads or default_threads)  # as the worker sets it
            run_together(renderer, tmp, args.engine, 1, "warm-up")  # prepares the avatar, first torch calls
            wall, frames = run_together(renderer, tmp, args.engine, n, "bench")
            figures[n] = (wall, frames / wall, plan.x264_threads, torch.get_num_threads())
    print(f"engine={args.engine} base=1280x720 speech={args.seconds:g}s per job")
    one = figures[counts[0]][1]
    for n, (wall, fps, threads, torch_threads) in figures.items():
        print(f"slots={n} x264_threads={threads or 'default'} torch_threads={torch_threads} wall_s={wall:.1f} "
              f"aggregate_fps={fps:.1f} vs_{counts[0]}_slot={fps / one:.2f}x")


if __name__ == "__main__":
    main()
