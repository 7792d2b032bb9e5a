"""Per-avatar face preparation, computed once and cached: boxes, smoothing, generator crops.

Like segment-anything's `set_image`: the expensive part (face detection on every base frame)
runs once per avatar and detector, then every job on that avatar only reads the cache.

    FaceTrack.boxes     (N, 4) int32 x1, y1, x2, y2 in base-video pixels (padded, smoothed, clipped)
    FaceTrack.has_face  (N,) bool; frames without a face pass through unchanged
    FaceTrack.crops     (N, 96, 96, 3) uint8 BGR, the generator's face input per base frame
    FaceTrack.cache_hit whether it was read from the cache (the job reports `avatar_cache`)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from node.avatars import BaseVideo

log = logging.getLogger(__name__)

#: Bumped when anything below changes what is cached.
TRACK_VERSION = 1
#: Wav2Lip's generator input side, pixels.
CROP_SIZE = 96
#: Official default --pads (top, bottom, left, right): 10 px more chin.
PADS = (0, 10, 0, 0)
#: Detection runs on frames scaled so the longer side is at most this; S3FD's smallest anchor is
#: 16 px, so a face of >= 48 px after scaling is still found reliably.
DETECT_MAX_SIDE = 640
MIN_FACE_PX_AFTER_SCALING = 48
#: Frames per detector batch, and the centred moving-average window for box smoothing (frames).
DETECT_BATCH = 4
SMOOTH_WINDOW = 5

#: (N, H, W, 3) uint8 BGR frames -> one (x1, y1, x2, y2) or None per frame.
FaceDetector = Callable[[np.ndarray], list]


@dataclass(frozen=True)
class FaceTrack:
    boxes: np.ndarray
    has_face: np.ndarray
    crops: np.ndarray
    cache_hit: bool = field(default=False, compare=False)

    @property
    def faceless_frames(self) -> int:
        return int((~self.has_face).sum())


def s3fd_identity(weights_path: Path) -> str:
    """The key of tracks detected with the S3FD file at `weights_path` (its size and mtime): the
    Wav2Lip engine and the sync scorer share an avatar's track through it."""
    stat = Path(weights_path).stat()
    return f"s3fd:{stat.st_size}:{stat.st_mtime_ns}"


_S3FD_NETS: dict[tuple[str, str], object] = {}
_S3FD_LOCK = threading.Lock()


def s3fd_detector(weights_path: Path, device: str) -> FaceDetector:
    """A FaceDetector over the S3FD file at `weights_path`, loaded once per process and device:
    the Wav2Lip engine, the MuseTalk engine and the sync scorer share one network (loaded only when
    an avatar needs detecting, so a warm node never loads it)."""
    from models.face.s3fd import best_boxes, detect, load_s3fd

    key = (s3fd_identity(weights_path), str(device))
    with _S3FD_LOCK:
        if key not in _S3FD_NETS:
            _S3FD_NETS[key] = load_s3fd(weights_path, device)
        net = _S3FD_NETS[key]
    return lambda frames: best_boxes(detect(net, frames))


def track_path(cache_dir: Path, base: BaseVideo, detector_id: str) -> Path:
    params = f"v{TRACK_VERSION}:{PADS}:{DETECT_MAX_SIDE}:{SMOOTH_WINDOW}:{CROP_SIZE}:{detector_id}"
    return Path(cache_dir) / base.key / f"face-track-{hashlib.sha256(params.encode()).hexdigest()[:16]}.npz"


def load_or_prepare(base: BaseVideo, detector: Callable[[], FaceDetector], detector_id: str,
                    cache_dir: Path) -> FaceTrack:
    """The cached track for this avatar and detector, computing and storing it on a miss.

    `detector` is a factory, called only on a miss, so a warm node never loads the detector."""
    path = track_path(cache_dir, base, detector_id)
    if path.is_file():
        try:
            with np.load(path) as data:
                return FaceTrack(data["boxes"], data["has_face"], data["crops"], cache_hit=True)
        except (OSError, ValueError, KeyError) as e:  # a torn or foreign file: rebuild it
            log.warning("face track cache %s unreadable (%s); rebuilding", path.name, e)
    track = prepare_face_track(base, detector())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, boxes=track.boxes, has_face=track.has_face, crops=track.crops)
    os.replace(tmp, path)
    (path.with_suffix(".json")).write_text(json.dumps(
        {"frames": len(base), "faceless_frames": track.faceless_frames, "detector": detector_id}))
    return track


def prepare_face_track(base: BaseVideo, detect: FaceDetector) -> FaceTrack:
    n, w, h = len(base), base.width, base.height
    raw = np.zeros((n, 4), np.float64)
    found = np.zeros(n, bool)
    for start in range(0, n, DETECT_BATCH):
        for k, box in enumerate(detect_scaled(base.take(range(start, min(n, start + DETECT_BATCH))), detect)):
            if box is not None:
                raw[start + k], found[start + k] = box, True
    boxes = pad_and_clip(_smooth(raw, found), w, h)
    valid = found & (boxes[:, 2] - boxes[:, 0] >= 2) & (boxes[:, 3] - boxes[:, 1] >= 2)
    crops = np.zeros((n, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    # A second read of the frames: crops need the smoothed boxes, i.e. their neighbours'
    # detections, and holding every frame until then would tie memory to the video's length.
    for start in range(0, n, DETECT_BATCH):
        frames = base.take(range(start, min(n, start + DETECT_BATCH)))
        for k, frame in enumerate(frames):
            i = start + k
            if valid[i]:
                x1, y1, x2, y2 = boxes[i]
                crops[i] = cv2.resize(frame[y1:y2, x1:x2], (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
    if not valid.any():
        log.warning("no face found in any frame of avatar %s: its frames will pass through", base.source.name)
    return FaceTrack(boxes.astype(np.int32), valid, crops)


def detect_scaled(frames: np.ndarray, detect: FaceDetector) -> list:
    """One box (x1, y1, x2, y2) in full-frame pixels, or None, per frame (N, H, W, 3) BGR.

    Detection runs on frames scaled to DETECT_MAX_SIDE (S3FD costs grow with the pixel count), and
    again at full size for a frame whose face is too small once scaled."""
    h, w = frames.shape[1:3]
    scale = min(1.0, DETECT_MAX_SIDE / max(w, h))
    if scale == 1.0:
        return list(detect(frames))
    small = np.stack([cv2.resize(f, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
                      for f in frames])
    out = []
    for k, box in enumerate(detect(small)):
        if box is not None and min(box[2] - box[0], box[3] - box[1]) < MIN_FACE_PX_AFTER_SCALING:
            box = detect(frames[k:k + 1])[0]  # too small once scaled: look at full resolution
        elif box is not None:
            box = [v / scale for v in box]
        out.append(box)
    return out


def _smooth(raw: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Centred moving average over neighbouring frames that have a face (the official window
    looks only forward and truncates, which the Wav2Lip README blames for doubled mouths)."""
    half = SMOOTH_WINDOW // 2
    out = raw.copy()
    for i in np.flatnonzero(found):
        lo, hi = max(0, i - half), min(len(raw), i + half + 1)
        neighbours = found[lo:hi]
        out[i] = raw[lo:hi][neighbours].mean(axis=0)
    return out


def pad_and_clip(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    top, bottom, left, right = PADS
    x1 = np.clip(np.round(boxes[:, 0]) - left, 0, width)
    y1 = np.clip(np.round(boxes[:, 1]) - top, 0, height)
    x2 = np.clip(np.round(boxes[:, 2]) + right, 0, width)
    y2 = np.clip(np.round(boxes[:, 3]) + bottom, 0, height)
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.int64)
