"""The MuseTalk face box, as the official preprocessing computes it (PIPELINES.md §4.1 items 2-5).

MuseTalk's `get_landmark_and_bbox` (musetalk/utils/preprocessing.py:84-137) places the face box
with DWPose landmarks and uses the S3FD box only to decide whether there is a face and as a
fallback. This module is that arithmetic alone, pure numpy; the landmarks come from
`models.face.dwpose` and the S3FD box from `models.face.s3fd.best_box`.

Rules, numbered as in PIPELINES.md §4.1:

- 2. `face_landmarks`: the 68 face points are the whole-body keypoints 23:91 (the COCO-WholeBody
  face block, iBUG-68 order), cast to int32 by truncation toward zero (preprocessing.py:97-101).
- 3. S3FD decides presence: no S3FD box -> no face (the official placeholder (0, 0, 0, 0); here
  `None`). The S3FD box gets no padding and no smoothing.
- 4. `landmark_box`, with lm the int32 landmarks (preprocessing.py:113-132):
    half_face_y    = lm[29].y + bbox_shift        (v1.5 forces bbox_shift = 0)
    half_face_dist = max(lm.y) - half_face_y
    y1 = int(max(0, half_face_y - half_face_dist))
    x1, x2, y2 = min(lm.x), max(lm.x), max(lm.y)
  A non-zero bbox_shift is written into lm[29] itself before max(lm.y) is taken (the official
  code shifts a view of the landmark array), so it can move y2 too; kept for v1 parity.
  `face_box`: if y2 - y1 <= 0, x2 - x1 <= 0 or x1 < 0, the S3FD box is used instead, unchanged.
  Nothing clamps x2 to the frame width or y2 to its height: DWPose points may lie outside the
  frame, and numpy slicing (`frame[y1:y2, x1:x2]`) cuts the crop there, as in the official code.
- 5. The v1.5 extra margin, y2 = min(y2 + 10, H), is NOT applied here: `models.musetalk.crop
  .crop_face` applies it and returns the enlarged box, which is also the paste-back box. Apply it
  once.

Public API
----------
- `face_landmarks(keypoints)`: whole-body keypoints [133, 2] (or [133, >=2]) float -> int32 [68, 2].
- `landmark_box(landmarks, *, bbox_shift=0)` -> (x1, y1, x2, y2) Python ints, possibly invalid.
- `landmark_box_valid(box)` -> bool: rule 4's test (y2 - y1 > 0, x2 - x1 > 0, x1 >= 0).
- `face_box(landmarks, s3fd_box, *, bbox_shift=0)` -> (x1, y1, x2, y2) Python ints, right/bottom
  exclusive, or None when `s3fd_box` is None. The S3FD fallback is returned as given (its ints),
  so it may itself be empty; callers treat an empty box as faceless (crop_face raises on it).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "FACE_KEYPOINTS",
    "HALF_FACE_LANDMARK",
    "face_box",
    "face_landmarks",
    "landmark_box",
    "landmark_box_valid",
]

#: the 68 face keypoints inside COCO-WholeBody's 133: after 17 body and 6 foot points
FACE_KEYPOINTS = slice(23, 91)
#: iBUG-68 point 29, on the nose ridge: the line that splits the face box in two halves
HALF_FACE_LANDMARK = 29

Box = tuple[int, int, int, int]


def face_landmarks(keypoints: np.ndarray) -> np.ndarray:
    """The 68 face points of a whole-body result as int32 [68, 2] (x, y), truncated toward zero."""
    keypoints = np.asarray(keypoints)
    if keypoints.ndim != 2 or keypoints.shape[0] != 133 or keypoints.shape[1] < 2:
        raise ValueError(f"expected whole-body keypoints [133, 2], got {keypoints.shape}")
    # astype truncates toward zero: -0.7 -> 0, like the official `.astype(np.int32)`
    return np.ascontiguousarray(keypoints[FACE_KEYPOINTS, :2].astype(np.int32))


def landmark_box(landmarks: np.ndarray, *, bbox_shift: int = 0) -> Box:
    """Rule 4's box from int32 landmarks [68, 2]; not yet checked (see `landmark_box_valid`)."""
    lm = np.array(landmarks, dtype=np.int32)  # a copy: the shift below writes into it
    if lm.shape != (68, 2):
        raise ValueError(f"expected 68 landmarks [68, 2], got {lm.shape}")
    if bbox_shift != 0:
        lm[HALF_FACE_LANDMARK, 1] = bbox_shift + lm[HALF_FACE_LANDMARK, 1]
    half_face_y = int(lm[HALF_FACE_LANDMARK, 1])
    bottom = int(lm[:, 1].max())
    half_face_dist = bottom - half_face_y
    y1 = max(0, half_face_y - half_face_dist)
    return int(lm[:, 0].min()), int(y1), int(lm[:, 0].max()), bottom


def landmark_box_valid(box: Sequence[int]) -> bool:
    """Whether the official code keeps a landmark box: positive width and height, x1 >= 0."""
    x1, y1, x2, y2 = box
    return not (y2 - y1 <= 0 or x2 - x1 <= 0 or x1 < 0)


def face_box(
    landmarks: np.ndarray, s3fd_box: Sequence[int] | None, *, bbox_shift: int = 0
) -> Box | None:
    """The official face box of one frame: the landmark box, else the S3FD box; None if no face."""
    if s3fd_box is None:
        return None
    box = landmark_box(landmarks, bbox_shift=bbox_shift)
    if landmark_box_valid(box):
        return box
    x1, y1, x2, y2 = (int(v) for v in s3fd_box)
    return x1, y1, x2, y2
