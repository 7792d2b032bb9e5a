"""Putting a generated face back into its frame, better than the official hard rectangle.

The official Wav2Lip paste overwrites the whole face box, so the box edge and the generator's
colour cast show. Here only the lower face (where the mouth moves) is replaced, through a
feathered mask, after shifting the generated face's colour to the source's.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Fractions of the face crop the mask covers: the mouth, chin and cheeks, not the eyes.
MASK_TOP, MASK_BOTTOM = 0.50, 0.97
MASK_LEFT, MASK_RIGHT = 0.12, 0.88
#: Gaussian feather, as a fraction of the crop side.
FEATHER = 0.06


def lower_face_mask(size: int = 96) -> np.ndarray:
    """(size, size) float32 in [0, 1]: 1 over the lower face, falling smoothly to 0 at its edge."""
    mask = np.zeros((size, size), np.float32)
    centre = (int(size * (MASK_LEFT + MASK_RIGHT) / 2), int(size * MASK_TOP))
    axes = (int(size * (MASK_RIGHT - MASK_LEFT) / 2), int(size * (MASK_BOTTOM - MASK_TOP)))
    cv2.ellipse(mask, centre, axes, 0, 0, 180, 1.0, -1)  # the lower half-ellipse
    cv2.rectangle(mask, (centre[0] - axes[0], int(size * MASK_TOP)),
                  (centre[0] + axes[0], int(size * (MASK_TOP + 0.1))), 1.0, -1)
    sigma = max(0.5, FEATHER * size)
    return cv2.GaussianBlur(mask, (0, 0), sigma)


def match_colour(generated: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift `generated` per channel so its mask-weighted mean equals `reference`'s.

    generated, reference: (B, S, S, 3) uint8 BGR; mask: (S, S) float32. Returns uint8."""
    w = mask[None, :, :, None]
    total = max(float(w.sum()), 1e-6)
    gen = generated.astype(np.float32)
    shift = ((reference.astype(np.float32) - gen) * w).sum(axis=(1, 2), keepdims=True) / total
    return np.clip(gen + shift, 0, 255).round().astype(np.uint8)


def clip_box(box, width: int, height: int) -> tuple[int, int, int, int] | None:
    """(x1, y1, x2, y2) clipped to the frame; None when nothing of it is left."""
    x1, y1, x2, y2 = (int(v) for v in box)
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
    return (x1, y1, x2, y2) if x2 - x1 >= 2 and y2 - y1 >= 2 else None


def paste(frame: np.ndarray, box: tuple[int, int, int, int], face: np.ndarray, mask: np.ndarray,
          weight: float = 1.0) -> None:
    """Blend `face` (S, S, 3) uint8 into `frame` (H, W, 3) uint8 at `box`, in place.

    `weight` in [0, 1] scales the mask: 0 keeps the source mouth (silences), 1 the generated one.
    Pixels outside the mask keep the source frame bit for bit."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    resized = cv2.resize(face, (w, h), interpolation=cv2.INTER_CUBIC if w > face.shape[1] else cv2.INTER_AREA)
    alpha = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)[:, :, None] * np.float32(weight)
    region = frame[y1:y2, x1:x2]
    blended = region.astype(np.float32) * (1 - alpha) + resized.astype(np.float32) * alpha
    region[:] = np.clip(blended.round(), 0, 255).astype(np.uint8)
