"""The Wav2Lip generator per backend, a warm 720p render per backend, and the official run beside it.

    python bench/generator_backends.py [--seconds 10] [--base-seconds 3] [--rounds 3]
                                       [--x264-preset medium] [--official-repo DIR]

Inputs are bench/inputs.py's (the demo avatar on a 1280x720 canvas, speech-like audio) and a
random-weight generator in the official container (tests/checkpoints.py). Prints:

  generator_fps  <backend>   frames/s of `mouths(mel, crops)` at the engine's batch on ready
                             inputs, median over --rounds interleaved rounds:
                               torch_eager      the official form: BatchNorm unfolded, NCHW
                               torch_folded_cl  today's torch backend: folded, channels-last
                               onnxruntime      the cached ONNX export under ONNX Runtime
  warm_render_s  <backend>   wall time of a `--engine wav2lip` render of --seconds of speech in a
                             process that has rendered before (avatar prepared, weights loaded),
                             best of two; the face detector answers the known box (fixed-box)
  official_fixed_box_s       the official inference.py on the same base, speech and checkpoint
                             with --box, wall time of the whole subprocess (it loads and runs
                             once, so there is no warm figure for it)
  speedup_vs_official        official_fixed_box_s / warm_render_s of WAV2LIP_BACKEND=auto

Each time also comes as CPU seconds (user + system, the encoder's and the official's ffmpeg
included): on a shared machine the wall times move with the neighbours, the CPU seconds much less,
so the load average is printed before and after.

--official-repo is a checkout of Rudrabha/Wav2Lip kept outside this repository; its files are run,
never edited: what it needs from today's libraries (librosa's keyword-only `filters.mel`, numpy's
removed aliases) is patched at start-up by a sitecustomize.py in a temporary folder, and `ffmpeg`
on its PATH is imageio-ffmpeg's binary.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.inputs import demo_box, fixed_detector, make_base720, speech_samples  # noqa: E402
from node.media import write_wav  # noqa: E402

BACKENDS = ("torch", "onnxruntime")

#: What the official code needs from today's numpy and librosa, applied when its interpreter starts.
OFFICIAL_SHIMS = '''
import numpy
for _name, _type in {"int": int, "float": float, "bool": bool, "object": object, "complex": complex}.items():
    if _name not in numpy.__dict__:
        setattr(numpy, _name, _type)  # removed aliases (numpy 1.24)

import librosa.filters
_mel = librosa.filters.mel
def _positional_mel(*args, **kwargs):  # keyword-only since librosa 0.10
    kwargs.update(zip(("sr", "n_fft"), args))
    return _mel(**kwargs)
librosa.filters.mel = _positional_mel
'''


def make_inputs(tmp: Path, base_seconds: float, seconds: float) -> None:
    from tests.checkpoints import random_state_dict, save, training_container

    make_base720(tmp / "base720.mp4", base_seconds)
    write_wav(tmp / "speech.wav", speech_samples(seconds), 16000)
    write_wav(tmp / "short.wav", speech_samples(2.0), 16000)
    weights = tmp / "weights"
    weights.mkdir()
    save(training_container(random_state_dict("wav2lip_generator", seed=1)), weights / "wav2lip_gan.pth")
    save(random_state_dict("s3fd", seed=2), weights / "s3fd.pth")


# --- generator frames/s -------------------------------------------------------------------------


class EagerTorch:
    """The generator as the official inference runs it: BatchNorm unfolded, NCHW, fp32."""

    name = "torch_eager"

    def __init__(self, checkpoint: Path, device: str):
        from models.wav2lip import load_wav2lip

        self.model, self.device = load_wav2lip(checkpoint, device), device

    def mouths(self, mel, crops):
        import torch

        from node.engines.wav2lip_backends import generator_input, to_uint8_bgr

        with torch.inference_mode():
            out = self.model(torch.from_numpy(mel[:, None]).to(self.device),
                             torch.from_numpy(generator_input(crops)).to(self.device))
        return to_uint8_bgr(out.cpu().numpy())


def generator_fps(tmp: Path, rounds: int) -> tuple[dict[str, float], int]:
    from node.config import Settings
    from node.device import choose_placement
    from node.engines.wav2lip_backends import load_onnx_generator, load_torch_generator

    batch = Settings(_env_file=None).batch_size_for("wav2lip")[0]  # the model batch a render uses
    checkpoint, placement = tmp / "weights" / "wav2lip_gan.pth", choose_placement("auto")
    runners = {"torch_eager": EagerTorch(checkpoint, placement.device),
               "torch_folded_cl": load_torch_generator(checkpoint, placement),
               "onnxruntime": load_onnx_generator(checkpoint, placement, tmp / "models")}
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (batch, 96, 96, 3), dtype=np.uint8)
    mel = rng.standard_normal((batch, 80, 16)).astype(np.float32)
    for runner in runners.values():
        runner.mouths(mel, crops)  # burn-in: first-call allocations and kernel choices
    seen: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):  # interleaved, so a noisy neighbour hits every backend alike
        for name, runner in runners.items():
            t0 = time.perf_counter()
            for _ in range(2):
                runner.mouths(mel, crops)
            seen[name].append(2 * batch / (time.perf_counter() - t0))
    return {name: statistics.median(v) for name, v in seen.items()}, batch


# --- warm renders (one child process per backend, as a worker) ------------------------------------


def cpu_seconds() -> float:
    """User + system seconds of this process and of its children that have been waited for."""
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF,
                                                                          resource.RUSAGE_CHILDREN)))


def child(args) -> None:
    """Renders the short speech (prepares the avatar, loads the backend), then the long one twice;
    prints the best warm wall time as JSON."""
    from node.config import Settings
    from node.engines import build_local_engines
    from node.engines.wav2lip import Wav2LipEngine
    from node.job import parse_job
    from node.pipeline import Renderer

    tmp = Path(args.tmp)
    settings = Settings(_env_file=None, weights_dir=tmp / "weights", temp_dir=tmp / "t",
                        avatar_cache_dir=tmp / "avatars", model_cache_dir=tmp / "models",
                        wav2lip_backend=args.backend, video_encoder="libx264", x264_preset=args.x264_preset)
    engine = Wav2LipEngine(settings, detector=fixed_detector(demo_box()), detector_id="bench-fixed-box")
    renderer = Renderer(settings, engines=build_local_engines(settings) | {"wav2lip": engine})

    def render(speech: str) -> tuple[float, float]:
        job = parse_job({"video_id": "bench", "audio": str(tmp / speech), "avatar": str(tmp / "base720.mp4"),
                         "engine": "wav2lip", "strategy": "lipsync"})
        t0, c0 = time.perf_counter(), cpu_seconds()
        result = renderer.render(job, tmp / f"out-{args.backend}.mp4")
        assert result.status == "succeeded", result.as_dict()
        return time.perf_counter() - t0, cpu_seconds() - c0, result.timings_s

    render("short.wav")
    warm = min(render("speech.wav") for _ in range(2))
    print(json.dumps({"warm_s": warm[0], "cpu_s": warm[1], "timings": warm[2], "backend": engine.backend_name}))


def warm_render(tmp: Path, backend: str, preset: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--tmp", str(tmp), "--backend", backend, "--x264-preset", preset]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "LOG_LEVEL": "WARNING"})
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the official run ------------------------------------------------------------------------------


def official_fixed_box(repo: Path, tmp: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of the official inference.py, fixed box, on the bench inputs."""
    from node.media import ffmpeg_binary

    run_dir = tmp / "official-run"
    (run_dir / "temp").mkdir(parents=True, exist_ok=True)  # it writes temp/result.avi under its cwd
    shims = tmp / "official-shims"
    (shims / "bin").mkdir(parents=True, exist_ok=True)
    (shims / "sitecustomize.py").write_text(OFFICIAL_SHIMS)
    if not (shims / "bin" / "ffmpeg").exists():
        (shims / "bin" / "ffmpeg").symlink_to(ffmpeg_binary())
    x1, y1, x2, y2 = demo_box()
    # --box is (top, bottom, left, right) and skips the detector's pads: add its default chin pad
    # of 10 px, so both runs paste the same crop the node's face track uses.
    box = [y1, y2 + 10, x1, x2]
    cmd = [sys.executable, str(repo / "inference.py"), "--checkpoint_path", str(tmp / "weights" / "wav2lip_gan.pth"),
           "--face", str(tmp / "base720.mp4"), "--audio", str(tmp / "speech.wav"),
           "--outfile", str(run_dir / "result.mp4"), "--box", *map(str, box)]
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(shims), os.environ.get("PYTHONPATH")])),
           "PATH": os.pathsep.join([str(shims / "bin"), os.environ.get("PATH", "")])}
    t0, c0 = time.perf_counter(), cpu_seconds()
    proc = subprocess.run(cmd, cwd=run_dir, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0, cpu_seconds() - c0
    if proc.returncode != 0 or not (run_dir / "result.mp4").is_file():
        raise RuntimeError(f"the official inference.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    (run_dir / "result.mp4").unlink()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--base-seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--x264-preset", default="medium", help="the node's default; the official mux uses libx264's")
    ap.add_argument("--official-repo", type=Path, help="a checkout of Rudrabha/Wav2Lip (outside this repository)")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--tmp")
    ap.add_argument("--backend")
    args = ap.parse_args()
    if args.child:
        return child(args)
    import torch

    from node.device import choose_placement
    from node.engines.wav2lip_backends import choose_backend

    print("load average before: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_inputs(tmp, args.base_seconds, args.seconds)
        fps, batch = generator_fps(tmp, args.rounds)
        print(f"generator at batch {batch}, {torch.get_num_threads()} threads, median of {args.rounds} rounds:")
        for name, value in fps.items():
            print(f"  generator_fps {name:16s} {value:6.1f}")
        warm = {backend: warm_render(tmp, backend, args.x264_preset) for backend in BACKENDS}
        print(f"warm render, {args.seconds:g} s of speech on the 1280x720 base, x264 {args.x264_preset}, fixed box:")
        for backend, run in warm.items():
            print(f"  warm_render_s {backend:12s} {run['warm_s']:6.1f}   cpu_s {run['cpu_s']:6.1f}   "
                  f"stages {json.dumps(run['timings'])}")
        auto = choose_backend("auto", choose_placement("auto"))[0]
        if args.official_repo is None:
            print("official_fixed_box_s: not measured (pass --official-repo DIR, a Rudrabha/Wav2Lip checkout)")
            print("speedup_vs_official: not measured")
        else:
            wall, cpu = official_fixed_box(args.official_repo.resolve(), tmp)
            print(f"official_fixed_box_s {wall:.1f}   cpu_s {cpu:.1f}")
            print(f"speedup_vs_official {wall / warm[auto]['warm_s']:.2f}x wall, {cpu / warm[auto]['cpu_s']:.2f}x cpu "
                  f"(auto = {auto}; goal >= 2x)")
    print("load average after: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
