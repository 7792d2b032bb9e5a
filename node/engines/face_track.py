"""Per-avatar face preparation, computed once and cached: boxes, smoothing, generator crops.

Like segment-anything's `set_image`: the expensive part (finding the face in every base frame)
runs once per avatar and detector, then every job on that avatar only reads the cache.

The detector runs on keyframes only (`models.face.tracking`: the first frame, every
KEYFRAME_INTERVAL frames, the last, cuts, re-appearances and wherever the flow loses the face);
the frames between follow the face by optical flow, a few milliseconds each instead of a
detector call (~1.1 s at 640 px on a CPU). `track_faces` is that pass, shared with the MuseTalk
preparation; on a keyframe whose face size is known it detects on a frame scaled so the face is
KEYFRAME_FACE_PX, one frame at a time (which also bounds the detector's activation memory).

    FaceTrack.boxes     (N, 4) int32 x1, y1, x2, y2 in base-video pixels (padded, smoothed, clipped)
    FaceTrack.has_face  (N,) bool; frames without a face pass through unchanged
    FaceTrack.crops     (N, 96, 96, 3) uint8 BGR, the generator's face input per base frame
    FaceTrack.reason    (N,) uint8: tracking.TRACKED (followed, or faceless carried over) or why the
                        detector ran on that frame (FIRST, SCHEDULED, CUT, LOST, MOTION, CHANGED)
    FaceTrack.segment   (N,) int32: frames of one continuous track (-1 faceless); smoothing never
                        crosses a segment boundary, so a cut is never blurred into its neighbours
    FaceTrack.raw_boxes (N, 4) float32 the tracker's boxes before smoothing and padding
    FaceTrack.cache_hit whether it was read from the cache (the job reports `avatar_cache`)
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from models.face import tracking
from node.avatars import BaseVideo

log = logging.getLogger(__name__)

#: Bumped when anything below changes what is cached (2: keyframe detection + tracking).
TRACK_VERSION = 2
#: Wav2Lip's generator input side, pixels.
CROP_SIZE = 96
#: Official default --pads (top, bottom, left, right): 10 px more chin.
PADS = (0, 10, 0, 0)
#: Detection runs on frames scaled so the longer side is at most this; S3FD's smallest anchor is
#: 16 px, so a face of >= 48 px after scaling is still found reliably.
DETECT_MAX_SIDE = 640
MIN_FACE_PX_AFTER_SCALING = 48
#: On a keyframe where the face's size is known (the tracked box), the frame is scaled so the
#: face's shorter side is this many pixels. S3FD's cost is proportional to the pixel count: a
#: 216 px face in 720p detects on a 379 x 213 frame instead of 640 x 360, 2.9x cheaper. 64 is
#: MIN_FACE_PX_AFTER_SCALING times the tracker's MAX_SCALE_CHANGE (1.25; a bigger zoom since the
#: last keyframe triggers a detection anyway), rounded up: the face is still >= 48 px there.
#: With no size known (the first frame, a cut, a re-appearance) a coarse look comes first, at
#: half of DETECT_MAX_SIDE, accepted when the face it finds is >= 48 px there (a talking head's
#: face is); else, as for any miss at a reduced scale, `detect_scaled` looks at DETECT_MAX_SIDE:
#: scaling never costs a face, a miss costs ~1.3x one standard detection.
#: Reduced frames keep KEYFRAME_MIN_SIDE pixels on their shorter side (some context around the face;
#: frames that small, e.g. 160 x 120, are detected as ever).
KEYFRAME_FACE_PX = 64
KEYFRAME_MIN_SIDE = 192
#: Frames read per batch in each pass, and the centred moving-average window for box smoothing.
DETECT_BATCH = 4
SMOOTH_WINDOW = 5

#: (N, H, W, 3) uint8 BGR frames -> one (x1, y1, x2, y2) or None per frame.
FaceDetector = Callable[[np.ndarray], list]


@dataclass(frozen=True)
class FaceTrack:
    boxes: np.ndarray
    has_face: np.ndarray
    crops: np.ndarray
    reason: np.ndarray | None = None
    segment: np.ndarray | None = None
    raw_boxes: np.ndarray | None = None
    cache_hit: bool = field(default=False, compare=False)

    @property
    def faceless_frames(self) -> int:
        return int((~self.has_face).sum())

    @property
    def detected_frames(self) -> int:
        return int((self.reason != tracking.TRACKED).sum()) if self.reason is not None else len(self.has_face)


class CountingDetector:
    """A FaceDetector that counts its calls and the frames it was shown (what a cold avatar cost)."""

    def __init__(self, detect: FaceDetector):
        self.detect, self.calls, self.frames = detect, 0, 0

    def __call__(self, frames: np.ndarray) -> list:
        self.calls += 1
        self.frames += len(frames)
        return self.detect(frames)


def s3fd_identity(weights_path: Path) -> str:
    """The key of tracks detected with the S3FD file at `weights_path` (its size and mtime): the
    Wav2Lip engine and the sync scorer share an avatar's track through it."""
    stat = Path(weights_path).stat()
    return f"s3fd:{stat.st_size}:{stat.st_mtime_ns}"


#: Held weakly: the network lives as long as some detector over it does (a preparation, a remote
#: video's sync scoring), then its 90 MB go back; a later cold avatar loads it again (~0.3 s).
_S3FD_NETS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_S3FD_LOCK = threading.Lock()


def s3fd_detector(weights_path: Path, device: str) -> FaceDetector:
    """A FaceDetector over the S3FD file at `weights_path`, loaded once per process and device
    while in use: the Wav2Lip engine, the MuseTalk engine and the sync scorer share one network
    (loaded only when an avatar needs detecting, so a warm node never loads it)."""
    from models.face.s3fd import best_boxes, detect, load_s3fd

    key = (s3fd_identity(weights_path), str(device))
    with _S3FD_LOCK:
        net = _S3FD_NETS.get(key)
        if net is None:
            net = _S3FD_NETS[key] = load_s3fd(weights_path, device)
    return lambda frames: best_boxes(detect(net, frames))


def release_freed_memory() -> None:
    """Give the heap pages freed since (the detector's activations) back to the system.

    glibc keeps freed heap memory for reuse instead of returning it, so after a preparation the
    process went on holding its peak (~400 MB at 720p) and the render that followed added its own
    on top: measured on a 10 s 720p avatar, the cold render's peak RSS fell from 1.53 GB to 1.15 GB
    with this and the weakly held network. No-op where the C library is not glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def track_path(cache_dir: Path, base: BaseVideo, detector_id: str) -> Path:
    params = (f"v{TRACK_VERSION}:{PADS}:{DETECT_MAX_SIDE}:{SMOOTH_WINDOW}:{CROP_SIZE}:{detector_id}:"
              f"t{tracking.TRACKER_VERSION}:{tracking.KEYFRAME_INTERVAL}:{KEYFRAME_FACE_PX}:{KEYFRAME_MIN_SIDE}")
    return Path(cache_dir) / base.key / f"face-track-{hashlib.sha256(params.encode()).hexdigest()[:16]}.npz"


def load_or_prepare(base: BaseVideo, detector: Callable[[], FaceDetector], detector_id: str,
                    cache_dir: Path) -> FaceTrack:
    """The cached track for this avatar and detector, computing and storing it on a miss.

    `detector` is a factory, called only on a miss, so a warm node never loads the detector."""
    path = track_path(cache_dir, base, detector_id)
    if path.is_file():
        try:
            with np.load(path) as data:
                return FaceTrack(data["boxes"], data["has_face"], data["crops"], data["reason"], data["segment"],
                                 data["raw_boxes"], cache_hit=True)
        except (OSError, ValueError, KeyError) as e:  # a torn or foreign file: rebuild it
            log.warning("face track cache %s unreadable (%s); rebuilding", path.name, e)
    detect = CountingDetector(detector())
    track = prepare_face_track(base, detect)
    calls, detect = detect.calls, None  # the last reference to the detector (and its network)
    release_freed_memory()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, boxes=track.boxes, has_face=track.has_face, crops=track.crops, reason=track.reason,
             segment=track.segment, raw_boxes=track.raw_boxes)
    os.replace(tmp, path)
    (path.with_suffix(".json")).write_text(json.dumps(
        {"frames": len(base), "faceless_frames": track.faceless_frames, "detector": detector_id,
         "detected_frames": track.detected_frames, "detector_calls": calls}))
    log.info("face track of %s: detector on %d of %d frames (%d calls)", base.source.name,
             track.detected_frames, len(base), calls)
    return track


def track_faces(base: BaseVideo, detect: FaceDetector) -> tracking.TrackedFaces:
    """Every base frame's face box (unsmoothed, unpadded), the detector run on keyframes only.

    One pass over the frames in order, DETECT_BATCH at a time; memory does not grow with the
    video beyond a few numbers per frame."""
    n = len(base)
    tracker = tracking.KeyframeTracker(n, base.width, base.height, keyframe_finder(detect))
    for start in range(0, n, DETECT_BATCH):
        for frame in base.take(range(start, min(n, start + DETECT_BATCH))):
            tracker.push(frame)
    return tracker.result()


def keyframe_finder(detect: FaceDetector) -> tracking.FindFace:
    """`find_face(frame, expected)` for the tracker: detection on one frame scaled down as far as
    the face allows (see KEYFRAME_FACE_PX), falling back to `detect_scaled` on a miss."""

    def find_face(frame: np.ndarray, expected) -> tuple | None:
        h, w = frame.shape[:2]
        standard = min(1.0, DETECT_MAX_SIDE / max(w, h))
        if expected is not None:
            side = min(expected[2] - expected[0], expected[3] - expected[1])
            reduced = KEYFRAME_FACE_PX / side if side > 0 else 1.0
        else:
            reduced = standard / 2
        scale = max(reduced, KEYFRAME_MIN_SIDE / min(w, h))
        if scale < 0.9 * standard:  # worth it: at least ~20 % fewer pixels
            small = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            box = detect(small[None])[0]
            if box is not None and min(box[2] - box[0], box[3] - box[1]) >= MIN_FACE_PX_AFTER_SCALING:
                sx, sy = small.shape[1] / w, small.shape[0] / h
                return (box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy)
        box = detect_scaled(frame[None], detect)[0]
        return None if box is None else tuple(float(v) for v in box)

    return find_face


def prepare_face_track(base: BaseVideo, detect: FaceDetector) -> FaceTrack:
    n, w, h = len(base), base.width, base.height
    faces = track_faces(base, detect)
    found = faces.has_face
    boxes = pad_and_clip(_smooth(faces.boxes, found, faces.segment, faces.detected), w, h)
    valid = found & (boxes[:, 2] - boxes[:, 0] >= 2) & (boxes[:, 3] - boxes[:, 1] >= 2)
    crops = np.zeros((n, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    # A second read of the frames: crops need the smoothed boxes, i.e. their neighbours' (and the
    # next keyframe's drift correction), and holding every frame until then would tie memory to
    # the video's length.
    for start in range(0, n, DETECT_BATCH):
        frames = base.take(range(start, min(n, start + DETECT_BATCH)))
        for k, frame in enumerate(frames):
            i = start + k
            if valid[i]:
                x1, y1, x2, y2 = boxes[i]
                crops[i] = cv2.resize(frame[y1:y2, x1:x2], (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
    if not valid.any():
        log.warning("no face found in any frame of avatar %s: its frames will pass through", base.source.name)
    return FaceTrack(boxes.astype(np.int32), valid, crops, faces.reason, faces.segment,
                     faces.boxes.astype(np.float32))


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


def _smooth(raw: np.ndarray, found: np.ndarray, segment: np.ndarray | None = None,
            detected: np.ndarray | None = None) -> np.ndarray:
    """Centred moving average of detected boxes over neighbouring detected frames (the official
    window looks only forward and truncates, which the Wav2Lip README blames for doubled mouths).

    Only detections are averaged, and only within their segment. Averaging is there for the
    detector's frame-to-frame jitter; a tracked box has none (it moves with the face's pixels,
    and keyframe corrections are already spread out as ramps), and averaging it would only make
    it lag a real head movement (on the synthetic 720p shake: 0.7 px worst before, 3.7 px after).
    So tracked frames, and a lone keyframe between them, keep their boxes; runs of detections (a
    face the flow cannot follow) are smoothed as before. Averaging across a cut would pull the
    boxes on both sides of it halfway towards the other shot's face."""
    half = SMOOTH_WINDOW // 2
    out = raw.copy()
    usable = found if detected is None else found & detected
    for i in np.flatnonzero(usable):
        lo, hi = max(0, i - half), min(len(raw), i + half + 1)
        neighbours = usable[lo:hi] if segment is None else usable[lo:hi] & (segment[lo:hi] == segment[i])
        out[i] = raw[lo:hi][neighbours].mean(axis=0)
    return out


def pad_and_clip(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    top, bottom, left, right = PADS
    x1 = np.clip(np.round(boxes[:, 0]) - left, 0, width)
    y1 = np.clip(np.round(boxes[:, 1]) - top, 0, height)
    x2 = np.clip(np.round(boxes[:, 2]) + right, 0, width)
    y2 = np.clip(np.round(boxes[:, 3]) + bottom, 0, height)
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.int64)
