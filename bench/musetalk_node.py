"""MuseTalk engine figures on random weights in the official layouts, measured in one run.

    python bench/musetalk_node.py [--seconds 10] [--long-seconds 60] [--base-seconds 2] [--gpu-only]

CPU section (reduced UNet and VAE configs; whisper-tiny and BiSeNet at full size), a 720p base
video (the demo avatar on a 1280x720 canvas) and synthetic speech. Prints, in ms per frame:
  prepare_ms             cold avatar preparation (detector stub, BiSeNet, VAE encode) per base frame
  windows_ms             whisper log-mel + encoder + window gather, per output frame
  unet_ms / decode_ms    the UNet pass and the VAE decode at the engine's batch size
  blend_ms               reading the source frames and pasting the faces at 720p
  encode_ms              the node's encoder (libx264) at 720p
  node_warm_ms           a whole warm `--engine musetalk` render (prepared avatar) per frame
  warm_vs_unet_decode    node_warm_ms / (unet_ms + decode_ms)  (goal <= 1.2)
  peak_rss_mb_short/long peak RSS of a warm render process for --seconds / --long-seconds of speech
  rss_long_vs_short      their ratio (goal <= 1.2)

GPU section (when CUDA is present): the full UNet config (random init, fp16), full sd-vae and
whisper-tiny (random files in the official layout), a synthetic 720p base video held in memory
(no ffmpeg there), fps at batch 8/32/64 of the UNet alone, the decoder alone, and the engine's
frames into a counting sink (no encoder); then the decoder under torch.compile where time allows.

The face box is the demo avatar's known box (random S3FD weights find no face), as in
bench/wav2lip_node.py.
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

from bench.inputs import CANVAS, demo_box, fixed_detector, make_base720, speech_samples  # noqa: E402

FPS = 25


def build_weights(root: Path, full: bool) -> None:
    """The official layout with random weights: reduced UNet/VAE unless `full` (then no UNet file:
    the GPU section builds the full UNet in memory, 3.4 GB)."""
    from tests.checkpoints import random_state_dict, save
    from tests.models.musetalk.build_bisenet import build_bisenet
    from tests.models.musetalk.build_unet_vae import build_unet, build_vae_dir
    from tests.models.musetalk.build_whisper import build_whisper_dir

    save(random_state_dict("s3fd", seed=2), root / "s3fd.pth")
    if not full:
        build_unet(root / "musetalkV15", seed=3)
    build_vae_dir(root / "sd-vae", seed=4, container="safetensors", reduced=not full)
    build_whisper_dir(root / "whisper", seed=5, container="safetensors")
    build_bisenet(root / "face-parse-bisent", seed=6)


def make_engine(settings, **kw):
    from node.engines.musetalk import MuseTalkEngine

    return MuseTalkEngine(settings, detector=fixed_detector(demo_box()), detector_id="demo-box", **kw)


def timed(fn, repeat: int, sync=lambda: None) -> float:
    """Seconds per call, after one burn-in call."""
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeat


def stage_figures(engine, base, speech, batch: int, encoder_settings) -> dict:
    """ms/frame of each stage alone, on the engine's own calls."""
    from node.encoder import VideoEncoder
    from node.engines.musetalk import AudioWindows

    avatar = engine.prepare(base)
    n = len(avatar)
    idx = np.arange(batch) % n
    t0 = time.perf_counter()
    audio = AudioWindows(engine._whisper, speech.samples_16k, FPS)
    ctx = audio(np.arange(len(audio)))
    windows_ms = (time.perf_counter() - t0) * 1000 / len(audio)
    ctx = ctx[:batch]
    latents = engine._latents(avatar, idx)
    unet_s = timed(lambda: engine._denoise(latents, ctx), 3)
    pred = engine._denoise(latents, ctx)
    decode_s = timed(lambda: engine._vae.decode_bgr(pred), 3)
    w = np.ones(batch, np.float32)
    faces = engine._vae.decode_bgr(pred)
    blend_s = timed(lambda: engine.paste(base, avatar, idx, w, np.arange(batch), faces), 3)
    frames = base.take(idx)
    out = Path(tempfile.mkdtemp()) / "enc.mp4"
    wav = speech.path
    count = 4 * batch
    t0 = time.perf_counter()
    with VideoEncoder(out, base.width, base.height, base.fps, wav, count / FPS, codec="libx264",
                      crf=encoder_settings.video_crf, preset=encoder_settings.x264_preset) as enc:
        for _ in range(4):
            enc.write(frames)
        enc.close()
    encode_ms = (time.perf_counter() - t0) * 1000 / count
    return {"windows_ms": windows_ms, "unet_ms": unet_s * 1000 / batch, "decode_ms": decode_s * 1000 / batch,
            "blend_ms": blend_s * 1000 / batch, "encode_ms": encode_ms}


# --- CPU -----------------------------------------------------------------------------------------


def make_cpu_inputs(tmp: Path, base_seconds: float, speech_seconds: list[float]) -> None:
    from node.media import write_wav

    make_base720(tmp / "base720.mp4", base_seconds)
    for seconds in {2.0, *speech_seconds}:
        write_wav(tmp / f"speech{seconds:g}.wav", speech_samples(seconds), 16000)
    (tmp / "weights").mkdir()
    build_weights(tmp / "weights", full=False)


def cpu_settings(tmp: Path):
    from node.config import Settings

    return Settings(_env_file=None, weights_dir=tmp / "weights", temp_dir=tmp / "t", torch_device="cpu",
                    avatar_cache_dir=tmp / "cache", video_encoder="libx264", x264_preset="veryfast")


def render(renderer, tmp: Path, seconds: float) -> float:
    """Wall seconds of one `--engine musetalk` render of `seconds` of speech."""
    from node.job import parse_job

    job = parse_job({"video_id": "bench", "audio": str(tmp / f"speech{seconds:g}.wav"),
                     "avatar": str(tmp / "base720.mp4"), "engine": "musetalk", "strategy": "lipsync"})
    t0 = time.perf_counter()
    result = renderer.render(job, tmp / f"out-{os.getpid()}.mp4")
    assert result.status == "succeeded", result.as_dict()
    return time.perf_counter() - t0


def child(args) -> None:
    """A warm render process: a short render first (loads, opens the prepared avatar), then the
    measured one; prints its peak RSS."""
    from node.engines import build_local_engines
    from node.pipeline import Renderer

    tmp = Path(args.tmp)
    settings = cpu_settings(tmp)
    renderer = Renderer(settings, engines=build_local_engines(settings) | {"musetalk": make_engine(settings)})
    render(renderer, tmp, 2.0)
    wall = render(renderer, tmp, args.speech)
    print(json.dumps({"wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_child(tmp: Path, speech: float) -> dict:
    cmd = [sys.executable, __file__, "--child", "--tmp", str(tmp), "--speech", str(speech)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "LOG_LEVEL": "WARNING"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_section(args) -> None:
    import torch

    from node.avatars import BaseVideo, resolve_avatar
    from node.engines import build_local_engines
    from node.engines.base import Speech
    from node.media import probe
    from node.pipeline import Renderer

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_cpu_inputs(tmp, args.base_seconds, [args.seconds, args.long_seconds])
        settings = cpu_settings(tmp)
        engine = make_engine(settings)
        path = tmp / "base720.mp4"
        base = BaseVideo.open(resolve_avatar(str(path)), probe(path).video, settings.avatar_cache_dir)
        engine.load()
        t0 = time.perf_counter()
        engine.prepare(base)
        prepare_ms = (time.perf_counter() - t0) * 1000 / len(base)
        batch = settings.batch_size_for("musetalk")[0]
        wav = tmp / f"speech{args.seconds:g}.wav"
        samples = speech_samples(args.seconds)
        speech = Speech(wav, samples, len(samples) / 16000, "upload")
        figures = stage_figures(engine, base, speech, batch, settings)
        renderer = Renderer(settings, engines=build_local_engines(settings) | {"musetalk": engine})
        render(renderer, tmp, 2.0)  # warm: first torch calls, the prepared avatar opened
        frames = round(args.seconds * FPS)
        warm_ms = render(renderer, tmp, args.seconds) * 1000 / frames
        inner = {k: v * 1000 / frames for k, v in engine.last_stage_s.items()}
        short = run_child(tmp, args.seconds)
        long = run_child(tmp, args.long_seconds)
    print(f"== CPU, reduced UNet/VAE: base=1280x720 {args.base_seconds:g}s speech={args.seconds:g}s "
          f"batch={batch} threads={torch.get_num_threads()}")
    print(f"prepare_ms={prepare_ms:.1f} (per base frame, cold)")
    for key in ("windows_ms", "unet_ms", "decode_ms", "blend_ms", "encode_ms"):
        print(f"{key}={figures[key]:.2f}")
    print(f"node_warm_ms={warm_ms:.2f}  (inside the render: " +
          ", ".join(f"{k} {v:.2f}" for k, v in inner.items()) + ")")
    print(f"warm_vs_unet_decode={warm_ms / (figures['unet_ms'] + figures['decode_ms']):.2f}x")
    print(f"peak_rss_mb_short={short['peak_rss_mb']:.0f} ({args.seconds:g}s)")
    print(f"peak_rss_mb_long={long['peak_rss_mb']:.0f} ({args.long_seconds:g}s)")
    print(f"rss_long_vs_short={long['peak_rss_mb'] / short['peak_rss_mb']:.2f}x")


# --- GPU -----------------------------------------------------------------------------------------


class MemoryBase:
    """A base video held in memory (the GPU machine has no ffmpeg): BaseVideo's reading API."""

    def __init__(self, frames: np.ndarray, key: str):
        from node.avatars import BaseVideo

        self._frames, self.key = frames, key
        self.frame_count, self.height, self.width = frames.shape[:3]
        self.fps = FPS
        self.source = type("Source", (), {"name": key})()
        self._pingpong = BaseVideo.pingpong_indices

    def __len__(self) -> int:
        return self.frame_count

    def take(self, indices) -> np.ndarray:
        return self._frames[np.asarray(indices, dtype=np.int64).reshape(-1)]

    def pingpong_indices(self, count: int, start: int = 0) -> np.ndarray:
        return self._pingpong(self, count, start)


def gpu_section(args) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    from models.musetalk import PositionalEncoding
    from node.config import Settings
    from node.engines.base import Speech
    from tests.checkpoints import load_config

    t_start = time.perf_counter()
    sync = torch.cuda.synchronize
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "weights").mkdir()
        build_weights(tmp / "weights", full=True)
        settings = Settings(_env_file=None, weights_dir=tmp / "weights", avatar_cache_dir=tmp / "cache",
                            torch_device="cuda")
        engine = make_engine(settings)
        # load() without the 3.4 GB unet.pth: the same models, the UNet randomly initialised in place
        from models.musetalk import load_vae
        from models.musetalk.audio import WhisperFeatures
        from node.device import choose_placement

        engine._placement = placement = choose_placement("cuda")
        dtype = engine.dtype
        engine._whisper = WhisperFeatures(tmp / "weights/whisper", device="cuda", dtype=dtype)
        engine._vae = load_vae(tmp / "weights/sd-vae", device="cuda", dtype=dtype)
        engine._pe = PositionalEncoding().cuda()
        config = {k: v for k, v in load_config("musetalkV15_musetalk").items() if not k.startswith("_")}
        with torch.device("cuda"):
            engine._unet = UNet2DConditionModel(**config).to(dtype).eval().requires_grad_(False)
        print(f"== GPU {torch.cuda.get_device_name()} ({placement.reason}); full UNet "
              f"{sum(p.numel() for p in engine._unet.parameters()) / 1e6:.0f}M params; setup "
              f"{time.perf_counter() - t_start:.0f}s", flush=True)

        rng = np.random.default_rng(0)
        canvas = np.full((50, CANVAS[1], CANVAS[0], 3), (112, 96, 80), np.uint8)
        canvas += rng.integers(0, 16, canvas.shape, dtype=np.uint8)
        base = MemoryBase(canvas, "gpu-bench")
        t0 = time.perf_counter()
        avatar = engine.prepare(base)
        print(f"prepare_ms={(time.perf_counter() - t0) * 1000 / len(base):.1f} per base frame "
              f"(S3FD stub, BiSeNet, VAE encode)", flush=True)
        seconds = args.gpu_seconds
        samples = speech_samples(seconds)
        speech = Speech(tmp / "none.wav", samples, seconds, "upload")
        frame_count = round(seconds * FPS)
        from node.engines.musetalk import AudioWindows

        windows_s = timed(lambda: AudioWindows(engine._whisper, samples, FPS), 2, sync)
        print(f"windows_ms={windows_s * 1000 / frame_count:.3f} per frame ({seconds:g}s of speech)")
        audio = AudioWindows(engine._whisper, samples, FPS)
        for batch in args.batches:
            idx = np.arange(batch) % len(avatar)
            latents = engine._latents(avatar, idx)
            ctx = audio(np.arange(batch))
            unet_s = timed(lambda lat=latents, c=ctx: engine._denoise(lat, c), 5, sync)
            pred = engine._denoise(latents, ctx)
            decode_s = timed(lambda p=pred: engine._vae.decode_bgr(p), 5, sync)

            def run_engine(batch=batch):
                return sum(len(b) for b in engine.frames(base, speech, frame_count, batch))

            run_engine()  # warm
            sync()
            t0 = time.perf_counter()
            frames = run_engine()
            sync()
            e2e = frames / (time.perf_counter() - t0)
            unet_fps, decode_fps = batch / unet_s, batch / decode_s
            print(f"batch={batch:<3d} unet_fps={unet_fps:.0f} decode_fps={decode_fps:.0f} "
                  f"unet+decode_fps={1 / (1 / unet_fps + 1 / decode_fps):.0f} engine_fps={e2e:.0f} "
                  f"(frames into a counting sink)", flush=True)
        if time.perf_counter() - t_start < args.gpu_budget_s:
            try:
                decoder = engine._vae.vae.decoder
                engine._vae.vae.decoder = torch.compile(decoder)
                for batch in (32, 64):
                    idx = np.arange(batch) % len(avatar)
                    pred = engine._denoise(engine._latents(avatar, idx), audio(np.arange(batch)))
                    t0 = time.perf_counter()
                    engine._vae.decode_bgr(pred)
                    sync()
                    compile_s = time.perf_counter() - t0
                    decode_s = timed(lambda p=pred: engine._vae.decode_bgr(p), 5, sync)
                    print(f"compiled decoder batch={batch}: decode_fps={batch / decode_s:.0f} "
                          f"(compile {compile_s:.0f}s)", flush=True)
            except Exception as e:  # noqa: BLE001 - a bench reports, it does not fail on an optional path
                print(f"compiled decoder: failed: {type(e).__name__}: {e}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--long-seconds", type=float, default=60.0)
    ap.add_argument("--base-seconds", type=float, default=2.0)
    ap.add_argument("--gpu-only", action="store_true")
    ap.add_argument("--gpu-seconds", type=float, default=20.0)
    ap.add_argument("--gpu-budget-s", type=float, default=240.0, help="skip the compile step past this")
    ap.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[8, 32, 64])
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--tmp")
    ap.add_argument("--speech", type=float)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if not args.gpu_only:
        cpu_section(args)
    import torch

    if torch.cuda.is_available():
        gpu_section(args)
    else:
        print("== GPU: no CUDA device here; skipped")


if __name__ == "__main__":
    main()
