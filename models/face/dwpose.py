"""DWPose whole-body landmarks from the official ONNX export, run as MuseTalk's mmpose path runs it.

MuseTalk places its face crop with DWPose (RTMPose-l, 133 COCO-WholeBody keypoints, input 288x384)
run by mmpose 1.1.0 `inference_topdown(model, frame)` with no person box (PIPELINES.md §4.1 item 2).
This module reproduces that path on `dw-ll_ucoco_384.onnx` through onnxruntime, without mmcv or
mmpose. Every step below names the mmpose 1.1.0 code it follows:

1. Person box = the whole frame `[0, 0, W, H]` (apis/inference.py `inference_topdown`, bboxes=None).
2. Centre and scale: centre = box centre, scale = box size x 1.25 (`GetBBoxCenterScale`,
   `bbox_xyxy2cs`), then widened to the 288:384 aspect (`TopdownAffine._fix_aspect_ratio`).
3. `cv2.warpAffine(frame, M, (288, 384), INTER_LINEAR)`, zero border, on the uint8 BGR frame; M maps
   the centre to (144, 192) and `scale` to 288x384 (`get_warp_matrix` with rot 0, no shift).
4. BGR -> RGB, float32, `(x - mean) / std` with the RGB mean/std below (`PoseDataPreprocessor`).
5. Flip test (`test_cfg=dict(flip_test=True)`): the normalised input and its horizontal mirror both
   go through the network; the mirror's SimCC vectors are brought back by swapping left/right
   keypoints (`FLIP_INDICES`, the COCO-WholeBody `swap` table) and reversing the x bins
   (`models/utils/tta.py flip_vectors`), then averaged with the original, `(a + b) * 0.5` in float32
   (`RTMCCHead.predict`). No half-bin correction is applied, as in mmpose.
6. SimCC decoding (`codecs/utils/post_processing.py get_simcc_maximum`, `SimCCLabel.decode`,
   use_dark False): location = argmax per axis (first maximum wins), score = min of the two maxima,
   location -1 where score <= 0, then / 2.0 (simcc_split_ratio) into input pixels.
7. Back to the frame: `kp / (288, 384) * scale + centre - 0.5 * scale`
   (`TopdownPoseEstimator.add_pred_to_datasample`), in float64 as numpy promotes it there.

The ONNX export (mmdeploy's RTMPose layout, as the RTMPose ONNX Runtime examples name it): one input
`input` float32 [1, 3, 384, 288] (NCHW, normalised RGB) and two outputs `simcc_x` [1, 133, 576] and
`simcc_y` [1, 133, 768]: the head's raw SimCC vectors, no decoding inside the graph. The wrapper
reads the input name from the session and runs the two flip-test passes as one batch of 2 when the
batch axis is dynamic, else as two calls.

Public API
----------
- `whole_frame_center_scale(height, width)` -> (center float32 [2], scale float32 [2]): steps 1-2.
- `warp_matrix(center, scale)` -> float64 [2, 3]: step 3's M (frame -> 288x384 input pixels).
- `preprocess(frame_bgr)` -> (x float32 [1, 3, 384, 288], center, scale): steps 1-4.
- `flip_back(simcc_x, simcc_y)` -> the mirrored pass's vectors in original orientation (step 5).
- `decode_simcc(simcc_x [K, 576], simcc_y [K, 768])` -> (keypoints float32 [K, 2] in input
  pixels, scores float32 [K]): step 6.
- `to_frame(keypoints, center, scale)` -> float64 [K, 2] frame pixels (x, y): step 7.
- `DWPose(session, flip_test=True)`: `simcc(frame_bgr)` -> (simcc_x [133, 576], simcc_y [133, 768],
  center, scale), float32, flip-averaged; `__call__(frame_bgr)` -> (keypoints float64 [133, 2] in
  frame pixels, scores float32 [133]). `session` is an onnxruntime.InferenceSession or anything
  with its `get_inputs`/`get_outputs`/`run`.
- `load_dwpose(path, *, providers=None)` -> DWPose over a local .onnx file (never the network).

Frames are numpy uint8 [H, W, 3] BGR as OpenCV decodes them; they are never modified.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import cv2
import numpy as np

__all__ = [
    "BBOX_PADDING",
    "FLIP_INDICES",
    "INPUT_HEIGHT",
    "INPUT_WIDTH",
    "NUM_KEYPOINTS",
    "PIXEL_MEAN_RGB",
    "PIXEL_STD_RGB",
    "SIMCC_SPLIT_RATIO",
    "SIMCC_X_BINS",
    "SIMCC_Y_BINS",
    "DWPose",
    "decode_simcc",
    "flip_back",
    "load_dwpose",
    "preprocess",
    "to_frame",
    "warp_matrix",
    "whole_frame_center_scale",
]

#: network input width and height in pixels: codec input_size=(288, 384) (w, h) in the MuseTalk
#: config rtmpose-l_8xb32-270e_coco-ubody-wholebody-384x288.py
INPUT_WIDTH, INPUT_HEIGHT = 288, 384
#: SimCC bins per input pixel (codec simcc_split_ratio)
SIMCC_SPLIT_RATIO = 2.0
SIMCC_X_BINS = int(INPUT_WIDTH * SIMCC_SPLIT_RATIO)  # 576
SIMCC_Y_BINS = int(INPUT_HEIGHT * SIMCC_SPLIT_RATIO)  # 768
#: person box enlargement of GetBBoxCenterScale (its default; the config passes none)
BBOX_PADDING = 1.25
#: PoseDataPreprocessor mean/std, applied after bgr_to_rgb, so in R, G, B order
PIXEL_MEAN_RGB = (123.675, 116.28, 103.53)
PIXEL_STD_RGB = (58.395, 57.12, 57.375)
#: COCO-WholeBody: 17 body, 6 feet, 68 face (iBUG order), 21 left hand, 21 right hand
NUM_KEYPOINTS = 133

_MEAN = np.asarray(PIXEL_MEAN_RGB, dtype=np.float32)
_STD = np.asarray(PIXEL_STD_RGB, dtype=np.float32)


def _flip_indices() -> tuple[int, ...]:
    """Index of each keypoint's mirror image, built from the COCO-WholeBody `swap` names.

    Keypoints without a `swap` entry (nose, nose bridge, chin, mouth centre line, ...) map to
    themselves.
    """
    pairs: list[tuple[int, int]] = []
    # body: eyes, ears, shoulders, elbows, wrists, hips, knees, ankles (left, right) = (1, 2)...
    pairs += [(i, i + 1) for i in range(1, 17, 2)]
    # feet 17-22: left big toe, small toe, heel <-> right ones
    pairs += [(17 + i, 20 + i) for i in range(3)]
    face = 23  # iBUG-68 point p is keypoint 23 + p
    ibug = [(p, 16 - p) for p in range(8)]  # jaw line, outside in
    ibug += [(17 + p, 26 - p) for p in range(5)]  # eyebrows
    ibug += [(31, 35), (32, 34)]  # nostrils
    ibug += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    ibug += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
    ibug += [(60, 64), (61, 63), (65, 67)]  # inner lips
    pairs += [(face + a, face + b) for a, b in ibug]
    pairs += [(91 + i, 112 + i) for i in range(21)]  # left hand <-> right hand, joint by joint
    table = list(range(NUM_KEYPOINTS))
    for a, b in pairs:
        table[a], table[b] = b, a
    return tuple(table)


#: FLIP_INDICES[k] = the keypoint that k becomes in a mirrored image (mmpose `flip_indices`)
FLIP_INDICES = _flip_indices()
_FLIP = np.asarray(FLIP_INDICES, dtype=np.int64)


def whole_frame_center_scale(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale (float32 [2] each, x then y) of the whole-frame person box.

    The box [0, 0, W, H] (float32) gives centre (W/2, H/2) and scale (1.25 W, 1.25 H); the scale
    is then widened on one axis to 288:384: (s_w, s_w / 0.75) if s_w > 0.75 s_h, else
    (0.75 s_h, s_h). All in float32, like mmpose.
    """
    box = np.asarray([0, 0, width, height], dtype=np.float32)
    center = np.asarray([box[0] + box[2], box[1] + box[3]], dtype=np.float32) * np.float32(0.5)
    size = np.asarray([box[2] - box[0], box[3] - box[1]], dtype=np.float32)
    scale = size * np.float32(BBOX_PADDING)
    aspect = np.float32(INPUT_WIDTH / INPUT_HEIGHT)  # 0.75
    s_w, s_h = scale
    if s_w > s_h * aspect:
        scale = np.asarray([s_w, s_w / aspect], dtype=np.float32)
    else:
        scale = np.asarray([s_h * aspect, s_h], dtype=np.float32)
    return center, scale


def warp_matrix(center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Affine M (float64 [2, 3]) taking frame pixels to input pixels.

    Three float32 point pairs, solved by `cv2.getAffineTransform` as mmpose does (so M matches it
    bit for bit): the centre goes to (144, 192); the point half a scale-width above it goes to
    (144, 48); the point a quarter turn from that around it goes to (0, 48). Scale-width maps to
    288 px and, through the fixed aspect, scale-height to 384 px.
    """
    center = np.asarray(center, dtype=np.float32)
    half_width = np.float32(scale[0]) * np.float32(0.5)
    src = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center.astype(np.float64) + np.array([0.0, -float(half_width)])
    src[2] = _third_point(src[0], src[1])
    dst = np.zeros((3, 2), dtype=np.float32)
    dst[0] = (INPUT_WIDTH * 0.5, INPUT_HEIGHT * 0.5)
    dst[1] = (INPUT_WIDTH * 0.5, INPUT_HEIGHT * 0.5 - INPUT_WIDTH * 0.5)
    dst[2] = _third_point(dst[0], dst[1])
    return cv2.getAffineTransform(src, dst)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """b + (a - b) turned by 90 degrees: the third, non-collinear point of the affine fit."""
    d = a - b
    return b + np.array([-d[1], d[0]], dtype=a.dtype)


def preprocess(frame_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whole frame -> network input float32 [1, 3, 384, 288] (normalised RGB), center, scale."""
    frame = np.asarray(frame_bgr)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be uint8 [H, W, 3] BGR, got {frame.dtype} {frame.shape}")
    height, width = frame.shape[:2]
    center, scale = whole_frame_center_scale(height, width)
    warped = cv2.warpAffine(frame, warp_matrix(center, scale), (INPUT_WIDTH, INPUT_HEIGHT),
                            flags=cv2.INTER_LINEAR)
    rgb = warped[:, :, ::-1].astype(np.float32)
    x = (rgb - _MEAN) / _STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), center, scale


def flip_back(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SimCC vectors [..., K, bins] of a mirrored input, put back in the original orientation.

    Keypoint k takes the vectors predicted for FLIP_INDICES[k]; x vectors are also reversed
    (bin b -> bins - 1 - b). y vectors keep their bins.
    """
    x = np.ascontiguousarray(np.take(simcc_x, _FLIP, axis=-2)[..., ::-1])
    y = np.ascontiguousarray(np.take(simcc_y, _FLIP, axis=-2))
    return x, y


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SimCC vectors [K, 576], [K, 768] -> keypoints float32 [K, 2] (input pixels), scores [K].

    Location = argmax along each axis (the first on ties); score = the smaller of the two maxima;
    a keypoint whose score is <= 0 gets location (-1, -1) bins. Bins / 2.0 = input pixels.
    """
    simcc_x = np.asarray(simcc_x)
    simcc_y = np.asarray(simcc_y)
    if simcc_x.ndim != 2 or simcc_y.ndim != 2 or simcc_x.shape[0] != simcc_y.shape[0]:
        raise ValueError(f"expected [K, Wx] and [K, Wy], got {simcc_x.shape} and {simcc_y.shape}")
    locs = np.stack([simcc_x.argmax(axis=1), simcc_y.argmax(axis=1)], axis=-1).astype(np.float32)
    scores = np.minimum(simcc_x.max(axis=1), simcc_y.max(axis=1)).astype(np.float32)
    locs[scores <= 0] = -1
    return locs / np.float32(SIMCC_SPLIT_RATIO), scores


def to_frame(keypoints: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Input-pixel keypoints [K, 2] -> frame pixels, float64 [K, 2].

    x_frame = kp / (288, 384) * scale + center - 0.5 * scale, the inverse of `warp_matrix`.
    mmpose divides the float32 keypoints by the input size held as a tuple of ints, which numpy
    promotes to float64, so the whole expression runs in float64 (left to right, as written).
    """
    size = np.asarray([INPUT_WIDTH, INPUT_HEIGHT], dtype=np.float64)
    scale32 = np.asarray(scale, dtype=np.float32)
    half = (scale32 * np.float32(0.5)).astype(np.float64)
    kp = np.asarray(keypoints, dtype=np.float32).astype(np.float64)
    center64 = np.asarray(center, dtype=np.float32).astype(np.float64)
    return kp / size * scale32.astype(np.float64) + center64 - half


class DWPose:
    """Whole-body pose on one frame with flip test, over an ONNX Runtime session.

    Construction checks the session's signature: one input [N, 3, 384, 288] and outputs named
    `simcc_x` [N, 133, 576] and `simcc_y` [N, 133, 768] (symbolic or -1 dims accepted); else
    ValueError naming what differs.
    """

    def __init__(self, session: Any, *, flip_test: bool = True) -> None:
        self.session = session
        self.flip_test = flip_test
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"DWPose ONNX: expected one input, got {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        _check_shape("input " + self.input_name, inputs[0].shape, (3, INPUT_HEIGHT, INPUT_WIDTH))
        outputs = {o.name: o for o in session.get_outputs()}
        for name, bins in (("simcc_x", SIMCC_X_BINS), ("simcc_y", SIMCC_Y_BINS)):
            if name not in outputs:
                raise ValueError(f"DWPose ONNX: output {name!r} missing (has {sorted(outputs)})")
            _check_shape("output " + name, outputs[name].shape, (NUM_KEYPOINTS, bins))
        # a batch axis fixed at 1 (as in the export) needs one run per flip-test pass
        batch = inputs[0].shape[0] if len(inputs[0].shape) == 4 else 1
        self._batched = not (isinstance(batch, int) and batch == 1)

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        simcc_x, simcc_y = self.session.run(["simcc_x", "simcc_y"], {self.input_name: x})
        return np.asarray(simcc_x, dtype=np.float32), np.asarray(simcc_y, dtype=np.float32)

    def simcc(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Flip-averaged SimCC float32 [133, 576], [133, 768], plus the frame's center and scale."""
        x, center, scale = preprocess(frame_bgr)
        if not self.flip_test:
            simcc_x, simcc_y = self._run(x)
            return simcc_x[0], simcc_y[0], center, scale
        mirrored = np.ascontiguousarray(x[..., ::-1])
        if self._batched:
            simcc_x, simcc_y = self._run(np.concatenate([x, mirrored]))
        else:
            a, b = self._run(x), self._run(mirrored)
            simcc_x, simcc_y = np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])
        back_x, back_y = flip_back(simcc_x[1], simcc_y[1])
        half = np.float32(0.5)
        return (simcc_x[0] + back_x) * half, (simcc_y[0] + back_y) * half, center, scale

    def __call__(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints float64 [133, 2] (x, y frame pixels, maybe outside), scores float32 [133]."""
        simcc_x, simcc_y, center, scale = self.simcc(frame_bgr)
        keypoints, scores = decode_simcc(simcc_x, simcc_y)
        return to_frame(keypoints, center, scale), scores


def _check_shape(what: str, shape: Sequence[Any], tail: tuple[int, ...]) -> None:
    """Raise unless `shape` is [N, *tail], allowing symbolic or unknown dims anywhere."""
    fixed = [d if isinstance(d, int) and d >= 0 else None for d in shape]
    mismatch = any(d is not None and d != t for d, t in zip(fixed[1:], tail))
    if len(fixed) != len(tail) + 1 or mismatch:
        expected = ", ".join(map(str, tail))
        raise ValueError(f"DWPose ONNX: {what} has shape {list(shape)}, expected [N, {expected}]")


def load_dwpose(path: str | os.PathLike, *, providers: Sequence[str] | None = None,
                flip_test: bool = True) -> DWPose:
    """DWPose over a local `dw-ll_ucoco_384.onnx` (FileNotFoundError if absent).

    `providers` are onnxruntime execution providers, CPU by default. onnxruntime is imported here,
    so this module imports without it.
    """
    import onnxruntime as ort

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DWPose ONNX file not found: {path}")
    session = ort.InferenceSession(path, providers=list(providers or ["CPUExecutionProvider"]))
    return DWPose(session, flip_test=flip_test)
