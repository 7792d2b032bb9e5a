"""Face parsing for MuseTalk's paste-back mask: BiSeNet loader, parser wrapper, label -> mask.

Official code: MuseTalk `musetalk/utils/face_parsing/__init__.py` (PIPELINES.md §4.6). The parser
sees the square blend crop, resized to 512x512; the mask it returns decides which pixels of the
crop the generated face replaces.

Public API
- `load_bisenet(weights, *, device="cpu") -> BiSeNet`: reads `79999_iter.pth` alone (a plain state
  dict; torch.load weights_only=True), strictly (CheckpointError, a ValueError naming the key),
  eval mode, requires_grad False. `forward(x [B,3,512,512] float32)` -> `[B,19,512,512]` logits of
  the main head.
- `FaceParser(net, *, left_cheek_width=90, right_cheek_width=90, device=None)`: `net` is any module
  with that forward (a parameter-less stub too); `device` defaults to the device of `net`'s first
  parameter, else CPU. The input is cast to that parameter's dtype (float32 without one).
  - `.preprocess(image_rgb uint8 [h,w,3] RGB)` -> CPU float32 `[1,3,512,512]`: Pillow BILINEAR
    resize to 512x512, /255, ImageNet mean/std per channel.
  - `.labels(image_rgb uint8 [h,w,3] RGB)` -> int64 `[512,512]` class map (argmax over classes).
  - `.mask(image_rgb uint8 [h,w,3] RGB, mode="jaw")` -> uint8 `[512,512]` in {0, 255}: argmax of the
    logits over classes, then `mask_from_labels`.
- `mask_from_labels(labels int [512,512], mode="jaw", *, left_cheek_width=90,
  right_cheek_width=90)` -> uint8 `[512,512]` in {0, 255}; modes:
  - `raw`: skin, mouth and lips {1, 11, 12, 13} (the v1 default);
  - `neck`: raw plus neck {14};
  - `jaw` (the v1.5 default): the skin grown by `JAW_KERNEL` (mostly upward, so the chin region
    the generated mouth may open into is covered), thinned again by two erosions with
    `CHEEK_KERNEL` in the cheek columns only, then minus the nose, plus mouth and lips.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from models.checkpoint import load_strict, read_state_dict

from .bisenet import BiSeNet

__all__ = ["BiSeNet", "FaceParser", "load_bisenet", "mask_from_labels"]

#: the parser's input side (FaceParsing.__call__ size=(512, 512)); masks come back at this size
PARSE_SIZE = 512
#: torchvision Normalize constants of the official preprocessing (ImageNet statistics)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# CelebAMask-HQ labels as face-parsing.PyTorch counts them (0 = background): 1 skin, 2/3 brows,
# 4/5 eyes, 6 glasses, 7/8 ears, 9 earring, 10 nose, 11 mouth, 12/13 lips, 14 neck, 15 necklace,
# 16 cloth, 17 hair, 18 hat.
SKIN, NOSE, NECK = 1, 10, 14
MOUTH_AND_LIPS = (11, 12, 13)
RAW_CLASSES = (SKIN, *MOUTH_AND_LIPS)
NECK_CLASSES = (*RAW_CLASSES, NECK)
MODES = ("raw", "neck", "jaw")

#: v1.5 passes FaceParsing(left_cheek_width=90, right_cheek_width=90) (scripts/inference.py);
#: the class default of 80 is not what v1.5 runs with
CHEEK_WIDTH = 90


def _jaw_kernel() -> np.ndarray:
    # FaceParsing.__init__: cone_height 21, tail_height 12 -> 33x33, centre column 33 // 2 = 16.
    # Cone rows r = 21 // 2 ... 20 have 2 (r - 10) + 1 ones (1 ... 21); the 12 tail rows keep the
    # last cone row's 21 columns (6 ... 26). Rows 0-9 stay empty, so with the centre anchor the
    # dilation reaches 16 rows up and only 6 down.
    cone_height, tail_height = 21, 12
    size = cone_height + tail_height  # 33
    centre = size // 2  # 16
    kernel = np.zeros((size, size), np.uint8)
    for row in range(cone_height // 2, cone_height):
        half = row - cone_height // 2
        kernel[row, centre - half : centre + half + 1] = 1
    base_half = cone_height // 2  # half of the last cone row's width, 21 // 2 = 10
    kernel[cone_height:, centre - base_half : centre + base_half + 1] = 1
    return kernel


#: the jaw-growing dilation kernel (33x33), anchored at its centre (16, 16), not flipped
JAW_KERNEL = _jaw_kernel()
#: the flat cheek-erosion ellipse (35 wide, 3 high: full middle row, one pixel above and below)
CHEEK_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3))
#: erosions applied with CHEEK_KERNEL (cv2.erode(..., iterations=2))
CHEEK_EROSIONS = 2


def load_bisenet(weights: str | os.PathLike, *, device: str | torch.device = "cpu") -> BiSeNet:
    """`79999_iter.pth` -> eval-mode BiSeNet on `device`, loaded strictly, gradients off.

    The file holds the ResNet-18 backbone too (`cp.resnet.*`); `resnet18-5c106cde.pth` is not
    needed. A missing, unexpected or wrongly shaped key raises CheckpointError naming it.
    """
    state = read_state_dict(weights, device, allow_container=False)
    net = BiSeNet().to(device)
    load_strict(net, state)
    net.requires_grad_(False)
    return net.eval()


def _cheek_columns(left_cheek_width: int, right_cheek_width: int) -> np.ndarray:
    # FaceParsing._create_cheek_mask: filled cv2.rectangles from x = 0 to 256 - left and from
    # 256 + right to the edge, both end points inclusive
    centre = PARSE_SIZE // 2
    x = np.arange(PARSE_SIZE)
    return (x <= centre - left_cheek_width) | (x >= centre + right_cheek_width)


def mask_from_labels(
    labels: np.ndarray | torch.Tensor,
    mode: str = "jaw",
    *,
    left_cheek_width: int = CHEEK_WIDTH,
    right_cheek_width: int = CHEEK_WIDTH,
) -> np.ndarray:
    """Class map int [512, 512] -> blend mask uint8 [512, 512] in {0, 255} (see module docstring).

    Morphology has OpenCV semantics: dilate(F, K)(x, y) = max F(x + i - 16, y + j - 16) over K's
    ones; pixels outside the image never count (OpenCV's default constant border is the identity
    of max for dilation and of min for erosion).
    """
    labels = np.asarray(labels)
    if labels.shape != (PARSE_SIZE, PARSE_SIZE):
        raise ValueError(f"labels must be [{PARSE_SIZE}, {PARSE_SIZE}], got {list(labels.shape)}")
    if mode == "raw":
        region = np.isin(labels, RAW_CLASSES)
    elif mode == "neck":
        region = np.isin(labels, NECK_CLASSES)
    elif mode == "jaw":
        skin = np.where(labels == SKIN, 255, 0).astype(np.uint8)
        dilated = cv2.dilate(skin, JAW_KERNEL)
        eroded = cv2.erode(dilated, CHEEK_KERNEL, iterations=CHEEK_EROSIONS)
        cheeks = _cheek_columns(left_cheek_width, right_cheek_width)
        grown = np.where(cheeks[None, :], eroded, dilated) == 255
        region = (grown & (labels != NOSE)) | np.isin(labels, MOUTH_AND_LIPS)
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return np.where(region, 255, 0).astype(np.uint8)


class FaceParser:
    """A parse network plus the official preprocessing and mask rules (see module docstring)."""

    def __init__(
        self,
        net: nn.Module,
        *,
        left_cheek_width: int = CHEEK_WIDTH,
        right_cheek_width: int = CHEEK_WIDTH,
        device: str | torch.device | None = None,
    ) -> None:
        self.net = net
        self.left_cheek_width = int(left_cheek_width)
        self.right_cheek_width = int(right_cheek_width)
        parameters = getattr(net, "parameters", None)
        first = next(iter(parameters()), None) if callable(parameters) else None
        if device is None:
            device = first.device if first is not None else "cpu"
        self.device = torch.device(device)
        self.dtype = first.dtype if first is not None else torch.float32
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
        self._std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]

    def preprocess(self, image_rgb: np.ndarray) -> torch.Tensor:
        """uint8 RGB [h, w, 3] -> CPU float32 [1, 3, 512, 512], ImageNet-normalised.

        Pillow's BILINEAR widens its filter when shrinking (crops over 512 px are common at 1080p),
        which cv2.INTER_LINEAR does not; the official code uses Pillow.
        """
        image = np.asarray(image_rgb)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image_rgb must be uint8 [h, w, 3], got {image.dtype} {image.shape}")
        resized = Image.fromarray(np.ascontiguousarray(image)).resize(
            (PARSE_SIZE, PARSE_SIZE), Image.Resampling.BILINEAR
        )
        # ToTensor then Normalize, in the same float32 operations as torchvision
        x = torch.from_numpy(np.array(resized)).permute(2, 0, 1).float().div(255)
        return x.sub(self._mean).div(self._std).unsqueeze(0).contiguous()

    @torch.inference_mode()
    def labels(self, image_rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB [h, w, 3] -> int64 [512, 512] class map (argmax of the main head)."""
        logits = self.net(self.preprocess(image_rgb).to(self.device, self.dtype))
        if isinstance(logits, (tuple, list)):  # an official-style net returns all three heads
            logits = logits[0]
        return logits[0].argmax(0).cpu().numpy()

    def mask(self, image_rgb: np.ndarray, mode: str = "jaw") -> np.ndarray:
        """uint8 RGB [h, w, 3] -> uint8 [512, 512] in {0, 255}; see `mask_from_labels`."""
        if mode not in MODES:  # before spending a forward pass
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return mask_from_labels(
            self.labels(image_rgb),
            mode,
            left_cheek_width=self.left_cheek_width,
            right_cheek_width=self.right_cheek_width,
        )
