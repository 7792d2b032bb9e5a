#!/usr/bin/env python3
"""Build the bundled demo avatar: node/assets/avatars/demo.mp4 + demo.json.

This is an offline asset-generation tool. It is NOT part of the runtime and
must never be imported by the node.

Source photo
    NASA portrait of astronaut Eileen Collins, shipped with scikit-image as
    ``skimage.data.astronaut()`` (512x512 RGB). Work of the US federal
    government (NASA), public domain. See node/assets/avatars/PROVENANCE.md.

What it does
    1. Loads the 512x512 photo, converts RGB -> BGR.
    2. Takes a 320x320 head-and-shoulders window (source x 64..384, y 0..320),
       centred horizontally on the face, and maps it to 384x384 (x1.2).
    3. Adds a slow "breathing" idle motion: a 1.5 % zoom about the face centre,
       a 1.5 px upward rise and a ~0.65 px side-to-side sway. Each term is built
       on a raised cosine of the clip phase, so frame 0 and the last frame are
       both exactly at rest with zero velocity -> forward loops and ping-pong
       (back-and-forth) loops turn around smoothly. Each frame is produced by a
       single cv2.warpAffine (INTER_LANCZOS4) straight from the source photo.
       Nothing is drawn on the face.
    4. Pipes the raw bgr24 frames into ffmpeg (libx264 High, yuv420p, CRF 20,
       preset slow, +faststart, no audio). No intermediate image files.
    5. Writes demo.json with the face/mouth boxes at rest, in video pixels.
       The boxes were picked by eye on the source photo (cross-checked against
       OpenCV's haarcascade_frontalface_default, which finds the face at
       x177 y66 w95 h95 but stops above the chin) and are mapped through the
       same crop/scale as the video.

Run (throwaway venv; do not install these into the project venv):
    python3 -m venv /tmp/avatar-venv
    /tmp/avatar-venv/bin/pip install scikit-image numpy "opencv-python-headless<5"
    /tmp/avatar-venv/bin/python scripts/make_demo_avatar.py [--out-dir DIR] \
        [--debug-png /tmp/demo_boxes.png]

Needs: scikit-image (photo), numpy, opencv-python-headless (warpAffine), and
ffmpeg/ffprobe with libx264 on PATH (system /usr/bin/ffmpeg is fine).
Last run with scikit-image 0.26.0, numpy 2.4.6, opencv-python-headless 4.14.0,
ffmpeg 5.1.9 (Debian 12). "<5" only matters for the Haar cross-check:
OpenCV 5.x wheels no longer ship cv2.CascadeClassifier / cv2.data.
Output is deterministic (no randomness; SEED is fixed anyway for any future
jitter, and x264 is run single-threaded with bitexact flags).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

SEED = 1234  # fixed; the current motion is fully analytic and uses no randomness

FPS = 25
N_FRAMES = 75  # 3.0 s
OUT_W = OUT_H = 384

# Head-and-shoulders window in source (512x512) pixels.
CROP_X0, CROP_Y0, CROP_SIZE = 64, 0, 320
SCALE0 = OUT_W / CROP_SIZE  # 1.2

# Boxes in SOURCE pixel coordinates, checked visually on a zoomed, gridded
# render of the photo: face = hairline/forehead to chin, cheek to cheek;
# mouth = the (smiling) lips with a few px of margin.
FACE_BOX_SRC = (178, 70, 272, 180)
MOUTH_BOX_SRC = (198, 135, 250, 156)
FACE_CENTRE_SRC = (225.0, 120.0)  # zoom pivot (around the nose)

# Idle motion amplitudes.
ZOOM_AMP = 0.015  # +1.5 % scale at the peak of the "breath"
RISE_PX = 1.5  # upward drift at the peak (output px)
SWAY_PX = 1.0  # sideways sway (output px), one way then the other

# The clip is almost static, so x264 spends nearly all bits on the first
# I-frame: CRF 28 gives ~29 KB but visibly smooths away skin texture; CRF 20
# keeps the photo's texture at ~115 KB (PSNR vs. the raw frames 36.4 dB vs 33.9).
CRF = 20

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "node" / "assets" / "avatars"


def load_photo() -> np.ndarray:
    from skimage import data

    rgb = data.astronaut()
    assert rgb.shape == (512, 512, 3), rgb.shape
    return np.ascontiguousarray(rgb[:, :, ::-1])  # -> BGR


def src_to_out(x: float, y: float) -> tuple[float, float]:
    return (x - CROP_X0) * SCALE0, (y - CROP_Y0) * SCALE0


def box_to_out(box: tuple[int, int, int, int]) -> list[int]:
    x1, y1 = src_to_out(box[0], box[1])
    x2, y2 = src_to_out(box[2], box[3])
    return [int(round(x1)), int(round(y1)), int(round(x2)), int(round(y2))]


def motion(i: int) -> tuple[float, float, float]:
    """(scale, dx, dy) for frame i; rest with zero velocity at both ends."""
    t = i / (N_FRAMES - 1)
    breath = 0.5 * (1.0 - math.cos(2.0 * math.pi * t))  # 0 -> 1 -> 0
    scale = 1.0 + ZOOM_AMP * breath
    dy = -RISE_PX * breath
    dx = SWAY_PX * math.sin(2.0 * math.pi * t) * breath
    return scale, dx, dy


def affine(i: int) -> np.ndarray:
    """Forward affine source -> output for frame i."""
    s, dx, dy = motion(i)
    cx, cy = src_to_out(*FACE_CENTRE_SRC)
    k = SCALE0 * s
    # out = c + s * (SCALE0 * (src - crop0) - c) + d
    tx = cx * (1.0 - s) + dx - k * CROP_X0
    ty = cy * (1.0 - s) + dy - k * CROP_Y0
    return np.array([[k, 0.0, tx], [0.0, k, ty]], dtype=np.float64)


def render(photo: np.ndarray, i: int) -> np.ndarray:
    return cv2.warpAffine(
        photo,
        affine(i),
        (OUT_W, OUT_H),
        flags=cv2.INTER_LANCZOS4,
        borderMode=cv2.BORDER_REFLECT101,  # never actually reached (see check)
    )


def check_no_border() -> None:
    """Make sure the visible source window always stays inside the photo."""
    for i in range(N_FRAMES):
        m = np.vstack([affine(i), [0, 0, 1]])
        inv = np.linalg.inv(m)
        corners = np.array([[0, 0, 1], [OUT_W, 0, 1], [0, OUT_H, 1], [OUT_W, OUT_H, 1]], float)
        src = corners @ inv.T
        if src[:, :2].min() < 0 or src[:, :2].max() > 512:
            raise SystemExit(f"frame {i}: window leaves the photo: {src[:, :2].tolist()}")


def encode(photo: np.ndarray, out_mp4: Path) -> None:
    ffmpeg = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
    cmd = [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{OUT_W}x{OUT_H}",
        "-framerate", str(FPS), "-i", "pipe:",
        "-an",
        "-c:v", "libx264", "-profile:v", "high", "-preset", "slow", "-crf", str(CRF),
        "-pix_fmt", "yuv420p", "-threads", "1",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
        "-movflags", "+faststart",
        str(out_mp4),
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    for i in range(N_FRAMES):
        proc.stdin.write(render(photo, i).tobytes())
    proc.stdin.close()
    if proc.wait() != 0:
        raise SystemExit(f"ffmpeg failed ({proc.returncode})")


def skimage_version() -> str:
    import skimage

    return skimage.__version__


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--debug-png", type=Path, help="write frame 0 with face/mouth boxes drawn")
    args = ap.parse_args(argv)

    np.random.seed(SEED)
    check_no_border()
    photo = load_photo()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out_mp4 = args.out_dir / "demo.mp4"
    encode(photo, out_mp4)

    face_box = box_to_out(FACE_BOX_SRC)
    mouth_box = box_to_out(MOUTH_BOX_SRC)
    meta = {
        "name": "demo",
        "description": (
            "Head-and-shoulders crop of NASA astronaut Eileen Collins' official portrait "
            "with a slow, subtle zoom/drift 'breathing' idle motion; starts and ends at rest "
            "so it loops and ping-pongs smoothly. Generated by scripts/make_demo_avatar.py."
        ),
        "source": (
            f"skimage.data.astronaut() from scikit-image {skimage_version()} "
            "(NASA portrait of astronaut Eileen Collins, NASA Great Images database, https://flic.kr/p/r9qvLn)"
        ),
        "licence": "public domain",
        "fps": FPS,
        "width": OUT_W,
        "height": OUT_H,
        "frames": N_FRAMES,
        "face_box": face_box,
        "mouth_box": mouth_box,
    }
    (args.out_dir / "demo.json").write_text(json.dumps(meta, indent=2) + "\n")

    if args.debug_png:
        img = render(photo, 0)
        cv2.rectangle(img, tuple(face_box[:2]), tuple(face_box[2:]), (0, 255, 0), 1)
        cv2.rectangle(img, tuple(mouth_box[:2]), tuple(mouth_box[2:]), (0, 0, 255), 1)
        cv2.imwrite(str(args.debug_png), img)

    print(f"wrote {out_mp4} ({out_mp4.stat().st_size / 1024:.1f} KiB), face_box={face_box}, mouth_box={mouth_box}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
