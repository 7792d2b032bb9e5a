"""Encoder throughput, and what our frame pipe costs over plain ffmpeg, measured in one run.

    python bench/encoder_fps.py [--seconds 10] [--height 720] [--preset medium]

Prints:
  node_encoder_fps        frames/s through VideoEncoder (pipe + writer thread + ffmpeg)
  plain_ffmpeg_fps        frames/s for ffmpeg encoding the same raw frames from a file
  node_vs_plain           node_encoder_fps / plain_ffmpeg_fps (1.0 = the pipe costs nothing)
  demo_render_s, demo_realtime_factor   `render` of the bundled demo through strategy 3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.avatars import resolve_avatar  # noqa: E402
from node.config import Settings  # noqa: E402
from node.encoder import VideoEncoder, codec_options  # noqa: E402
from node.job import parse_job  # noqa: E402
from node.media import ffmpeg_binary, iter_video_frames, probe, write_wav  # noqa: E402
from node.pipeline import Renderer  # noqa: E402

FPS = 25


def source_frames(width: int, height: int, count: int) -> np.ndarray:
    """Real content: the demo avatar scaled to the bench size, looped to `count` frames."""
    src = resolve_avatar("demo")
    info = probe(src.path).video
    frames = np.concatenate(list(iter_video_frames(src.path, info.width, info.height)))
    scaled = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_LANCZOS4) for f in frames])
    return scaled[np.arange(count) % len(scaled)]


def bench_node(frames: np.ndarray, audio: Path, out: Path, preset: str, batch: int = 16) -> float:
    n, h, w, _ = frames.shape
    t0 = time.perf_counter()
    enc = VideoEncoder(out, w, h, Fraction(FPS), audio, n / FPS, preset=preset)
    for i in range(0, n, batch):
        enc.write(frames[i:i + batch])
    enc.close()
    return n / (time.perf_counter() - t0)


def bench_plain(frames: np.ndarray, audio: Path, out: Path, preset: str, tmp: Path) -> float:
    n, h, w, _ = frames.shape
    raw = tmp / "frames.raw"
    frames.tofile(raw)
    opts = codec_options("libx264", 23, preset)
    cmd = [ffmpeg_binary(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}",
           "-framerate", str(FPS), "-i", str(raw), "-i", str(audio), "-vf", "format=yuv420p",
           "-c:v", "libx264", "-preset", preset, "-crf", "23", "-profile:v", "high", "-level:v", "4.0",
           "-x264-params", opts["x264-params"], "-c:a", "aac", "-movflags", "+faststart",
           "-t", f"{n / FPS:.6f}", str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return n / (time.perf_counter() - t0)


def bench_demo(tmp: Path) -> tuple[float, float]:
    settings = Settings(_env_file=None, temp_dir=tmp / "t", avatar_cache_dir=tmp / "c",
                        weights_dir=tmp / "w", video_encoder="libx264")
    job = parse_job({"video_id": "bench", "text": "¡Jo, jo, jo! Hola Lucía. Este año te has portado "
                     "muy bien. ¡Feliz Navidad!"})
    renderer = Renderer(settings)
    t0 = time.perf_counter()
    result = renderer.render(job, tmp / "demo.mp4")
    wall = time.perf_counter() - t0
    return wall, result.duration_s / wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--preset", default="medium")
    args = ap.parse_args()
    width = args.height * 16 // 9 // 2 * 2
    count = int(args.seconds * FPS)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        audio = tmp / "a.wav"
        t = np.arange(int(args.seconds * 16000)) / 16000
        write_wav(audio, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
        frames = source_frames(width, args.height, count)
        bench_node(frames[:FPS], audio, tmp / "warm.mp4", args.preset)  # burn-in
        plain = bench_plain(frames, audio, tmp / "plain.mp4", args.preset, tmp)
        node = bench_node(frames, audio, tmp / "node.mp4", args.preset)
        demo_wall, demo_rtf = bench_demo(tmp)
    print(f"frames={count} size={width}x{args.height} preset={args.preset}")
    print(f"node_encoder_fps={node:.1f}")
    print(f"plain_ffmpeg_fps={plain:.1f}")
    print(f"node_vs_plain={node / plain:.2f}x")
    print(f"demo_render_s={demo_wall:.2f}")
    print(f"demo_realtime_factor={demo_rtf:.2f}x")


if __name__ == "__main__":
    main()
