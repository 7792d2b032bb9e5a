"""Box arithmetic for the S3FD detector: anchor decoding and greedy NMS.

Both keep the official operation order in float32 (face_detection/detection/sfd/bbox.py), so
boxes match the reference to the last bit on CPU and integer truncation lands on the same pixel.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["CENTER_VARIANCE", "SIZE_VARIANCE", "head_stride", "anchors", "decode", "nms"]

CENTER_VARIANCE = 0.1  # loc[:2] are centre offsets in units of 0.1 x anchor size
SIZE_VARIANCE = 0.2  # loc[2:] are log-size ratios in units of 0.2
ANCHOR_SCALE = 4  # anchor side = 4 x head stride


def head_stride(head: int) -> int:
    """Stride in input pixels of detection head 0..5: 4, 8, 16, 32, 64, 128."""
    return 2 ** (head + 2)


def anchors(head: int, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Anchors (cx, cy, w, h) float32 of shape (K, 4) at feature-map cells (ys, xs) of a head.

    The anchor of cell (y, x) is centred on (s/2 + x*s, s/2 + y*s) with side 4s, s the stride.
    """
    stride = head_stride(head)
    centre_x = xs.to(torch.float32) * stride + stride / 2
    centre_y = ys.to(torch.float32) * stride + stride / 2
    side = torch.full_like(centre_x, float(ANCHOR_SCALE * stride))
    return torch.stack((centre_x, centre_y, side, side), dim=1)


def decode(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Regression outputs (K, 4) + anchors (K, 4) (cx, cy, w, h) -> boxes (K, 4) x1, y1, x2, y2.

    centre = anchor centre + loc[:2] * 0.1 * anchor size; size = anchor size * exp(loc[2:] * 0.2).
    x2, y2 are computed as x1 + w, y1 + h (not centre + w/2), as the reference does.
    """
    loc = loc.to(torch.float32)
    size = priors[:, 2:]
    centre = priors[:, :2] + loc[:, :2] * CENTER_VARIANCE * size
    wh = size * torch.exp(loc[:, 2:] * SIZE_VARIANCE)
    top_left = centre - wh / 2
    return torch.cat((top_left, wh + top_left), dim=1)


def nms(dets: np.ndarray, iou_threshold: float = 0.3) -> np.ndarray:
    """Greedy non-maximum suppression over rows (x1, y1, x2, y2, score).

    Boxes are visited by descending score; a box survives while its IoU with every kept box is
    <= iou_threshold. Areas use the inclusive-pixel convention (x2 - x1 + 1) * (y2 - y1 + 1).
    Returns the kept row indices, best score first, int64.
    """
    if len(dets) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2, scores = (dets[:, i] for i in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(best)
        inter_w = np.maximum(
            0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1
        )
        inter_h = np.maximum(
            0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1
        )
        inter = inter_w * inter_h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)
