"""Face boxes between detector keyframes: sparse optical flow on the face, and the checks that say
when to ask the detector again.

A face detector (S3FD) costs about a second per 640 px frame on a CPU; following a face already
found costs a few milliseconds. `KeyframeTracker` calls the detector on keyframes only: the first
frame, every KEYFRAME_INTERVAL frames, the last frame, and any frame where a check below says the
track cannot be trusted. In between `FaceMotion` follows the face:

    features  goodFeaturesToTrack in the keyframe box's brows-eyes-nose part (its sides reach
              into the background, its jaw moves as the person speaks), on a grey image
              downscaled to TRACK_MAX_SIDE
    flow      pyramidal Lucas-Kanade from frame to frame, each point checked forward-backward
    motion    a similarity (scale, rotation, shift) from the keyframe's points to where they are
              now, by RANSAC (estimateAffinePartial2D): a talking mouth, a hand or hair in the
              wind are outliers, the rigid head is the consensus
    box       the keyframe's box centre moved by that similarity, its sides scaled by it (boxes
              stay axis-aligned, as a detector reports them)

A keyframe is also taken when the flow loses confidence (too few points survive the forward-
backward check, too few RANSAC inliers, the face region no longer looks like the keyframe's
(normalised correlation), or the box leaves the frame), when the face moved too far in one frame
or zoomed or turned too much since its keyframe, and at a cut (grey-histogram correlation of
consecutive thumbnails). While no face is present, a frame whose thumbnail differs from the last
detected one (or KEYFRAME_INTERVAL frames) asks again, so a re-appearance is found promptly.

Segments: frames of one continuous face share a segment id; a cut, a faceless span, or a
detection away from where the track had the face (under SAME_FACE_IOU overlap) starts a new one
(faceless frames are -1). Nothing is ever interpolated or smoothed across a segment boundary.
When a scheduled keyframe's detection agrees with a confident prediction, the difference (the
flow's accumulated drift) is spread linearly back over the frames since the previous keyframe,
so boxes do not step at keyframes.

Coordinates: boxes are (x1, y1, x2, y2) in full-frame pixels with pixel i spanning [i, i + 1), the
convention detectors report in, which a resize scales exactly; flow points are pixel centres of
the downscaled grey image. Pure numpy + OpenCV: frames in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

#: Bumped when anything here changes the boxes a video gets (callers key their caches on it).
TRACKER_VERSION = 1
#: Frames between scheduled detections (2 s at 25 fps). The flow's drift over that span stays
#: under a pixel on the synthetic 720p clips (and is spread away, see Segments); a failing track is
#: caught by the per-frame checks, not by this interval; and every keyframe is a detector call,
#: ~0.5-1 s on a CPU: 50 keeps a talking head near 3 % of frames detected (25: 4.4 %, the same
#: accuracy, cold render ~10 % slower).
KEYFRAME_INTERVAL = 50
#: Flow runs on grey frames downscaled so the longer side is at most this: Lucas-Kanade is
#: sub-pixel there, and 720p at half size costs ~4x less than full size.
TRACK_MAX_SIDE = 640
#: Thumbnail (width, height) for the cut and change checks: only the overall picture matters.
THUMB_SIZE = (64, 36)
#: Template side for the appearance check (grey pixels).
TEMPLATE_PX = 24

MAX_FEATURES = 150
#: Features are seeded in the box's top part only (its upper 60 %: brows, eyes, nose), see _seed.
RIGID_FACE_HEIGHT = 0.6
#: Fewer features than this on a keyframe's face (a blank or tiny box): it cannot be followed, so
#: every frame is detected, as before tracking existed.
MIN_FEATURES = 12
FEATURE_QUALITY = 0.01
FEATURE_MIN_DISTANCE = 3
LK_WINDOW = (21, 21)
LK_LEVELS = 3
#: A point whose backward flow misses its start by more than this (track pixels) is dropped.
MAX_FORWARD_BACKWARD_PX = 0.5
RANSAC_THRESHOLD_PX = 1.0
MIN_INLIERS = 10
#: Confidence is lost when under half of the followed points agree on one motion, or under a
#: quarter of the keyframe's points are still followed (mouth and occluded points drop out).
MIN_INLIER_RATIO = 0.5
MIN_SURVIVING = 0.25
#: The tracked box's content, shrunk to a template, must still correlate this well with the
#: keyframe's: an occluded, vanished or replaced face fails; a talking mouth (a small part) does not.
MIN_APPEARANCE_NCC = 0.6
#: Re-detect after a zoom or turn this large since the keyframe (the box shape a detector draws
#: stops scaling with the head), or a one-frame move over this fraction of the box side.
MAX_SCALE_CHANGE = 1.25
MAX_ROTATION_DEG = 15.0
MAX_STEP_FRACTION = 0.25
#: A box with under half its area inside the frame is lost: the detector decides presence.
MIN_VISIBLE_FRACTION = 0.5
#: Consecutive thumbnails whose 32-bin grey histograms correlate below this are a cut.
CUT_MAX_CORRELATION = 0.6
#: While faceless, a thumbnail differing from the last detected one by this mean grey level asks
#: the detector again (a face walking in changes a fifth of the picture by ~30 levels).
FACELESS_CHANGE_LEVELS = 6.0
#: A keyframe's detection overlapping the tracked (or, after a lost track, the last) box by less
#: than this is another face or a failed track: a new segment, no drift spreading.
SAME_FACE_IOU = 0.5

#: Why a frame's box is what it is, per frame (uint8). TRACKED: followed (or, while faceless,
#: carried over unchanged); the others name why the detector ran on that frame.
TRACKED, FIRST, SCHEDULED, CUT, LOST, MOTION, CHANGED = range(7)
REASONS = ("tracked", "first", "scheduled", "cut", "lost", "motion", "changed")

#: frame (H, W, 3) uint8 BGR, expected box or None -> box (x1, y1, x2, y2) full-frame or None.
FindFace = Callable[[np.ndarray, "tuple | None"], "tuple | None"]


@dataclass(frozen=True)
class TrackedFaces:
    """One video's boxes. boxes (N, 4) float64 (zeros where faceless); has_face (N,) bool;
    reason (N,) uint8, TRACKED or why the detector ran; segment (N,) int32, -1 where faceless."""

    boxes: np.ndarray
    has_face: np.ndarray
    reason: np.ndarray
    segment: np.ndarray

    @property
    def detected(self) -> np.ndarray:
        return self.reason != TRACKED


def _scale_of(width: int, height: int) -> tuple[float, float, tuple[int, int]]:
    """Per-axis factors and size of the flow image (exact per axis: sizes are rounded)."""
    s = min(1.0, TRACK_MAX_SIDE / max(width, height))
    size = (max(1, round(width * s)), max(1, round(height * s)))
    return size[0] / width, size[1] / height, size


class FrameView:
    """What the tracker keeps of a frame: the downscaled grey image, its thumbnail and histogram."""

    def __init__(self, frame_bgr: np.ndarray, size: tuple[int, int]):
        grey = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
        self.grey = grey if grey.shape[::-1] == size else cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        self.thumb = cv2.resize(self.grey, THUMB_SIZE, interpolation=cv2.INTER_AREA)
        self.hist = cv2.calcHist([self.thumb], [0], None, [32], [0, 256])

    def is_cut_from(self, previous: FrameView) -> bool:
        return cv2.compareHist(previous.hist, self.hist, cv2.HISTCMP_CORREL) < CUT_MAX_CORRELATION

    def differs_from(self, reference: FrameView) -> bool:
        return float(cv2.absdiff(self.thumb, reference.thumb).mean()) > FACELESS_CHANGE_LEVELS


def _template(grey: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """The box region (track pixels) resized to TEMPLATE_PX square, zero-mean unit-norm, or None."""
    h, w = grey.shape
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    if x2 - x1 < 4 or y2 - y1 < 4:
        return None
    t = cv2.resize(grey[y1:y2, x1:x2], (TEMPLATE_PX, TEMPLATE_PX), interpolation=cv2.INTER_AREA).astype(np.float32)
    t -= t.mean()
    norm = float(np.linalg.norm(t))
    return t / norm if norm > 1e-3 else None


class FaceMotion:
    """Follows one face from the keyframe it was detected on. Boxes here are in flow-image pixels
    (edge convention); `follow` returns the box on the next frame, or None with why not."""

    def __init__(self, grey: np.ndarray, box: np.ndarray):
        self.box0 = np.asarray(box, np.float64)
        self.prev = grey
        self.template = _template(grey, self.box0)
        self.points0 = self._seed(grey, self.box0)
        self.points = self.points0.copy()
        self.seeded = len(self.points0)
        self.last_box = self.box0
        self.trackable = self.seeded >= MIN_FEATURES and self.template is not None

    @staticmethod
    def _seed(grey: np.ndarray, box: np.ndarray) -> np.ndarray:
        h, w = grey.shape
        bw, bh = box[2] - box[0], box[3] - box[1]
        # brows, eyes and nose only: the box's sides reach past the cheeks into the background,
        # and below the nose the jaw and lips move on their own when the person speaks (points
        # there that move only a little pass RANSAC and bias the scale by a pixel or two)
        x1, x2 = int(max(0, box[0] + 0.1 * bw)), int(min(w, box[2] - 0.1 * bw))
        y1, y2 = int(max(0, box[1] + 0.05 * bh)), int(min(h, box[1] + RIGID_FACE_HEIGHT * bh))
        if x2 - x1 < 8 or y2 - y1 < 8:
            return np.zeros((0, 1, 2), np.float32)
        mask = np.zeros_like(grey)
        mask[y1:y2, x1:x2] = 255
        found = cv2.goodFeaturesToTrack(grey, MAX_FEATURES, FEATURE_QUALITY, FEATURE_MIN_DISTANCE, mask=mask)
        return np.zeros((0, 1, 2), np.float32) if found is None else found.astype(np.float32)

    def follow(self, grey: np.ndarray) -> tuple[np.ndarray | None, int]:
        """(box, TRACKED) when confident; else (box or None, LOST or MOTION)."""
        lk = {"winSize": LK_WINDOW, "maxLevel": LK_LEVELS,
              "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)}
        prev, self.prev = self.prev, grey
        if len(self.points) < MIN_INLIERS:
            return None, LOST
        fwd, st1, _ = cv2.calcOpticalFlowPyrLK(prev, grey, self.points, None, **lk)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(grey, prev, fwd, None, **lk)
        fb_error = np.linalg.norm((back - self.points).reshape(-1, 2), axis=1)
        good = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb_error < MAX_FORWARD_BACKWARD_PX)
        if good.sum() < MIN_INLIERS or good.sum() < MIN_SURVIVING * self.seeded:
            return None, LOST
        src, dst = self.points0[good].reshape(-1, 2), fwd[good].reshape(-1, 2)
        matrix, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                                      ransacReprojThreshold=RANSAC_THRESHOLD_PX,
                                                      maxIters=500, confidence=0.995, refineIters=10)
        if matrix is None:
            return None, LOST
        inliers = inliers.ravel().astype(bool)
        if inliers.sum() < MIN_INLIERS or inliers.mean() < MIN_INLIER_RATIO:
            return None, LOST
        # carry only the consensus: an outlier now (the mouth) would only add noise later
        keep = np.flatnonzero(good)[inliers]
        self.points0, self.points = self.points0[keep], fwd[keep]
        box = self._moved_box(matrix)
        scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
        turn = abs(float(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0]))))
        step = np.abs(box - self.last_box).max() / max(1.0, self.last_box[2] - self.last_box[0])
        self.last_box = box
        if not self._looks_like_keyframe(grey, box):
            return box, LOST
        if max(scale, 1 / scale) > MAX_SCALE_CHANGE or turn > MAX_ROTATION_DEG or step > MAX_STEP_FRACTION:
            return box, MOTION
        return box, TRACKED

    def _moved_box(self, matrix: np.ndarray) -> np.ndarray:
        # box edges -> centre coordinates (-0.5), move the centre, scale the sides, back (+0.5)
        cx, cy = (self.box0[0] + self.box0[2]) / 2 - 0.5, (self.box0[1] + self.box0[3]) / 2 - 0.5
        ncx = matrix[0, 0] * cx + matrix[0, 1] * cy + matrix[0, 2] + 0.5
        ncy = matrix[1, 0] * cx + matrix[1, 1] * cy + matrix[1, 2] + 0.5
        scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
        hw, hh = scale * (self.box0[2] - self.box0[0]) / 2, scale * (self.box0[3] - self.box0[1]) / 2
        return np.array([ncx - hw, ncy - hh, ncx + hw, ncy + hh])

    def _looks_like_keyframe(self, grey: np.ndarray, box: np.ndarray) -> bool:
        now = _template(grey, box)
        return now is not None and float((now * self.template).sum()) >= MIN_APPEARANCE_NCC


def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def visible_fraction(box, width: float, height: float) -> float:
    area = (box[2] - box[0]) * (box[3] - box[1])
    if area <= 0:
        return 0.0
    iw = max(0.0, min(box[2], width) - max(box[0], 0.0))
    ih = max(0.0, min(box[3], height) - max(box[1], 0.0))
    return iw * ih / area


class KeyframeTracker:
    """Feed a video's frames in order with `push`; `result()` gives every frame's box.

    `find_face(frame, expected)` runs the detector on one full-resolution frame; `expected` is
    where the face should be (the tracked box) or None when nothing is known (first frame, after a
    cut or a faceless span), so the caller may detect on a smaller frame when it knows the face's
    size. Memory: a few arrays of N rows and two downscaled grey frames, whatever the length."""

    def __init__(self, frame_count: int, width: int, height: int, find_face: FindFace,
                 interval: int | None = None):
        self.n, self.width, self.height, self.find_face = frame_count, width, height, find_face
        self.interval = max(1, int(KEYFRAME_INTERVAL if interval is None else interval))
        self.sx, self.sy, self.size = _scale_of(width, height)
        self.boxes = np.zeros((frame_count, 4), np.float64)
        self.has_face = np.zeros(frame_count, bool)
        self.reason = np.zeros(frame_count, np.uint8)
        self.segment = np.full(frame_count, -1, np.int32)
        self._i = 0
        self._segments = 0
        self._view: FrameView | None = None  # the previous frame's
        self._reference: FrameView | None = None  # the last detected frame's (faceless checks)
        self._motion: FaceMotion | None = None
        self._last_detected = -1

    def push(self, frame: np.ndarray) -> None:
        i = self._i
        if i >= self.n:
            raise IndexError(f"more than the {self.n} frames announced")
        view = FrameView(frame, self.size)
        previous, self._view = self._view, view
        tracked, reason = None, TRACKED
        if previous is None:
            reason = FIRST
        elif view.is_cut_from(previous):
            reason = CUT
        elif self._motion is not None:
            if self._motion.trackable:
                tracked_small, reason = self._motion.follow(view.grey)
                tracked = None if tracked_small is None else self._to_frame(tracked_small)
                if tracked is not None and visible_fraction(tracked, self.width, self.height) < MIN_VISIBLE_FRACTION:
                    reason = LOST
            else:
                reason = LOST  # nothing to follow on this face: detect every frame
            if reason == TRACKED and (i - self._last_detected >= self.interval or i == self.n - 1):
                reason = SCHEDULED
        elif i - self._last_detected >= self.interval or view.differs_from(self._reference):
            reason = SCHEDULED if i - self._last_detected >= self.interval else CHANGED
        if reason == TRACKED:
            if self._motion is not None:  # following a face
                self.boxes[i], self.has_face[i], self.segment[i] = tracked, True, self._segments
        else:
            self._detect(i, frame, view, reason, tracked)
        self._i += 1

    def result(self) -> TrackedFaces:
        if self._i != self.n:
            raise ValueError(f"{self._i} frames pushed, {self.n} announced")
        return TrackedFaces(self.boxes, self.has_face, self.reason, self.segment)

    def _to_frame(self, box: np.ndarray) -> np.ndarray:
        return box / np.array([self.sx, self.sy, self.sx, self.sy])

    def _to_small(self, box) -> np.ndarray:
        return np.asarray(box, np.float64) * np.array([self.sx, self.sy, self.sx, self.sy])

    def _detect(self, i: int, frame: np.ndarray, view: FrameView, reason: int, tracked) -> None:
        was_face = i > 0 and self.has_face[i - 1]
        # the size hint: the confident prediction, else where the face last was (same shot only)
        expected = tracked if reason in (SCHEDULED, MOTION) else (
            self.boxes[i - 1] if was_face and reason == LOST else None)
        box = self.find_face(frame, None if expected is None else tuple(expected))
        self.reason[i], self._last_detected, self._reference = reason, i, view
        if box is None:
            self._motion = None
            return
        box = np.asarray(box, np.float64)
        # the same face where the track had it: the segment goes on (a lost track re-found in
        # place too). A face with nothing to follow is detected on every frame and stays one
        # segment until a cut, whatever its boxes, exactly as every frame was handled before
        # tracking (its detections are smoothed together, see face_track._smooth).
        last = tracked if tracked is not None else (self.boxes[i - 1] if was_face else None)
        untrackable = reason == LOST and was_face and self._motion is not None and not self._motion.trackable
        continuing = untrackable or (
            reason in (SCHEDULED, MOTION, LOST) and last is not None and iou(box, last) >= SAME_FACE_IOU)
        if continuing and reason != LOST:  # a confident prediction: what it missed is drift
            self._spread_drift(i, box - tracked)
        elif not continuing:
            self._segments += 1
        self.boxes[i], self.has_face[i], self.segment[i] = box, True, self._segments
        self._motion = FaceMotion(view.grey, self._to_small(box))

    def _spread_drift(self, i: int, delta: np.ndarray) -> None:
        """The flow's drift since the segment's previous keyframe, corrected in proportion to the
        time elapsed (zero at that keyframe, all of it here): no step in the boxes at keyframes."""
        start = i - 1
        while start > 0 and self.reason[start] == TRACKED:
            start -= 1
        span = i - start
        for j in range(start + 1, i):
            self.boxes[j] += delta * (j - start) / span
