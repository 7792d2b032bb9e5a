"""What sync scoring adds to a warm Wav2Lip render on this machine, measured in one run.

    python bench/sync_overhead.py [--seconds 10] [--rounds 2]

A 720p base video (the demo avatar on a canvas, a known face box), random-weight official
checkpoints (wav2lip_gan.pth, s3fd.pth, lipsync_expert.pth), one process, one Renderer per
setting sharing the loaded engine. After a warm-up render (avatar track, expert loaded), renders
alternate SYNC_SCORING=false / true; the best of each is compared. Prints:
  off_s / on_s           wall seconds of a whole warm render, best of --rounds
  sync_wait_ms_per_frame the render's time waiting for the scorer (timings_s.sync / frames): the
                         scorer runs on its own thread, one batch behind the engine
  overhead               on_s / off_s  (goal <= 1.10)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.inputs import demo_box, fixed_detector, make_base720, speech_samples  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from node.config import Settings
    from node.engines.wav2lip import Wav2LipEngine
    from node.job import parse_job
    from node.media import write_wav
    from node.pipeline import Renderer
    from tests.checkpoints import random_state_dict, save, training_container

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_base720(tmp / "base720.mp4", 2.0)
        write_wav(tmp / "speech.wav", speech_samples(args.seconds), 16000)
        weights = tmp / "weights"
        weights.mkdir()
        save(training_container(random_state_dict("wav2lip_generator", seed=1)), weights / "wav2lip_gan.pth")
        save(random_state_dict("s3fd", seed=2), weights / "s3fd.pth")
        save(training_container(random_state_dict("wav2lip_syncnet_expert", seed=3)), weights / "lipsync_expert.pth")
        settings = Settings(_env_file=None, weights_dir=weights, temp_dir=tmp / "t", avatar_cache_dir=tmp / "c",
                            output_dir=tmp / "o", video_encoder="libx264", x264_preset="veryfast")
        engine = Wav2LipEngine(settings)
        engine.load()
        engine._load_detector = lambda: fixed_detector(demo_box())  # the track keeps the S3FD file's key
        on = Renderer(settings, engines={"wav2lip": engine})
        off = Renderer(settings.model_copy(update={"sync_scoring": False}), engines={"wav2lip": engine})
        job = parse_job({"video_id": "bench", "audio": str(tmp / "speech.wav"), "avatar": str(tmp / "base720.mp4"),
                         "engine": "wav2lip", "strategy": "lipsync"})

        def timed(renderer):
            t0 = time.perf_counter()
            result = renderer.render(job, tmp / "out.mp4")
            assert result.status == "succeeded", result.as_dict()
            return time.perf_counter() - t0, result

        timed(off)  # warm-up: the engine prepares the avatar's face track (the fixed box), first torch calls
        timed(on)  # the scorer reads that track and loads the expert
        off_s, on_s, last = [], [], None
        for _ in range(args.rounds):
            seconds, unscored = timed(off)
            off_s.append(seconds)
            seconds, last = timed(on)
            on_s.append(seconds)
        frames = round(args.seconds * 25)
        print(f"== sync scoring overhead: warm Wav2Lip, 720p, {args.seconds:g}s of speech ({frames} frames), "
              f"random weights")
        print(f"off_s={min(off_s):.2f} on_s={min(on_s):.2f}")
        print(f"sync_wait_ms_per_frame={last.timings_s['sync'] * 1000 / frames:.2f}")
        print(f"timings_off={unscored.timings_s}")
        print(f"timings_on={last.timings_s}")
        print(f"sync={last.extra['sync']}")
        print(f"overhead={min(on_s) / min(off_s):.3f}x  (goal <= 1.10)")


if __name__ == "__main__":
    main()
