"""models/face/s3fd.py: network, loader and official post-processing (PIPELINES.md §3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.face.s3fd import (
    S3FD,
    L2Norm,
    best_box,
    best_boxes,
    detect,
    detections_from_heads,
    load_s3fd,
    pooled_candidates,
)
from models.checkpoint import CheckpointError

NAME = "s3fd"

# head map sizes for a 64x64 input: strides 4, 8, 16, then fc7 is pool5 (2x2) + 4 px = 6x6
HEAD_SIZES_64 = [(16, 16), (8, 8), (4, 4), (6, 6), (3, 3), (2, 2)]


# --- an independent functional S3FD driven by the state dict ---


def functional_s3fd(sd, x):
    def conv(name, h, stride=1, padding=1):
        return F.relu(F.conv2d(h, sd[f"{name}.weight"], sd[f"{name}.bias"], stride, padding))

    def l2norm(h, name):
        return (
            h
            / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            * sd[f"{name}.weight"][None, :, None, None]
        )

    def head(name, h):
        return F.conv2d(h, sd[f"{name}.weight"], sd[f"{name}.bias"], 1, 1)

    h = conv("conv1_2", conv("conv1_1", x))
    h = conv("conv2_2", conv("conv2_1", F.max_pool2d(h, 2)))
    f3 = conv("conv3_3", conv("conv3_2", conv("conv3_1", F.max_pool2d(h, 2))))
    f4 = conv("conv4_3", conv("conv4_2", conv("conv4_1", F.max_pool2d(f3, 2))))
    f5 = conv("conv5_3", conv("conv5_2", conv("conv5_1", F.max_pool2d(f4, 2))))
    f7 = conv("fc7", conv("fc6", F.max_pool2d(f5, 2), padding=3), padding=0)
    f6_2 = conv("conv6_2", conv("conv6_1", f7, padding=0), stride=2)
    f7_2 = conv("conv7_2", conv("conv7_1", f6_2, padding=0), stride=2)
    f3, f4, f5 = l2norm(f3, "conv3_3_norm"), l2norm(f4, "conv4_3_norm"), l2norm(f5, "conv5_3_norm")
    conf0 = head("conv3_3_norm_mbox_conf", f3)
    conf0 = torch.cat([conf0[:, :3].max(dim=1, keepdim=True).values, conf0[:, 3:]], dim=1)
    out = [conf0, head("conv3_3_norm_mbox_loc", f3)]
    for name, f in [
        ("conv4_3_norm", f4),
        ("conv5_3_norm", f5),
        ("fc7", f7),
        ("conv6_2", f6_2),
        ("conv7_2", f7_2),
    ]:
        out += [head(f"{name}_mbox_conf", f), head(f"{name}_mbox_loc", f)]
    return out


# --- hand-built head outputs ---


def empty_heads(batch, sizes=HEAD_SIZES_64):
    """Heads where every cell is background (face probability ~2e-9) with zero offsets."""
    heads = []
    for h, w in sizes:
        conf = torch.zeros(batch, 2, h, w)
        conf[:, 1] = -20.0
        heads += [conf, torch.zeros(batch, 4, h, w)]
    return heads


def put_face(heads, head, image, y, x, prob, loc=(0.0, 0.0, 0.0, 0.0)):
    heads[2 * head][image, :, y, x] = torch.tensor([0.0, math.log(prob / (1 - prob))])
    heads[2 * head + 1][image, :, y, x] = torch.tensor(loc)


# --- network and loader ---


def test_state_dict_matches_manifest_exactly(checkpoints):
    state = S3FD().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == checkpoints.manifest_shapes(NAME)
    assert "pixel_mean" not in state


def test_loads_plain_state_dict_strictly(checkpoints):
    net = load_s3fd(checkpoints.file(NAME, "plain"))
    assert not net.training
    for key, value in checkpoints.state_dict(NAME).items():
        assert torch.equal(net.state_dict()[key], value), key


def test_training_container_is_not_an_s3fd_file(checkpoints):
    with pytest.raises(CheckpointError, match="plain state dict"):
        load_s3fd(checkpoints.file(NAME, "training"))


def test_missing_key_is_named(checkpoints, tmp_path):
    state = dict(checkpoints.state_dict(NAME))
    del state["conv4_3_norm.weight"]
    path = checkpoints.save(state, tmp_path / "s3fd.pth")
    with pytest.raises(ValueError, match=r"missing keys: conv4_3_norm\.weight"):
        load_s3fd(path)


def test_raw_outputs_match_functional_recomputation(checkpoints):
    # Given the random checkpoint and a 2 x 64 x 64 input
    net = load_s3fd(checkpoints.file(NAME, "plain"))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 50
    # When
    with torch.inference_mode():
        out = net(x)
        expected = functional_s3fd(checkpoints.state_dict(NAME), x)
    # Then 12 tensors, conf/loc per head with the fc6 quirk in the sizes, equal to the reference
    assert len(out) == 12
    for i, (h, w) in enumerate(HEAD_SIZES_64):
        assert out[2 * i].shape == (2, 2, h, w)
        assert out[2 * i + 1].shape == (2, 4, h, w)
    for got, want in zip(out, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_fc6_output_is_four_pixels_larger():
    # pool5 of a 96x128 input is 3x4; fc6 (3x3, padding 3) makes it 7x8
    net = S3FD().eval()
    with torch.inference_mode():
        out = net(torch.zeros(1, 3, 96, 128))
    assert out[6].shape[-2:] == (7, 8)


def test_conv3_3_background_is_max_of_three_channels(checkpoints):
    net = load_s3fd(checkpoints.file(NAME, "plain"))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 50
    captured = {}
    hook = net.conv3_3_norm_mbox_conf.register_forward_hook(
        lambda m, i, o: captured.setdefault("raw", o)
    )
    with torch.inference_mode():
        conf0 = net(x)[0]
    hook.remove()
    raw = captured["raw"]
    assert torch.equal(conf0[:, 0], raw[:, :3].amax(dim=1))
    assert torch.equal(conf0[:, 1], raw[:, 3])


def test_l2norm_normalises_over_channels_and_scales():
    norm = L2Norm(4, scale=10)
    assert norm.weight.tolist() == [10.0] * 4
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x = torch.randn(2, 4, 3, 5)
    out = norm(x)
    unit = out / norm.weight.view(1, -1, 1, 1)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(2, 3, 5))
    torch.testing.assert_close(unit, x / x.norm(dim=1, keepdim=True))
    assert torch.equal(norm(torch.zeros(1, 4, 2, 2)), torch.zeros(1, 4, 2, 2))  # eps avoids NaN


def test_l2norm_initial_scales():
    net = S3FD()
    assert net.conv3_3_norm.weight.unique().tolist() == [10.0]
    assert net.conv4_3_norm.weight.unique().tolist() == [8.0]
    assert net.conv5_3_norm.weight.unique().tolist() == [5.0]


# --- post-processing on hand-built heads ---


def test_each_head_decodes_to_its_anchor():
    # Given one confident face per image, image i on head i, zero offsets
    cells = [(3, 5), (2, 1), (1, 3), (5, 4), (2, 0), (1, 1)]
    heads = empty_heads(6)
    for i, (y, x) in enumerate(cells):
        put_face(heads, i, i, y, x, 0.9)
    # When
    dets = detections_from_heads(heads)
    # Then image i has exactly the anchor of head i: centre s/2 + (x, y) * s, side 4s
    for i, (y, x) in enumerate(cells):
        s = 2 ** (i + 2)
        cx, cy = s / 2 + x * s, s / 2 + y * s
        assert dets[i].dtype == np.float32 and dets[i].shape == (1, 5)
        assert dets[i][0, :4].tolist() == [cx - 2 * s, cy - 2 * s, cx + 2 * s, cy + 2 * s]
        assert dets[i][0, 4] == pytest.approx(0.9, abs=1e-6)


def test_offsets_move_and_scale_the_box():
    # head 1 (stride 8, anchor 32) at (y=2, x=1): anchor centre (12, 20)
    heads = empty_heads(1)
    put_face(heads, 1, 0, 2, 1, 0.8, loc=(0.625, -1.25, math.log(2) / 0.2, 0.0))
    (dets,) = detections_from_heads(heads)
    np.testing.assert_allclose(dets[:, :4], [[14 - 32, 16 - 16, 14 + 32, 16 + 16]], atol=1e-5)


def test_candidate_threshold_is_0_05():
    heads = empty_heads(1)
    put_face(heads, 0, 0, 1, 1, 0.049)
    put_face(heads, 0, 0, 8, 8, 0.051)
    (rows,) = pooled_candidates(heads)
    assert len(rows) == 1
    assert rows[0, 4] == pytest.approx(0.051, abs=1e-6)


def test_final_score_threshold_is_0_5():
    heads = empty_heads(1)
    put_face(heads, 0, 0, 1, 1, 0.49)
    put_face(heads, 2, 0, 3, 3, 0.51)  # far away: no NMS interaction
    (dets,) = detections_from_heads(heads)
    assert len(dets) == 1 and dets[0, 4] == pytest.approx(0.51, abs=1e-6)


def test_candidates_are_pooled_over_the_batch():
    # Given cell A passing in image 0 only and cell B passing in both images
    heads = empty_heads(2)
    put_face(heads, 0, 0, 1, 1, 0.9)  # A
    put_face(heads, 0, 0, 4, 4, 0.7)  # B in image 0
    put_face(heads, 0, 1, 4, 4, 0.8)  # B in image 1
    # When
    rows = pooled_candidates(heads)
    # Then each image gets a row per passing (image, cell): [A, B (from image 0), B (from image 1)]
    assert rows.shape == (2, 3, 5)
    assert rows[1, 0, 4] < 1e-6  # image 1's own score at A
    np.testing.assert_array_equal(rows[0, 1], rows[0, 2])
    np.testing.assert_array_equal(rows[1, 1], rows[1, 2])
    assert rows[1, 1, 4] == pytest.approx(0.8, abs=1e-6)
    # and after NMS and the 0.5 threshold, each image keeps only its own faces, once
    dets = detections_from_heads(heads)
    assert [len(d) for d in dets] == [2, 1]
    assert dets[1][0, 4] == pytest.approx(0.8, abs=1e-6)


def test_overlapping_candidates_are_suppressed_best_first():
    # Neighbouring head-0 cells overlap with IoU 221 / 357 = 0.62; a far cell survives
    heads = empty_heads(1)
    put_face(heads, 0, 0, 3, 3, 0.7)
    put_face(heads, 0, 0, 3, 4, 0.9)
    put_face(heads, 0, 0, 12, 12, 0.8)
    (dets,) = detections_from_heads(heads)
    assert dets[:, 4].tolist() == pytest.approx([0.9, 0.8], abs=1e-6)
    assert dets[0, :4].tolist() == [10.0, 6.0, 26.0, 22.0]


def test_no_face_gives_an_empty_array():
    dets = detections_from_heads(empty_heads(2))
    assert [d.shape for d in dets] == [(0, 5), (0, 5)]


# --- detect and the best box ---


def test_preprocess_is_rgb_minus_caffe_means():
    frame = np.zeros((1, 2, 3, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 30  # B, G, R
    x = S3FD().preprocess(torch.from_numpy(frame))
    assert x.shape == (1, 3, 2, 3) and x.dtype == torch.float32
    assert x[0, :, 0, 0].tolist() == [30 - 104, 20 - 117, 10 - 123]


def test_detect_runs_the_net_in_batches_and_post_processes(checkpoints):
    # Given a random net whose regression outputs are scaled down to give sane boxes
    state = dict(checkpoints.state_dict(NAME))
    for key in state:
        if "mbox_loc" in key:
            state[key] = state[key] * 0.02
    net = S3FD().eval()
    net.load_state_dict(state)
    frames = np.random.default_rng(0).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    # When
    dets = detect(net, frames, batch_size=2)
    # Then one (K, 5) float32 array per frame, equal to the per-batch pipeline, best first
    with torch.inference_mode():
        expected = detections_from_heads(net(net.preprocess(torch.from_numpy(frames[:2]))))
        expected += detections_from_heads(net(net.preprocess(torch.from_numpy(frames[2:]))))
    assert len(dets) == 3
    for got, want in zip(dets, expected, strict=True):
        assert got.dtype == np.float32 and got.shape[1] == 5
        np.testing.assert_array_equal(got, want)
        assert np.all(got[:, 4] > 0.5) and np.all(np.diff(got[:, 4]) <= 0)


@pytest.mark.parametrize(
    "frames", [np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8)]
)
def test_detect_rejects_non_uint8_batches(frames):
    with pytest.raises(ValueError):
        detect(S3FD().eval(), frames)


def test_best_box_clips_negatives_and_truncates():
    dets = np.array([[-3.7, 2.9, 50.99, 60.2, 0.9], [1, 1, 5, 5, 0.8]], np.float32)
    assert best_box(dets) == (0, 2, 50, 60)
    assert best_box(np.zeros((0, 5), np.float32)) is None
    assert best_boxes([dets, np.zeros((0, 5), np.float32)]) == [(0, 2, 50, 60), None]
