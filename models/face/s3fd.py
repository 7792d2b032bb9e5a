"""S3FD face detector: the network, its loader and the official post-processing.

Used by the Wav2Lip and MuseTalk pipelines alike (PIPELINES.md §3). Frames go in as OpenCV BGR
uint8 at their own resolution (never resized here); boxes come out in that frame's pixels.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import load_strict, read_state_dict

from .boxes import anchors, decode, nms

__all__ = [
    "CANDIDATE_THRESHOLD",
    "NMS_IOU_THRESHOLD",
    "SCORE_THRESHOLD",
    "S3FD",
    "L2Norm",
    "load_s3fd",
    "detect",
    "pooled_candidates",
    "detections_from_heads",
    "best_box",
    "best_boxes",
]

#: face probability a head cell needs to become a candidate box
CANDIDATE_THRESHOLD = 0.05
#: greedy NMS drops a box whose IoU with a better kept box exceeds this
NMS_IOU_THRESHOLD = 0.3
#: face probability a box needs after NMS to be reported
SCORE_THRESHOLD = 0.5
#: frames per network call in `detect` (the official face_det_batch_size)
DEFAULT_BATCH_SIZE = 16

# Caffe VGG means, which the reference subtracts from RGB-ordered pixels in this order.
_PIXEL_MEAN = (104.0, 117.0, 123.0)


class L2Norm(nn.Module):
    """x / (||x||_2 over channels + 1e-10) * weight, weight per channel (stored in checkpoint)."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.eps = 1e-10
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight.view(1, -1, 1, 1)


def _conv(
    cin: int, cout: int, kernel_size: int = 3, stride: int = 1, padding: int = 1
) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size, stride, padding)


class S3FD(nn.Module):
    """Single-shot scale-invariant face detector (VGG16 trunk, 6 detection heads).

    forward(x):
        x: (B, 3, H, W) float32, RGB minus (104, 117, 123) per channel (see `detect`).
        returns 12 tensors [conf_0, loc_0, ..., conf_5, loc_5] for heads on conv3_3, conv4_3,
        conv5_3, fc7, conv6_2 and conv7_2 (strides 4 ... 128): conf (B, 2, h, w) logits
        (background, face), loc (B, 4, h, w) box regression. conf_0 has its three background
        channels max-pooled into one ("max-out").

    Quirk kept from the reference: fc6 is a 3x3 conv with padding 3 and no dilation, so fc7 and
    later maps are 4 px larger than the conv5_3 map pooled once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1_1, self.conv1_2 = _conv(3, 64), _conv(64, 64)
        self.conv2_1, self.conv2_2 = _conv(64, 128), _conv(128, 128)
        self.conv3_1, self.conv3_2, self.conv3_3 = _conv(128, 256), _conv(256, 256), _conv(256, 256)
        self.conv4_1, self.conv4_2, self.conv4_3 = _conv(256, 512), _conv(512, 512), _conv(512, 512)
        self.conv5_1, self.conv5_2, self.conv5_3 = _conv(512, 512), _conv(512, 512), _conv(512, 512)
        self.fc6 = _conv(512, 1024, 3, 1, padding=3)
        self.fc7 = _conv(1024, 1024, 1, 1, 0)
        self.conv6_1, self.conv6_2 = _conv(1024, 256, 1, 1, 0), _conv(256, 512, 3, 2, 1)
        self.conv7_1, self.conv7_2 = _conv(512, 128, 1, 1, 0), _conv(128, 256, 3, 2, 1)

        self.conv3_3_norm = L2Norm(256, scale=10)
        self.conv4_3_norm = L2Norm(512, scale=8)
        self.conv5_3_norm = L2Norm(512, scale=5)

        self.conv3_3_norm_mbox_conf, self.conv3_3_norm_mbox_loc = _conv(256, 4), _conv(256, 4)
        self.conv4_3_norm_mbox_conf, self.conv4_3_norm_mbox_loc = _conv(512, 2), _conv(512, 4)
        self.conv5_3_norm_mbox_conf, self.conv5_3_norm_mbox_loc = _conv(512, 2), _conv(512, 4)
        self.fc7_mbox_conf, self.fc7_mbox_loc = _conv(1024, 2), _conv(1024, 4)
        self.conv6_2_mbox_conf, self.conv6_2_mbox_loc = _conv(512, 2), _conv(512, 4)
        self.conv7_2_mbox_conf, self.conv7_2_mbox_loc = _conv(256, 2), _conv(256, 4)

        self.register_buffer(
            "pixel_mean", torch.tensor(_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False
        )

    def _stage(self, x: torch.Tensor, *convs: nn.Conv2d) -> torch.Tensor:
        for conv in convs:
            x = F.relu(conv(x))
        return x

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self._stage(x, self.conv1_1, self.conv1_2)
        h = self._stage(F.max_pool2d(h, 2, 2), self.conv2_1, self.conv2_2)
        f3_3 = self._stage(F.max_pool2d(h, 2, 2), self.conv3_1, self.conv3_2, self.conv3_3)
        f4_3 = self._stage(F.max_pool2d(f3_3, 2, 2), self.conv4_1, self.conv4_2, self.conv4_3)
        f5_3 = self._stage(F.max_pool2d(f4_3, 2, 2), self.conv5_1, self.conv5_2, self.conv5_3)
        f_fc7 = self._stage(F.max_pool2d(f5_3, 2, 2), self.fc6, self.fc7)
        f6_2 = self._stage(f_fc7, self.conv6_1, self.conv6_2)
        f7_2 = self._stage(f6_2, self.conv7_1, self.conv7_2)

        f3_3 = self.conv3_3_norm(f3_3)
        f4_3 = self.conv4_3_norm(f4_3)
        f5_3 = self.conv5_3_norm(f5_3)

        conf0 = self.conv3_3_norm_mbox_conf(f3_3)
        background = conf0[:, :3].amax(dim=1, keepdim=True)
        return [
            torch.cat((background, conf0[:, 3:]), dim=1),
            self.conv3_3_norm_mbox_loc(f3_3),
            self.conv4_3_norm_mbox_conf(f4_3),
            self.conv4_3_norm_mbox_loc(f4_3),
            self.conv5_3_norm_mbox_conf(f5_3),
            self.conv5_3_norm_mbox_loc(f5_3),
            self.fc7_mbox_conf(f_fc7),
            self.fc7_mbox_loc(f_fc7),
            self.conv6_2_mbox_conf(f6_2),
            self.conv6_2_mbox_loc(f6_2),
            self.conv7_2_mbox_conf(f7_2),
            self.conv7_2_mbox_loc(f7_2),
        ]

    def preprocess(self, frames_bgr: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 BGR -> (B, 3, H, W) network input in the parameters' dtype.

        The result is a channels-last view of the frames, which suits a channels_last network.
        """
        rgb = frames_bgr.flip(-1).permute(0, 3, 1, 2)
        return rgb.to(self.conv1_1.weight.dtype) - self.pixel_mean.to(self.conv1_1.weight.dtype)


def load_s3fd(path: str | os.PathLike, device: str | torch.device = "cpu") -> S3FD:
    """Load `s3fd-619a316812.pth` (a plain state dict) into an eval-mode S3FD, strictly.

    A missing, unexpected or wrongly shaped key raises CheckpointError (a ValueError).
    """
    state = read_state_dict(path, device, allow_container=False)
    net = S3FD().to(device)
    load_strict(net, state)
    return net.eval()


def pooled_candidates(heads: list[torch.Tensor]) -> np.ndarray:
    """Candidate boxes of a batch, pooled over the batch exactly as the reference pools them.

    Every head cell (b, y, x) whose face probability (softmax over the 2 logits) is > 0.05 in
    image b adds a row to *every* image's list: that image's own decoded box and score at (y, x).
    A cell passing in several images therefore appears once per passing image, and rows below
    0.05 appear for images where the cell did not pass. NMS and the 0.5 threshold cancel both
    effects except for the order of tied scores (scores saturated at exactly 1.0 are common),
    which is why the list is built the same way.

    heads: the 12 outputs of `S3FD.forward` for B images (any float dtype, any device).
    Returns (B, P, 5) float32 rows x1, y1, x2, y2, score; heads in order, cells in (b, y, x)
    order within a head.
    """
    batch = heads[0].shape[0]
    parts = []
    for head in range(len(heads) // 2):
        conf, loc = heads[2 * head].float(), heads[2 * head + 1].float()
        face_prob = F.softmax(conf, dim=1)[:, 1]  # (B, h, w)
        _, ys, xs = torch.nonzero(face_prob > CANDIDATE_THRESHOLD, as_tuple=True)
        # Decode the few candidates on the CPU, in float32, as the reference does.
        scores = face_prob[:, ys, xs].cpu()  # (B, P)
        offsets = loc[:, :, ys, xs].cpu().permute(0, 2, 1).reshape(-1, 4)  # (B * P, 4)
        priors = anchors(head, ys.cpu(), xs.cpu()).repeat(batch, 1)
        boxes = decode(offsets, priors).view(batch, -1, 4)
        parts.append(torch.cat((boxes, scores[:, :, None]), dim=2))
    return torch.cat(parts, dim=1).numpy()


def detections_from_heads(heads: list[torch.Tensor]) -> list[np.ndarray]:
    """Official post-processing of the 12 raw head outputs for a batch.

    Candidates as in `pooled_candidates` (face probability > 0.05, anchor-decoded), then per
    image greedy NMS at IoU 0.3 and a final face probability > 0.5.

    Returns one float32 array (K, 5) per image: x1, y1, x2, y2, score, best score first.
    """
    results = []
    for dets in pooled_candidates(heads):
        dets = dets[nms(dets, NMS_IOU_THRESHOLD)]
        results.append(np.ascontiguousarray(dets[dets[:, 4] > SCORE_THRESHOLD], dtype=np.float32))
    return results


def detect(
    net: S3FD, frames_bgr: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE
) -> list[np.ndarray]:
    """Detect faces in video frames.

    frames_bgr: (N, H, W, 3) uint8, OpenCV BGR, all frames the same size.
    Returns N float32 arrays (K, 5): x1, y1, x2, y2 in frame pixels (not clipped to the frame)
    and the face probability in (0.5, 1], best first; K = 0 when no face is found.
    """
    frames_bgr = np.asarray(frames_bgr)
    if frames_bgr.ndim != 4 or frames_bgr.shape[-1] != 3 or frames_bgr.dtype != np.uint8:
        raise ValueError(
            f"frames must be (N, H, W, 3) uint8 BGR, got {frames_bgr.shape} {frames_bgr.dtype}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = net.conv1_1.weight.device
    results: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(frames_bgr), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(frames_bgr[start : start + batch_size]))
            heads = net(net.preprocess(chunk.to(device, non_blocking=True)))
            results.extend(detections_from_heads(heads))
    return results


def best_box(dets: np.ndarray) -> tuple[int, int, int, int] | None:
    """The reference's pick for one frame: the best box, negatives clipped to 0, int-truncated.

    dets: (K, 5) from `detect`. Returns (x1, y1, x2, y2) ints, or None when K == 0. x2 and y2 are
    not clipped to the frame size.
    """
    if len(dets) == 0:
        return None
    x1, y1, x2, y2 = (int(v) for v in np.clip(dets[0, :4], 0, None))
    return x1, y1, x2, y2


def best_boxes(dets_per_frame: list[np.ndarray]) -> list[tuple[int, int, int, int] | None]:
    """`best_box` for every frame of a `detect` result."""
    return [best_box(dets) for dets in dets_per_frame]
