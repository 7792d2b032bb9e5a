"""MuseTalk paste-back: the feathered parse mask over an expanded square, and the composite.

Official code: MuseTalk `musetalk/utils/blending.py` (`get_image`, `get_image_prepare_material`,
`get_image_blending`; PIPELINES.md §4.5 #22-23, §4.7 #31). The official functions work on PIL
images; here the same arithmetic runs on numpy, with Pillow only where its filter is the
reference (the mask's BICUBIC resize).

Public API (images uint8 BGR [H, W, 3]; boxes (x1, y1, x2, y2) ints, right/bottom exclusive)
- `crop_box_for(box, expand=1.5) -> (crop_box, s)`: the square `(cx-s, cy-s, cx+s, cy+s)` with
  `cx = (x1+x2)//2`, `cy = (y1+y2)//2`, `s = int(max(w, h)//2 * expand)`; it may leave the frame.
- `blend_mask(frame_bgr, box, parser, *, mode="jaw", upper_boundary_ratio=0.5, expand=1.5,
  blur_ratio=0.05) -> (mask uint8 [2s, 2s], crop_box)`: the crop (black outside the frame) is
  given to `parser.mask(crop_rgb uint8 [2s,2s,3] RGB, mode)` -> uint8 [512,512]; that mask is
  resized to 2s x 2s with Pillow BICUBIC, kept only inside `box`, zeroed above row
  `int(2s * upper_boundary_ratio)` and blurred with `cv2.GaussianBlur`, square kernel
  `int(blur_ratio * 2s // 2 * 2) + 1`, sigma 0. `blur_ratio` is 0.05 in `scripts/inference.py` and
  0.1 in the realtime avatar preparation. Depends only on the source frame, so an avatar caches it.
- `paste_face(frame_bgr, face_bgr, box, mask, crop_box) -> uint8 [H, W, 3]`: `face_bgr` (any size,
  e.g. the 256x256 decoder output) resized to the box with cv2.INTER_LINEAR, pasted hard into the
  crop, and the crop composited onto the frame: `round((crop*m + frame*(255-m)) / 255)`; crop
  pixels outside the frame are dropped.
Inputs are never modified; results are new C-contiguous arrays.
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np
from PIL import Image

__all__ = ["blend_mask", "crop_box_for", "paste_face"]

Box = tuple[int, int, int, int]

#: get_image defaults in scripts/inference.py: the square is 1.5x the face box's larger half-side
EXPAND = 1.5
#: rows above this fraction of the square are never blended (the eyes and brows stay the source's)
UPPER_BOUNDARY_RATIO = 0.5
#: GaussianBlur kernel as a fraction of the square's side: get_image 0.05, realtime preparation 0.1
BLUR_RATIO = 0.05


class MaskParser(Protocol):
    def mask(self, image_rgb: np.ndarray, mode: str = ...) -> np.ndarray: ...


def _box(box) -> Box:
    x1, y1, x2, y2 = (int(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"empty box {(x1, y1, x2, y2)}")
    return x1, y1, x2, y2


def _image(array, name: str) -> np.ndarray:
    image = np.asarray(array)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    return image


def _overlap(a: Box, b: Box) -> Box | None:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def crop_box_for(box, expand: float = EXPAND) -> tuple[Box, int]:
    """The expanded square around `box` and its half-side s (official get_crop_box)."""
    x1, y1, x2, y2 = _box(box)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    s = int(max(x2 - x1, y2 - y1) // 2 * expand)
    if s < 1:
        raise ValueError(f"box {(x1, y1, x2, y2)} is too small to blend (s = {s})")
    return (cx - s, cy - s, cx + s, cy + s), s


def _crop_black(frame: np.ndarray, crop_box: Box) -> np.ndarray:
    # PIL's Image.crop: pixels outside the frame are black
    x1, y1, x2, y2 = crop_box
    out = np.zeros((y2 - y1, x2 - x1, 3), np.uint8)
    inside = _overlap(crop_box, (0, 0, frame.shape[1], frame.shape[0]))
    if inside is not None:
        ix1, iy1, ix2, iy2 = inside
        out[iy1 - y1 : iy2 - y1, ix1 - x1 : ix2 - x1] = frame[iy1:iy2, ix1:ix2]
    return out


def blend_mask(
    frame_bgr: np.ndarray,
    box,
    parser: MaskParser,
    *,
    mode: str = "jaw",
    upper_boundary_ratio: float = UPPER_BOUNDARY_RATIO,
    expand: float = EXPAND,
    blur_ratio: float = BLUR_RATIO,
) -> tuple[np.ndarray, Box]:
    """Feathered alpha uint8 [2s, 2s] over the expanded square, and that square's box."""
    frame = _image(frame_bgr, "frame_bgr")
    x1, y1, x2, y2 = _box(box)
    crop_box, s = crop_box_for((x1, y1, x2, y2), expand)
    size = 2 * s
    crop_rgb = np.ascontiguousarray(_crop_black(frame, crop_box)[:, :, ::-1])

    parsed = np.asarray(parser.mask(crop_rgb, mode), dtype=np.uint8)
    # Pillow's default filter for mode "L" (BICUBIC): two separable passes, each rounded and
    # clipped to uint8 in between; OpenCV's cubic agrees on only ~99.3 % of pixels within +-1
    resized = np.asarray(Image.fromarray(parsed).resize((size, size), Image.Resampling.BICUBIC))

    # keep the parse only inside the face box, and only its lower part
    kept = np.zeros((size, size), np.uint8)
    rel = (x1 - crop_box[0], y1 - crop_box[1], x2 - crop_box[0], y2 - crop_box[1])
    inside = _overlap(rel, (0, 0, size, size))
    if inside is not None:
        ix1, iy1, ix2, iy2 = inside
        kept[iy1:iy2, ix1:ix2] = resized[iy1:iy2, ix1:ix2]
    kept[: max(0, int(size * upper_boundary_ratio))] = 0

    # the official expression, evaluated in the same order: float // 2 * 2, then + 1 (odd)
    kernel = int(blur_ratio * size // 2 * 2) + 1
    mask = cv2.GaussianBlur(kept, (kernel, kernel), 0)
    return np.ascontiguousarray(mask), crop_box


def paste_face(
    frame_bgr: np.ndarray, face_bgr: np.ndarray, box, mask: np.ndarray, crop_box
) -> np.ndarray:
    """A new frame: `face_bgr` resized into `box`, blended through `mask` over `crop_box`."""
    frame = _image(frame_bgr, "frame_bgr")
    face = _image(face_bgr, "face_bgr")
    x1, y1, x2, y2 = _box(box)
    cx1, cy1, cx2, cy2 = crop_box = tuple(int(v) for v in crop_box)
    alpha = np.asarray(mask)
    if alpha.shape != (cy2 - cy1, cx2 - cx1):
        raise ValueError(
            f"mask must be [{cy2 - cy1}, {cx2 - cx1}] for crop box {crop_box}, "
            f"got {list(alpha.shape)}"
        )
    # scripts/inference.py: cv2.resize with its default INTER_LINEAR (no antialiasing)
    resized = cv2.resize(
        np.ascontiguousarray(face), (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR
    )

    out = np.array(frame, dtype=np.uint8, order="C", copy=True)
    # Outside the box the crop is the frame itself, and round((f*m + f*(255-m))/255) = f, so only
    # the part of the box inside both the crop and the frame changes.
    region = _overlap((x1, y1, x2, y2), crop_box)
    region = region and _overlap(region, (0, 0, frame.shape[1], frame.shape[0]))
    if region is None:
        return out
    rx1, ry1, rx2, ry2 = region
    m = alpha[ry1 - cy1 : ry2 - cy1, rx1 - cx1 : rx2 - cx1].astype(np.uint32)[:, :, None]
    generated = resized[ry1 - y1 : ry2 - y1, rx1 - x1 : rx2 - x1].astype(np.uint32)
    source = frame[ry1:ry2, rx1:rx2].astype(np.uint32)
    # Pillow's paste with an "L" mask: (a*m + b*(255-m)) / 255 rounded; no ties, since 255 is odd
    blended = (generated * m + source * (255 - m) + 127) // 255
    out[ry1:ry2, rx1:rx2] = blended.astype(np.uint8)
    return out
