"""models/face/boxes.py: anchors, decode and NMS on hand-computed boxes (PIPELINES.md §3 #3, #5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.face.boxes import anchors, decode, head_stride, nms


def test_head_strides():
    assert [head_stride(i) for i in range(6)] == [4, 8, 16, 32, 64, 128]


@pytest.mark.parametrize("head", range(6))
def test_anchor_centres_and_sizes(head):
    s = 2 ** (head + 2)
    ys, xs = torch.tensor([0, 2, 5]), torch.tensor([0, 3, 1])
    expected = torch.tensor(
        [
            [s / 2, s / 2, 4 * s, 4 * s],
            [s / 2 + 3 * s, s / 2 + 2 * s, 4 * s, 4 * s],
            [s / 2 + s, s / 2 + 5 * s, 4 * s, 4 * s],
        ]
    )
    assert torch.equal(anchors(head, ys, xs), expected)


def test_zero_offsets_decode_to_the_anchor():
    # anchor centre (14, 10), side 16
    box = decode(torch.zeros(1, 4), torch.tensor([[14.0, 10.0, 16.0, 16.0]]))
    assert box.tolist() == [[6.0, 2.0, 22.0, 18.0]]


def test_offsets_scale_with_variances_and_anchor_size():
    # centre + (0.625, -1.25) * 0.1 * 32 = (12 + 2, 20 - 4); size 32 * exp((ln 2 / 0.2, 0) * 0.2)
    loc = torch.tensor([[0.625, -1.25, math.log(2) / 0.2, 0.0]])
    box = decode(loc, torch.tensor([[12.0, 20.0, 32.0, 32.0]]))
    np.testing.assert_allclose(box.numpy(), [[14 - 32, 16 - 16, 14 + 32, 16 + 16]], atol=1e-5)


def test_far_corner_is_top_left_plus_size_in_float32():
    # The reference computes x2 = x1 + w, not centre + w / 2; for these offsets the two differ in
    # the last float32 bit, which can move an int()-truncated box edge by a pixel.
    loc = torch.tensor([[0.827, -0.292, -0.594, -0.37]])
    prior = torch.tensor([[14.0, 10.0, 16.0, 16.0]])
    box = decode(loc, prior)
    centre = prior[:, :2] + loc[:, :2] * 0.1 * prior[:, 2:]
    size = prior[:, 2:] * torch.exp(loc[:, 2:] * 0.2)
    top_left = centre - size / 2
    assert torch.equal(box, torch.cat((top_left, size + top_left), dim=1))
    assert not torch.equal(box[:, 2:], centre + size / 2)


def test_nms_uses_the_plus_one_area_convention():
    # Two 10x10-pixel boxes overlapping by 5 columns: IoU = 50 / 150 = 0.33 with inclusive pixels
    # (suppressed), but 36 / 126 = 0.29 with plain areas (which would keep both).
    dets = np.array([[0, 0, 9, 9, 0.9], [5, 0, 14, 9, 0.8]], dtype=np.float32)
    assert nms(dets, 0.3).tolist() == [0]


def test_nms_keeps_a_box_at_exactly_the_threshold():
    # A 5x6-pixel box inside a 10x10 one: IoU = 30 / 100 = 0.3, and "<= 0.3" keeps it
    dets = np.array([[0, 0, 9, 9, 0.9], [0, 0, 4, 5, 0.8]], dtype=np.float32)
    assert nms(dets, 0.3).tolist() == [0, 1]


def test_nms_visits_by_descending_score_and_returns_best_first():
    dets = np.array(
        [
            [100, 100, 120, 120, 0.6],  # alone
            [0, 0, 20, 20, 0.7],  # suppressed by the next one
            [1, 1, 21, 21, 0.95],
            [50, 50, 60, 60, 0.8],  # alone
        ],
        dtype=np.float32,
    )
    assert nms(dets, 0.3).tolist() == [2, 3, 0]


def test_nms_of_nothing():
    assert nms(np.zeros((0, 5), np.float32)).tolist() == []
