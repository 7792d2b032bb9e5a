"""models/musetalk/blending.py: the feathered parse mask and the composite (issue 10 rules 16-17).

Expectations are recomputed here: the crop by np.pad, the mask resize by Pillow's default filter
(called without naming it), the Gaussian feather and the bilinear face resize in float numpy,
the composite in float math.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.musetalk.blending import blend_mask, crop_box_for, paste_face
from models.musetalk.face_parsing import FaceParser

H, W = 360, 640
BOXES = {
    "centre": (250, 100, 390, 270),
    "top_left": (0, 0, 120, 150),  # crop leaves the frame on two sides
    "bottom_right": (540, 230, 640, 360),
    "wide": (300, 200, 500, 330),  # wider than tall
}


def smooth_image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)).astype(int)
    return np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)


class StubParser:
    """Records what it is given; returns a hard-edged 512x512 mask that depends on the image."""

    def __init__(self):
        self.calls = []

    def mask(self, image_rgb, mode="jaw"):
        self.calls.append((image_rgb.copy(), mode))
        yy, xx = np.mgrid[:512, :512]
        cx = 200 + int(image_rgb[..., 0].mean())  # R channel: a BGR/RGB swap moves the ellipse
        inside = ((xx - cx) / 170) ** 2 + ((yy - 300) / 190) ** 2 < 1
        inside |= (abs(yy - 120) < 20) & (abs(xx - 256) < 200)  # a bar in the upper half
        return np.where(inside, 255, 0).astype(np.uint8)


# --- independent recomputations ---


def expected_crop_box(box, expand=1.5):
    x1, y1, x2, y2 = box
    s = int(max(x2 - x1, y2 - y1) // 2 * expand)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    return (cx - s, cy - s, cx + s, cy + s), s


def black_crop(frame, crop_box):
    x1, y1, x2, y2 = crop_box
    m = max(0, -x1, -y1, x2 - frame.shape[1], y2 - frame.shape[0])
    padded = np.pad(frame, ((m, m), (m, m), (0, 0)))
    return padded[y1 + m : y2 + m, x1 + m : x2 + m]


def gaussian_blur_reference(img, k):
    # OpenCV: sigma 0 -> 0.3 ((k - 1) / 2 - 1) + 0.8; separable; BORDER_REFLECT_101 = numpy reflect
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    t = np.arange(k) - (k - 1) / 2
    g = np.exp(-(t**2) / (2 * sigma**2))
    g /= g.sum()
    r = k // 2
    p = np.pad(img.astype(np.float64), r, mode="reflect")
    rows = sum(g[i] * p[:, i : i + img.shape[1]] for i in range(k))
    return sum(g[i] * rows[i : i + img.shape[0]] for i in range(k))


def expected_blend_mask(frame, box, parsed, upper=0.5, expand=1.5, blur_ratio=0.05):
    crop_box, s = expected_crop_box(box, expand)
    size = 2 * s
    big = np.asarray(Image.fromarray(parsed).resize((size, size)), np.float64)  # Pillow's default
    kept = np.zeros_like(big)
    x1, y1, x2, y2 = (
        box[0] - crop_box[0],
        box[1] - crop_box[1],
        box[2] - crop_box[0],
        box[3] - crop_box[1],
    )
    kept[y1:y2, x1:x2] = big[y1:y2, x1:x2]
    kept[: int(size * upper)] = 0
    k = int(blur_ratio * size // 2 * 2) + 1
    return (gaussian_blur_reference(kept, k) if k > 1 else kept), crop_box


def bilinear_resize(img, w, h):
    # cv2.INTER_LINEAR: half-pixel centres, edge clamp, no antialiasing
    def axis(n_out, n_in):
        pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        lo = np.floor(pos).astype(int)
        frac = pos - lo
        frac[lo < 0], lo[lo < 0] = 0.0, 0
        at_end = lo >= n_in - 1
        frac[at_end], lo[at_end] = 0.0, n_in - 1
        return lo, np.minimum(lo + 1, n_in - 1), frac

    f = img.astype(np.float64)
    y0, y1, fy = axis(h, img.shape[0])
    x0, x1, fx = axis(w, img.shape[1])
    rows = f[y0] * (1 - fy)[:, None, None] + f[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def expected_paste(frame, face, box, mask, crop_box):
    x1, y1, x2, y2 = box
    cx1, cy1, cx2, cy2 = crop_box
    crop = black_crop(frame, crop_box).astype(np.float64)
    crop[y1 - cy1 : y2 - cy1, x1 - cx1 : x2 - cx1] = np.round(
        bilinear_resize(face, x2 - x1, y2 - y1)
    )
    out = frame.astype(np.float64)
    fx1, fy1, fx2, fy2 = (
        max(cx1, 0),
        max(cy1, 0),
        min(cx2, frame.shape[1]),
        min(cy2, frame.shape[0]),
    )
    m = mask.astype(np.float64)[fy1 - cy1 : fy2 - cy1, fx1 - cx1 : fx2 - cx1, None]
    c = crop[fy1 - cy1 : fy2 - cy1, fx1 - cx1 : fx2 - cx1]
    out[fy1:fy2, fx1:fx2] = np.round((c * m + out[fy1:fy2, fx1:fx2] * (255 - m)) / 255)
    return out


def within_one(a, b, fraction=0.999):
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    assert d.max() <= 2, f"max diff {d.max()}"
    assert (d <= 1).mean() >= fraction, f"{(d <= 1).mean():.5f} within +-1"


# --- blend_mask ---


@pytest.mark.parametrize("where", list(BOXES))
@pytest.mark.parametrize("blur_ratio", [0.05, 0.1])
def test_blend_mask_matches_recomputation(where, blur_ratio):
    frame = smooth_image(H, W, seed=1)
    before = frame.copy()
    box = BOXES[where]
    parser = StubParser()
    # When
    mask, crop_box = blend_mask(frame, box, parser, blur_ratio=blur_ratio)
    # Then the parser saw the black-filled RGB crop once, in jaw mode
    want_box, s = expected_crop_box(box)
    assert crop_box == want_box and all(type(v) is int for v in crop_box)
    assert len(parser.calls) == 1
    seen, mode = parser.calls[0]
    assert mode == "jaw" and seen.dtype == np.uint8
    np.testing.assert_array_equal(seen, black_crop(frame, want_box)[:, :, ::-1])
    # and the mask is the feathered lower part of the parse inside the box
    expected, _ = expected_blend_mask(frame, box, parser.mask(seen), blur_ratio=blur_ratio)
    assert mask.dtype == np.uint8 and mask.shape == (2 * s, 2 * s) and mask.flags.c_contiguous
    assert mask.max() > 200
    within_one(mask, expected)
    assert np.array_equal(frame, before)


@pytest.mark.parametrize("where", ["centre", "top_left"])
@pytest.mark.parametrize("upper", [0.5, 0.3])
def test_unblurred_mask_is_pillow_bicubic_cut_to_the_box(where, upper):
    # blur_ratio 0 gives kernel 1 (the identity), so the resize and the cuts are compared exactly
    frame, box, parser = smooth_image(H, W, seed=2), BOXES[where], StubParser()
    mask, _ = blend_mask(frame, box, parser, blur_ratio=0.0, upper_boundary_ratio=upper)
    expected, _ = expected_blend_mask(
        frame, box, parser.mask(parser.calls[0][0]), upper=upper, blur_ratio=0.0
    )
    np.testing.assert_array_equal(mask, expected.astype(np.uint8))
    # and the check can tell the filters apart: a bilinear resize would not pass it
    size = mask.shape[0]
    bilinear = np.asarray(
        Image.fromarray(parser.mask(parser.calls[0][0])).resize((size, size), Image.BILINEAR)
    )
    assert np.count_nonzero((mask > 0) & (mask != bilinear)) > 50


def test_blend_mask_mode_and_expand_are_passed_through():
    frame, box, parser = smooth_image(H, W, seed=3), BOXES["centre"], StubParser()
    mask, crop_box = blend_mask(frame, box, parser, mode="raw", expand=1.2)
    assert parser.calls[0][1] == "raw"
    assert crop_box == expected_crop_box(box, 1.2)[0] == crop_box_for(box, 1.2)[0]
    within_one(
        mask, expected_blend_mask(frame, box, parser.mask(parser.calls[0][0]), expand=1.2)[0]
    )


def test_blend_mask_with_face_parser_over_a_stub_net():
    class Net(torch.nn.Module):  # parameter-less: skin everywhere in the lower 3/4
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 19, 512, 512)
            logits[:, 1, 128:] = 1.0
            logits[:, 0, :128] = 1.0
            return logits

    frame, box = smooth_image(H, W, seed=4), BOXES["bottom_right"]
    mask, _ = blend_mask(frame, box, FaceParser(Net()))
    parsed = np.zeros((512, 512), np.uint8)
    parsed[128 - 16 :] = 255  # the jaw dilation grows the skin 16 rows upward,
    cheeks = (np.arange(512) <= 256 - 90) | (np.arange(512) >= 256 + 90)
    parsed[128 - 16 : 128 - 14, cheeks] = 0  # and in the cheeks two erosions take 2 rows back
    within_one(mask, expected_blend_mask(frame, box, parsed)[0])


@pytest.mark.parametrize("box", [(10, 10, 10, 50), (30, 40, 20, 60), (5, 5, 6, 6)])
def test_empty_or_tiny_box_raises(box):
    with pytest.raises(ValueError):
        blend_mask(smooth_image(H, W), box, StubParser())


# --- paste_face ---


@pytest.mark.parametrize("where", list(BOXES))
@pytest.mark.parametrize("face_size", [256, None])
def test_paste_face_matches_float_composite(where, face_size):
    frame = smooth_image(H, W, seed=5)
    box = BOXES[where]
    x1, y1, x2, y2 = box
    face = smooth_image(face_size or y2 - y1, face_size or x2 - x1, seed=6)
    mask, crop_box = blend_mask(frame, box, StubParser())
    frame_before, face_before, mask_before = frame.copy(), face.copy(), mask.copy()
    # When
    out = paste_face(frame, face, box, mask, crop_box)
    # Then
    assert out.dtype == np.uint8 and out.shape == frame.shape and out.flags.c_contiguous
    assert not np.shares_memory(out, frame)
    within_one(out, expected_paste(frame, face, box, mask, crop_box))
    # pixels outside the box never change
    outside = np.ones((H, W), bool)
    outside[y1:y2, x1:x2] = False
    np.testing.assert_array_equal(out[outside], frame[outside])
    assert not np.array_equal(out, frame)
    for a, b in ((frame, frame_before), (face, face_before), (mask, mask_before)):
        assert np.array_equal(a, b)


def test_full_mask_pastes_the_resized_face_and_zero_mask_keeps_the_frame():
    frame, box = smooth_image(H, W, seed=7), BOXES["centre"]
    x1, y1, x2, y2 = box
    face = smooth_image(256, 256, seed=8)  # shrinking to 140x170: no antialiasing allowed
    crop_box, s = expected_crop_box(box)
    full = paste_face(frame, face, box, np.full((2 * s, 2 * s), 255, np.uint8), crop_box)
    within_one(full[y1:y2, x1:x2], bilinear_resize(face, x2 - x1, y2 - y1), fraction=0.999)
    none = paste_face(frame, face, box, np.zeros((2 * s, 2 * s), np.uint8), crop_box)
    np.testing.assert_array_equal(none, frame)


def test_half_mask_rounds_like_pillow():
    frame = np.full((40, 40, 3), 10, np.uint8)
    face = np.full((20, 20, 3), 200, np.uint8)
    box = (10, 10, 30, 30)
    crop_box, s = expected_crop_box(box)
    for m in (1, 77, 128, 254):
        out = paste_face(frame, face, box, np.full((2 * s, 2 * s), m, np.uint8), crop_box)
        assert out[20, 20, 0] == round((200 * m + 10 * (255 - m)) / 255), m


def test_paste_face_rejects_a_mask_of_the_wrong_size():
    frame, box = smooth_image(H, W), BOXES["centre"]
    crop_box, s = expected_crop_box(box)
    with pytest.raises(ValueError, match="mask"):
        paste_face(frame, frame[:256, :256], box, np.zeros((2 * s + 1, 2 * s), np.uint8), crop_box)
