"""The fleet-wide avatar cache: a second node's first job on an avatar against its warm job.

    python bench/avatar_fleet.py [--seconds 10] [--base-seconds 3]

Two Renderers with their own avatar caches share one S3-protocol store (moto's server on loopback,
STORAGE_TYPE=s3). Node A renders the 720p bench base first (it detects faces: the real S3FD network
runs on each detector call for its cost, answering the known box) and publishes the preparation.
Node B then renders the same job twice. Prints:
  detector_calls_b        detector calls on node B (goal: 0, it fetched A's face track)
  first_on_b_s / warm_b_s B's first job (decode, fetch, render) against its second (goal <= 1.2x)
  cold_a_s                A's first job, which prepared the avatar, for scale
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.inputs import CANVAS, demo_box, make_base720, speech_samples  # noqa: E402
from node.media import write_wav  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--base-seconds", type=float, default=3.0)
    args = ap.parse_args()
    import boto3
    from moto.server import ThreadedMotoServer

    from node.config import Settings
    from node.encoder import EncoderChoice
    from node.engines.face_track import s3fd_detector
    from node.engines.wav2lip import Wav2LipEngine
    from node.job import parse_job
    from node.pipeline import Renderer
    from tests.checkpoints import random_state_dict, save, training_container
    from tests.fleet.conftest import free_port

    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the S3 server's access log
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            make_base720(tmp / "base720.mp4", args.base_seconds)
            write_wav(tmp / "speech.wav", speech_samples(args.seconds), 16000)
            weights = tmp / "weights"
            weights.mkdir()
            save(training_container(random_state_dict("wav2lip_generator", seed=1)), weights / "wav2lip_gan.pth")
            save(random_state_dict("s3fd", seed=2), weights / "s3fd.pth")
            box, calls = demo_box(), {"a": 0, "b": 0}

            def node(name: str) -> Renderer:
                settings = Settings(_env_file=None, weights_dir=weights, temp_dir=tmp / name / "t",
                                    avatar_cache_dir=tmp / name / "cache", output_dir=tmp / name / "o",
                                    storage_type="s3", s3_bucket="bench", s3_endpoint_url=endpoint,
                                    video_encoder="libx264", x264_preset="veryfast", sync_scoring=False,
                                    lipsync_engine_order="wav2lip")
                real = s3fd_detector(weights / "s3fd.pth", "cpu")

                def detector(frames):
                    calls[name] += 1
                    real(frames)  # the network's cost; random weights find nothing, so answer the box
                    scale = frames.shape[2] / CANVAS[0]
                    return [[v * scale for v in box]] * len(frames)
                engine = Wav2LipEngine(settings, detector=detector, detector_id="bench-box")
                return Renderer(settings, engines={"wav2lip": engine}, encoder=EncoderChoice("libx264", "bench"))

            job = {"audio": str(tmp / "speech.wav"), "avatar": str(tmp / "base720.mp4"), "engine": "wav2lip",
                   "strategy": "lipsync"}

            def timed(renderer: Renderer, vid: str) -> float:
                t0 = time.perf_counter()
                result = renderer.render(parse_job({"video_id": vid, **job}))
                assert result.status == "succeeded", result.as_dict()
                return time.perf_counter() - t0

            a, b = node("a"), node("b")
            cold_a = timed(a, "a1")
            first_b = timed(b, "b1")
            warm_b = timed(b, "b2")
    finally:
        server.stop()
    print(f"base=1280x720 {args.base_seconds:g}s  speech={args.seconds:g}s")
    print(f"detector_calls_a={calls['a']} detector_calls_b={calls['b']}")
    print(f"cold_a_s={cold_a:.1f} first_on_b_s={first_b:.1f} warm_b_s={warm_b:.1f} "
          f"first_vs_warm_b={first_b / warm_b:.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    main()
