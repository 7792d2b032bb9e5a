"""models/musetalk/crop.py: the v1.5 margin box and the Lanczos-4 crop."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from models.musetalk import crop_face


def frame(height=180, width=240, seed=0) -> np.ndarray:
    """A smooth BGR test frame with some noise (so resampling filters differ visibly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) % 64 * 4], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def test_box_used_adds_the_margin_and_the_face_is_its_lanczos_resize():
    # Given a frame and a landmark box
    img = frame()
    before = img.copy()
    # When
    face, box_used = crop_face(img, (50, 40, 130, 120))
    # Then the box is extended 10 rows down, and the face is that slice resized with Lanczos-4
    assert box_used == (50, 40, 130, 130) and all(type(v) is int for v in box_used)
    expected = cv2.resize(img[40:130, 50:130].copy(), (256, 256), interpolation=cv2.INTER_LANCZOS4)
    assert face.shape == (256, 256, 3) and face.dtype == np.uint8 and face.flags.c_contiguous
    diff = np.abs(face.astype(int) - expected.astype(int))
    assert (diff <= 1).mean() >= 0.999 and diff.max() <= 1
    np.testing.assert_array_equal(img, before)
    assert not np.shares_memory(face, img)
    # and other filters, or the box without its margin, would not pass that check
    cubic = cv2.resize(img[40:130, 50:130], (256, 256), interpolation=cv2.INTER_CUBIC)
    assert (np.abs(face.astype(int) - cubic.astype(int)) <= 1).mean() < 0.99
    no_margin = cv2.resize(img[40:120, 50:130], (256, 256), interpolation=cv2.INTER_LANCZOS4)
    assert (np.abs(face.astype(int) - no_margin.astype(int)) <= 1).mean() < 0.9


def test_margin_is_clipped_at_the_bottom_edge_and_options_apply():
    img = frame(height=100)
    face, box_used = crop_face(img, (10, 20, 90, 95))
    assert box_used == (10, 20, 90, 100)
    np.testing.assert_array_equal(
        face, cv2.resize(img[20:100, 10:90], (256, 256), interpolation=cv2.INTER_LANCZOS4))
    face, box_used = crop_face(img, (10, 20, 90, 60), extra_margin=0, size=96)
    assert box_used == (10, 20, 90, 60) and face.shape == (96, 96, 3)
    # numpy ints in the box and a CPU tensor frame are accepted
    face_t, box_t = crop_face(torch.from_numpy(img), tuple(np.int64(v) for v in (10, 20, 90, 60)))
    assert box_t == (10, 20, 90, 70) and all(type(v) is int for v in box_t)
    np.testing.assert_array_equal(face_t, crop_face(img, (10, 20, 90, 60))[0])


@pytest.mark.parametrize(
    "box",
    [(0, 0, 0, 0), (50, 40, 50, 120), (50, 40, 40, 120), (10, 300, 90, 320), (-5, 10, 40, 50)],
)
def test_empty_or_misplaced_box_raises(box):
    with pytest.raises(ValueError):
        crop_face(frame(), box)


def test_rejects_non_uint8_or_non_bgr_frames():
    with pytest.raises(ValueError):
        crop_face(frame().astype(np.float32), (0, 0, 10, 10))
    with pytest.raises(ValueError):
        crop_face(frame()[..., 0], (0, 0, 10, 10))
