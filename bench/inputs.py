"""Inputs the engine benches share: a 720p base video (the demo avatar on a canvas) whose face box
is known, and speech-like audio, so the figures of both engines come from the same material."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CANVAS = (1280, 720)
DEMO_OFFSET = (448, 168)  # where the 384x384 demo sits on the canvas (centred)


def demo_box() -> tuple[int, int, int, int]:
    """The demo avatar's face box (demo.json) on the 720p canvas."""
    face = json.loads((REPO / "node/assets/avatars/demo.json").read_text())["face_box"]
    return (face[0] + DEMO_OFFSET[0], face[1] + DEMO_OFFSET[1], face[2] + DEMO_OFFSET[0], face[3] + DEMO_OFFSET[1])


def make_base720(path: Path, seconds: float) -> Path:
    """The demo avatar looped for `seconds`, padded onto a 1280x720 canvas, as H.264."""
    from node.media import ffmpeg_binary

    demo = REPO / "node" / "assets" / "avatars" / "demo.mp4"
    x, y = DEMO_OFFSET
    subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-stream_loop", "-1", "-i", str(demo),
                    "-t", str(seconds), "-vf", f"pad={CANVAS[0]}:{CANVAS[1]}:{x}:{y}:color=0x506070,format=yuv420p",
                    "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", str(path)], check=True)
    return path


def speech_samples(seconds: float, seed: int = 0) -> np.ndarray:
    """16 kHz float32 speech-like audio: a voiced tone with noise, switched on and off 3 times a second."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    syllables = (np.sin(2 * np.pi * 3.0 * t) > -0.3).astype(np.float32)
    voice = np.sin(2 * np.pi * 140 * t) + 0.3 * rng.standard_normal(t.size)
    return (0.3 * voice * syllables).astype(np.float32)


def fixed_detector(box):
    """A face detector that finds `box` (canvas pixels) in every frame, at whatever scale the frames
    come (the engines detect on frames scaled down to 640 px): random S3FD weights find no face."""
    def detect(frames):
        scale = frames.shape[2] / CANVAS[0]
        return [[v * scale for v in box]] * len(frames)
    return detect
