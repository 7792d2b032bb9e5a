"""Per-avatar MuseTalk preparation, computed once and cached beside the Wav2Lip face track.

Like the official realtime mode's `prepare_material` (PIPELINES.md §4.7 #31), everything that
depends only on the base video is computed once per avatar and engine parameters, so a job runs
only whisper -> UNet -> decode -> blend -> encode. Per base frame i:

    S3FD box       presence, and the fallback box: `face_track.track_faces`, the Wav2Lip track's
                   mechanism (the detector on keyframes, optical flow in between), unsmoothed
    face box       DWPose landmarks through `landmark_box` (PIPELINES.md §4.1 #2-5), else the S3FD
                   box. DWPose runs on the detector's keyframes only: the landmark box is kept
                   relative to the S3FD box (its edges as fractions of that box's size from its
                   centre), which the tracked similarity moves and scales unchanged, and that
                   relation is interpolated between two keyframes of one segment. Why: DWPose costs
                   about what S3FD does per frame; the head's rigid motion is what the box must
                   follow, and the per-frame landmark box also followed the base video's own jaw
                   (replaced by the generated mouth anyway) and its landmark noise, which made the
                   crop, and so the pasted face, jitter by a few pixels
    paste box      `crop_face`'s box_used (the v1.5 +10 px chin margin); also the blend box
    latents        `encode_for_unet(crop, eps=0)`: the masked half and the reference, deterministic
    blend mask     `blend_mask(frame, paste box, parser, blur_ratio)`: the feathered parse mask over
                   the expanded square crop box, which may leave the frame

Cache layout, `<AVATAR_CACHE_DIR>/<base.key>/musetalk-<sha256(params)[:16]>/` (published by
renaming a finished temporary folder, so a reader never sees half a cache):

    meta.json         params, frame count, faceless count, box source, detector and DWPose calls,
                      written before the rename
    has_face.npy      bool (N,)
    box_source.npy    uint8 (N,): 0 no face, 1 S3FD box, 2 DWPose landmarks
    detect_reason.npy uint8 (N,): models.face.tracking.TRACKED, or why the detector ran there
    segment.npy       int32 (N,): continuous-track id (-1 faceless), see models.face.tracking
    boxes.npy         int32 (N, 4) paste boxes (x1, y1, x2, y2); zeros where faceless
    crop_boxes.npy    int32 (N, 4) blend crop boxes (cx-s, cy-s, cx+s, cy+s)
    latents.npy       float32 (N, 8, 32, 32), read memory-mapped; zeros where faceless
    mask_offsets.npy  int64 (N + 1,): frame i's mask is masks.u8[offsets[i]:offsets[i+1]],
    masks.u8          a (2s_i, 2s_i) uint8 square each (sizes differ per frame), memory-mapped

The 256 x 256 crops themselves are not stored: the latents are all a job needs from them.
Preparation reads the frames in batches and writes each result out as it goes, so its memory
does not grow with the video either.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from node.avatars import BaseVideo
from node.engines.face_track import CountingDetector, FaceDetector, detect_scaled, release_freed_memory, track_faces

log = logging.getLogger(__name__)

#: Bumped when anything below changes what is cached (2: keyframe detection + tracking).
PREP_VERSION = 2
#: Base frames per preparation batch (detector, VAE encoder): bounds preparation memory.
PREP_BATCH = 8
#: Box sources recorded per frame.
NO_FACE, FROM_S3FD, FROM_DWPOSE = 0, 1, 2
#: A face box narrower or shorter than this (pixels) counts as no face: nothing to crop.
MIN_BOX_PX = 2
LATENT_SHAPE = (8, 32, 32)


@dataclass(frozen=True)
class PrepTools:
    """What preparation runs, built only on a cache miss (a warm node never loads them)."""

    detect: FaceDetector  # (B, h, w, 3) uint8 BGR -> one (x1, y1, x2, y2) or None per frame
    landmarks: Callable[[np.ndarray], np.ndarray] | None  # frame BGR -> (68, 2) int32; None: S3FD only
    parser: object  # `.mask(image_rgb, mode)`, as models.musetalk.blending wants
    encode: Callable[[np.ndarray], np.ndarray]  # (B, 256, 256, 3) BGR -> (B, 8, 32, 32) float32
    blur_ratio: float


class PreparedAvatar:
    """A published cache folder, opened: small arrays in memory, latents and masks mapped."""

    def __init__(self, folder: Path, cache_hit: bool):
        self.folder, self.cache_hit = folder, cache_hit
        self.meta = json.loads((folder / "meta.json").read_text())
        self.has_face = np.load(folder / "has_face.npy")
        self.box_source = np.load(folder / "box_source.npy")
        self.boxes = np.load(folder / "boxes.npy")
        self.crop_boxes = np.load(folder / "crop_boxes.npy")
        self.latents = np.load(folder / "latents.npy", mmap_mode="r")
        self.mask_offsets = np.load(folder / "mask_offsets.npy")
        n = len(self.has_face)
        if not (len(self.boxes) == len(self.crop_boxes) == len(self.latents) == len(self.mask_offsets) - 1 == n):
            raise ValueError(f"inconsistent MuseTalk cache in {folder}")
        total = int(self.mask_offsets[-1])
        if (folder / "masks.u8").stat().st_size != total:
            raise ValueError(f"truncated masks.u8 in {folder}")
        # np.memmap refuses an empty file (an avatar with no face at all)
        self._masks = np.memmap(folder / "masks.u8", np.uint8, "r") if total else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.has_face)

    @property
    def faceless_frames(self) -> int:
        return int((~self.has_face).sum())

    def mask(self, i: int) -> np.ndarray:
        """Frame i's blend mask, uint8 (2s, 2s), read from the mapped file."""
        lo, hi = int(self.mask_offsets[i]), int(self.mask_offsets[i + 1])
        side = math.isqrt(hi - lo)
        return np.asarray(self._masks[lo:hi]).reshape(side, side)

    def box(self, i: int) -> tuple[int, int, int, int]:
        return tuple(int(v) for v in self.boxes[i])

    def crop_box(self, i: int) -> tuple[int, int, int, int]:
        return tuple(int(v) for v in self.crop_boxes[i])


def params_key(params: dict) -> str:
    return hashlib.sha256(json.dumps({"v": PREP_VERSION, **params}, sort_keys=True).encode()).hexdigest()[:16]


def cache_folder(cache_dir: Path, base: BaseVideo, params: dict) -> Path:
    return Path(cache_dir) / base.key / f"musetalk-{params_key(params)}"


def load_or_prepare(base: BaseVideo, tools: Callable[[], PrepTools], params: dict, cache_dir: Path) -> PreparedAvatar:
    """The cached preparation for this avatar and `params`, computing and publishing it on a miss.

    `params` identifies everything the result depends on (detector, DWPose file or none, VAE and
    parser weights, blur ratio, precision); `tools` is a factory called only on a miss."""
    folder = cache_folder(cache_dir, base, params)
    if (folder / "meta.json").is_file():
        try:
            return PreparedAvatar(folder, cache_hit=True)
        except (OSError, ValueError, KeyError) as e:  # torn or foreign: rebuild it
            log.warning("MuseTalk avatar cache %s unreadable (%s); rebuilding", folder.name, e)
            shutil.rmtree(folder, ignore_errors=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        summary = prepare_into(tmp, base, tools())
        release_freed_memory()  # the detector's and DWPose's activations, before the render
        (tmp / "meta.json").write_text(json.dumps({"params": params, **summary}, sort_keys=True))
        try:
            os.replace(tmp, folder)
        except OSError:  # another job published it first: theirs is as good
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PreparedAvatar(folder, cache_hit=False)


def prepare_into(folder: Path, base: BaseVideo, tools: PrepTools) -> dict:
    """Compute every frame's preparation into `folder`; returns the summary for meta.json."""
    from models.musetalk import crop_face
    from models.musetalk.blending import blend_mask

    n = len(base)
    detect = CountingDetector(tools.detect)
    faces = track_faces(base, detect)  # pass 1: boxes (the detector on keyframes only)
    boxes_in, source = place_face_boxes(base, faces, tools.landmarks)
    has_face = np.zeros(n, bool)
    boxes = np.zeros((n, 4), np.int32)
    crop_boxes = np.zeros((n, 4), np.int32)
    offsets = np.zeros(n + 1, np.int64)
    latents = np.lib.format.open_memmap(folder / "latents.npy", "w+", np.float32, (n, *LATENT_SHAPE))
    with open(folder / "masks.u8", "wb") as masks:
        for start in range(0, n, PREP_BATCH):  # pass 2: crops, masks, latents
            frames = base.take(range(start, min(n, start + PREP_BATCH)))
            faces_batch, rows = [], []
            for k, frame in enumerate(frames):
                i = start + k
                offsets[i + 1] = offsets[i]
                if source[i] == NO_FACE:
                    continue
                try:
                    face, used = crop_face(frame, tuple(int(v) for v in boxes_in[i]))
                    mask, cbox = blend_mask(frame, used, tools.parser, blur_ratio=tools.blur_ratio)
                except ValueError as e:  # an empty or out-of-frame box: nothing to paste
                    log.debug("frame %d: box %s unusable (%s): passes through", i, boxes_in[i], e)
                    source[i] = NO_FACE
                    continue
                masks.write(np.ascontiguousarray(mask, np.uint8).tobytes())
                offsets[i + 1] = offsets[i] + mask.size
                has_face[i], boxes[i], crop_boxes[i] = True, used, cbox
                faces_batch.append(face)
                rows.append(i)
            if faces_batch:
                latents[rows] = tools.encode(np.stack(faces_batch))
    latents.flush()
    del latents
    for name, array in (("has_face", has_face), ("box_source", source), ("boxes", boxes),
                        ("crop_boxes", crop_boxes), ("mask_offsets", offsets), ("detect_reason", faces.reason),
                        ("segment", faces.segment)):
        np.save(folder / f"{name}.npy", array)
    if not has_face.any():
        log.warning("no face found in any frame of avatar %s: its frames will pass through", base.source.name)
    keyframes_with_face = int((faces.detected & faces.has_face).sum())
    return {"frames": n, "faceless_frames": int((~has_face).sum()),
            "dwpose_frames": int((source == FROM_DWPOSE).sum()), "s3fd_frames": int((source == FROM_S3FD).sum()),
            "detected_frames": int(faces.detected.sum()), "detector_calls": detect.calls,
            "dwpose_calls": keyframes_with_face if tools.landmarks is not None else 0}


def place_face_boxes(base: BaseVideo, faces, landmarks) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (N, 4) int64, source (N,) uint8) per frame: the DWPose landmark box where the
    keyframe's landmarks give a valid one (§4.1 #4), else the S3FD box (#3), else NO_FACE.

    `faces`: `track_faces`' result. DWPose runs once per keyframe with a face; see the module
    docstring for how its box reaches the frames between keyframes."""
    from models.musetalk.face_box import landmark_box, landmark_box_valid

    n = len(faces.has_face)
    s3fd = _s3fd_boxes(faces.boxes, base.width, base.height)
    keyframes = np.flatnonzero(faces.detected & faces.has_face)
    relative = {}
    if landmarks is not None:
        for k in keyframes:
            lm_box = landmark_box(landmarks(base.take([k])[0]))
            if landmark_box_valid(lm_box):
                relative[int(k)] = _relative(lm_box, faces.boxes[k])
    boxes = np.zeros((n, 4), np.int64)
    source = np.zeros(n, np.uint8)
    for i in np.flatnonzero(faces.has_face):
        box, src = tuple(int(v) for v in s3fd[i]), FROM_S3FD
        slot = int(np.searchsorted(keyframes, i, side="right"))
        a = int(keyframes[slot - 1])  # the keyframe this frame's track started from
        if a in relative:
            rel = relative[a]
            b = int(keyframes[slot]) if slot < len(keyframes) else None
            if b is not None and b in relative and faces.segment[b] == faces.segment[i]:
                rel = rel + (relative[b] - rel) * (i - a) / (b - a)
            lm_box = _absolute(rel, faces.boxes[i])
            if landmark_box_valid(lm_box):
                box, src = lm_box, FROM_DWPOSE
        if box[2] - box[0] < MIN_BOX_PX or box[3] - box[1] < MIN_BOX_PX or box[0] < 0 or box[1] < 0:
            continue
        boxes[i], source[i] = box, src
    return boxes, source


def _s3fd_boxes(raw: np.ndarray, width: int, height: int) -> np.ndarray:
    """Tracked boxes in integer pixels, rounded (a tracked box is sub-pixel) and clipped to the
    frame as `detect_full_res` clips detections."""
    out = np.floor(raw + 0.5)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out.astype(np.int64)


def _relative(box, reference) -> np.ndarray:
    """`box`'s edges relative to `reference`: offsets from its centre in units of its size."""
    ref = np.asarray(reference, np.float64)
    centre = np.array([(ref[0] + ref[2]) / 2, (ref[1] + ref[3]) / 2] * 2)
    size = np.maximum(np.array([ref[2] - ref[0], ref[3] - ref[1]] * 2), 1e-6)
    return (np.asarray(box, np.float64) - centre) / size


def _absolute(rel: np.ndarray, reference) -> tuple[int, int, int, int]:
    """`_relative`'s inverse, in integer pixels; y1 floored at 0 as `landmark_box` does."""
    ref = np.asarray(reference, np.float64)
    centre = np.array([(ref[0] + ref[2]) / 2, (ref[1] + ref[3]) / 2] * 2)
    size = np.array([ref[2] - ref[0], ref[3] - ref[1]] * 2)
    x1, y1, x2, y2 = (int(v) for v in np.floor(centre + rel * size + 0.5))
    return x1, max(0, y1), x2, y2


def detect_full_res(frames: np.ndarray, detect: FaceDetector) -> list:
    """S3FD boxes in full-frame integer pixels (detected as the Wav2Lip track detects), clipped to
    the frame, or None. The official code clips at 0 only; a real detection never leaves the
    frame, but a corrupt or random-weight detector may, and an unbounded box would size the blend
    crop after it."""
    h, w = frames.shape[1:3]
    return [None if box is None else (int(min(max(0, box[0]), w)), int(min(max(0, box[1]), h)),
                                      int(min(max(0, box[2]), w)), int(min(max(0, box[3]), h)))
            for box in detect_scaled(frames, detect)]
