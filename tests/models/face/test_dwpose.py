"""models/face/dwpose.py: whole-frame affine, flip test, SimCC decoding, ONNX session wrapper.

Expected values are recomputed here from the mmpose 1.1.0 definitions (PIPELINES.md §4.1 item 2),
never by calling back into the module under test: the affine in closed form, SimCC peaks placed
by hand, and the stub ONNX graph re-run in numpy from its own initializers.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.face.dwpose import (
    FLIP_INDICES,
    DWPose,
    decode_simcc,
    flip_back,
    load_dwpose,
    preprocess,
    to_frame,
    warp_matrix,
    whole_frame_center_scale,
)
from tests.models.face.build_dwpose import build_dwpose_onnx

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


@pytest.fixture(scope="module")
def stub_onnx(tmp_path_factory):
    return build_dwpose_onnx(tmp_path_factory.mktemp("dwpose") / "dw_stub.onnx", seed=0)


def expected_center_scale(h, w):
    """Whole-frame box x 1.25, widened to w:h = 3:4 (plain float64 arithmetic)."""
    sw, sh = 1.25 * w, 1.25 * h
    if sw > 0.75 * sh:
        sh = sw / 0.75
    else:
        sw = 0.75 * sh
    return np.array([w / 2, h / 2]), np.array([sw, sh])


def official_style_matrix(h, w):
    """mmpose's three float32 point pairs for the whole frame, solved by OpenCV."""
    c, s = expected_center_scale(h, w)
    src = np.float32([c, c - [0, s[0] / 2], c - [s[0] / 2, s[0] / 2]])
    dst = np.float32([[144, 192], [144, 48], [0, 48]])
    return cv2.getAffineTransform(src, dst)


def expected_input(frame):
    h, w = frame.shape[:2]
    warped = cv2.warpAffine(frame, official_style_matrix(h, w), (288, 384), flags=cv2.INTER_LINEAR)
    x = (cv2.cvtColor(warped, cv2.COLOR_BGR2RGB).astype(np.float32) - MEAN) / STD
    return x.transpose(2, 0, 1)[None]


def input_to_frame(points, h, w):
    """Input pixels -> frame pixels, the affine's inverse: x_in * s_w / 288 + c_x - s_w / 2."""
    c, s = expected_center_scale(h, w)
    return np.asarray(points, np.float64) / [288, 384] * s + c - s / 2


# --- geometry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("h,w,scale", [(1080, 1920, (2400, 3200)), (1920, 1080, (1800, 2400)),
                                       (384, 288, (360, 480)), (50, 70, (87.5, 87.5 / 0.75))])
def test_whole_frame_center_scale(h, w, scale):
    center, got = whole_frame_center_scale(h, w)
    assert center.dtype == np.float32 and got.dtype == np.float32
    np.testing.assert_array_equal(center, [w / 2, h / 2])
    np.testing.assert_allclose(got, scale, rtol=1e-6)


@pytest.mark.parametrize("h,w", [(1080, 1920), (1920, 1080), (123, 457)])
def test_warp_matrix_maps_centre_and_scale(h, w):
    c, s = expected_center_scale(h, w)
    k = 288 / s[0]  # = 384 / s[1]: the aspect is fixed
    closed_form = np.array([[k, 0, 144 - k * c[0]], [0, k, 192 - k * c[1]]])
    m = warp_matrix(*whole_frame_center_scale(h, w))
    assert m.shape == (2, 3) and m.dtype == np.float64
    np.testing.assert_allclose(m, closed_form, atol=1e-4)  # float32 points: ~5e-6 off
    np.testing.assert_array_equal(m, official_style_matrix(h, w))


def test_preprocess_is_warp_rgb_normalise():
    frame = np.random.default_rng(3).integers(0, 256, (90, 161, 3), dtype=np.uint8)
    before = frame.copy()
    x, center, scale = preprocess(frame)
    np.testing.assert_array_equal(frame, before)
    assert x.shape == (1, 3, 384, 288) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_array_equal(x, expected_input(frame))
    # letterboxed: the 161-wide frame spans 288 / 1.25 = 230.4 of the 288 columns
    assert np.all(x[0, :, :, :20] == (-MEAN / STD)[:, None, None])


def test_preprocess_rejects_non_bgr_uint8():
    with pytest.raises(ValueError):
        preprocess(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError):
        preprocess(np.zeros((10, 10), np.uint8))


# --- flip indices, flip back, decoding --------------------------------------------------------


def test_flip_indices_mirror_coco_wholebody():
    flip = np.asarray(FLIP_INDICES)
    assert flip.shape == (133,)
    np.testing.assert_array_equal(flip[flip], np.arange(133))  # an involution
    face = 23
    # body: nose, eyes, ears, shoulders, ankles; feet; face: jaw ends, chin, brow ends, nose
    # ridge, nostrils, eye corners, eyes, mouth corners, lower lip, inner lip; hands joint by joint
    known = {0: 0, 1: 2, 3: 4, 5: 6, 15: 16, 17: 20, 19: 22,
             face + 0: face + 16, face + 8: face + 8,
             face + 17: face + 26, face + 27: face + 27, face + 30: face + 30,
             face + 31: face + 35, face + 36: face + 45, face + 39: face + 42,
             face + 40: face + 47, face + 48: face + 54, face + 51: face + 51,
             face + 55: face + 59, face + 57: face + 57, face + 61: face + 63,
             face + 62: face + 62, face + 65: face + 67, face + 66: face + 66,
             91: 112, 100: 121, 111: 132}
    for k, v in known.items():
        assert flip[k] == v, k
    # fixed points: nose; chin, 4 nose-ridge points, nose bottom, 4 mouth centre-line points
    assert sorted(np.flatnonzero(flip == np.arange(133)).tolist()) == [
        0, face + 8, face + 27, face + 28, face + 29, face + 30, face + 33, face + 51, face + 57,
        face + 62, face + 66]


def test_flip_back_swaps_keypoints_and_reverses_x():
    rng = np.random.default_rng(0)
    sx, sy = rng.standard_normal((133, 576)), rng.standard_normal((133, 768))
    bx, by = flip_back(sx, sy)
    np.testing.assert_array_equal(bx[1], sx[2, ::-1])  # left eye <- mirrored right eye
    np.testing.assert_array_equal(by[1], sy[2])
    np.testing.assert_array_equal(bx[23 + 36, 5], sx[23 + 45, 570])
    np.testing.assert_array_equal(bx[0, 0], sx[0, 575])


def test_decode_simcc_known_peaks():
    rng = np.random.default_rng(1)
    sx = rng.uniform(-0.2, 0.1, (133, 576)).astype(np.float32)
    sy = rng.uniform(-0.2, 0.1, (133, 768)).astype(np.float32)
    sx[0, 100], sy[0, 700] = 0.9, 0.7  # score = min = 0.7
    sx[1, 575], sy[1, 0] = 0.3, 0.8
    sx[2, 7] = sx[2, 9] = 0.5  # tie: the first wins
    sy[2, 3] = 0.6
    sx[3], sy[3] = -1.0, -1.0  # no positive response
    sx[3, 200], sy[3, 300] = -0.01, 0.5  # score -0.01 <= 0 -> location -1
    kp, sc = decode_simcc(sx, sy)
    assert kp.shape == (133, 2) and kp.dtype == np.float32 and sc.dtype == np.float32
    np.testing.assert_array_equal(kp[:4], [[50, 350], [287.5, 0], [3.5, 1.5], [-0.5, -0.5]])
    np.testing.assert_allclose(sc[:4], [0.7, 0.3, 0.5, -0.01], rtol=1e-6)


def test_to_frame_inverts_the_affine():
    pts = np.array([[0, 0], [144, 192], [287.5, 383.5], [-0.5, -0.5]], np.float32)
    got = to_frame(pts, *whole_frame_center_scale(1080, 1920))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, input_to_frame(pts, 1080, 1920), atol=1e-9)
    np.testing.assert_allclose(got[1], [960, 540], atol=1e-9)
    # the warp sends each frame point back to the input point it came from
    m = official_style_matrix(1080, 1920)
    np.testing.assert_allclose(got @ m[:, :2].T + m[:, 2], pts, atol=1e-3)


# --- the wrapper on a scripted session ---------------------------------------------------------


class _Node:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class ScriptedSession:
    """Records the inputs; answers each run with the next (simcc_x, simcc_y) pair of `script`."""

    def __init__(self, script, batch):
        self.script, self.batch, self.feeds = list(script), batch, []

    def get_inputs(self):
        return [_Node("input", [self.batch, 3, 384, 288])]

    def get_outputs(self):
        return [_Node("simcc_x", [self.batch, 133, 576]), _Node("simcc_y", [self.batch, 133, 768])]

    def run(self, names, feed):
        assert names == ["simcc_x", "simcc_y"]
        (x,) = feed.values()
        self.feeds.append(x.copy())
        outs = [self.script.pop(0) for _ in range(len(x))]
        return [np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])]


def scripted_vectors():
    """An original pass and a mirrored pass with peaks placed by hand, and the keypoints they mean.

    Every keypoint k peaks at x bin 2k+10, y bin 3k+20 with 1.0 in the original pass; the mirrored
    pass predicts keypoint FLIP[k] at the mirrored x bin 575-(2k+10) with 0.6. Averaged: the same
    bins, score 0.8. Keypoint 5 disagrees: original 0.4 at (400, 500), mirrored 1.0 at x 100, y 600
    (after flipping back) -> the mirrored peak wins with 0.5.
    """
    flip = np.asarray(FLIP_INDICES)
    ax, ay = np.zeros((133, 576), np.float32), np.zeros((133, 768), np.float32)
    bx, by = np.zeros_like(ax), np.zeros_like(ay)
    bins = [(2 * k + 10, 3 * k + 20) for k in range(133)]
    for k, (u, v) in enumerate(bins):
        ax[k, u], ay[k, v] = 1.0, 1.0
        bx[flip[k], 575 - u], by[flip[k], v] = 0.6, 0.6
    ax[5], ay[5], bx[flip[5]], by[flip[5]] = 0, 0, 0, 0
    ax[5, 400], ay[5, 500] = 0.4, 0.4
    bx[flip[5], 575 - 100], by[flip[5], 600] = 1.0, 1.0
    bins[5] = (100, 600)
    scores = np.full(133, 0.8, np.float32)
    scores[5] = 0.5
    return (ax, ay), (bx, by), np.asarray(bins, np.float64) / 2, scores


@pytest.mark.parametrize("batch", [1, "batch"])
def test_flip_test_end_to_end_on_scripted_session(batch):
    original, mirrored, points, scores = scripted_vectors()
    session = ScriptedSession([original, mirrored], batch)
    frame = np.random.default_rng(5).integers(0, 256, (108, 192, 3), dtype=np.uint8)
    kp, sc = DWPose(session)(frame)
    feeds = np.concatenate(session.feeds)
    assert len(session.feeds) == (2 if batch == 1 else 1) and feeds.shape == (2, 3, 384, 288)
    np.testing.assert_array_equal(feeds[0], expected_input(frame)[0])
    np.testing.assert_array_equal(feeds[1], feeds[0][:, :, ::-1])
    assert kp.shape == (133, 2) and kp.dtype == np.float64 and sc.dtype == np.float32
    np.testing.assert_allclose(kp, input_to_frame(points, 108, 192), atol=1e-9)
    np.testing.assert_allclose(sc, scores, rtol=1e-6)


def test_without_flip_test_one_pass():
    original, _, _, _ = scripted_vectors()
    session = ScriptedSession([original], 1)
    kp, sc = DWPose(session, flip_test=False)(np.zeros((40, 30, 3), np.uint8))
    assert len(session.feeds) == 1
    k = np.arange(133)
    pts = np.stack([2 * k + 10, 3 * k + 20], 1) / 2
    pts[5] = (200, 250)
    np.testing.assert_allclose(kp, input_to_frame(pts, 40, 30), atol=1e-9)
    assert sc[5] == pytest.approx(0.4) and sc[0] == 1.0


# --- the ONNX path -----------------------------------------------------------------------------


def numpy_stub(path, x):
    """The stub graph (see build_dwpose.py) in float64 numpy, from its own initializers."""
    import onnx
    from onnx import numpy_helper

    w = {t.name: numpy_helper.to_array(t).astype(np.float64)
         for t in onnx.load(str(path)).graph.initializer}
    n = x.shape[0]
    pooled = x.astype(np.float64).reshape(n, 3, 96, 4, 72, 4).mean(axis=(3, 5))
    feats = np.einsum("kc,nchw->nkhw", w["W"][:, :, 0, 0], pooled) + w["b"][None, :, None, None]
    return feats.mean(axis=2) @ w["Mx"], feats.mean(axis=3) @ w["My"]


@pytest.mark.parametrize("dynamic", [False, True])
def test_onnx_stub_end_to_end(tmp_path, stub_onnx, dynamic):
    path = build_dwpose_onnx(tmp_path / "dyn.onnx", dynamic_batch=True) if dynamic else stub_onnx
    model = load_dwpose(path)
    frame = np.random.default_rng(7).integers(0, 256, (144, 256, 3), dtype=np.uint8)
    kp, sc = model(frame)
    assert kp.shape == (133, 2) and kp.dtype == np.float64 and np.isfinite(kp).all()
    assert sc.shape == (133,) and sc.dtype == np.float32

    # the same thing recomputed: own preprocessing, the graph in numpy, flip, average, decode
    x = expected_input(frame)
    sx, sy = numpy_stub(path, np.concatenate([x, x[..., ::-1]]))
    flip = np.asarray(FLIP_INDICES)
    ax = (sx[0] + sx[1][flip, ::-1]) / 2
    ay = (sy[0] + sy[1][flip]) / 2
    got_x, got_y, _, _ = model.simcc(frame)
    np.testing.assert_allclose(got_x, ax, atol=1e-4 * np.abs(ax).max())
    np.testing.assert_allclose(got_y, ay, atol=1e-4 * np.abs(ay).max())
    score = np.minimum(ax.max(1), ay.max(1))
    bins = np.stack([ax.argmax(1), ay.argmax(1)], 1).astype(np.float64)
    bins[score <= 0] = -1
    np.testing.assert_allclose(sc, score, atol=1e-4 * np.abs(ax).max())
    # an argmax can only move between near-equal bins; none is near a tie with this seed
    gap_x = np.sort(ax, 1)[:, -1] - np.sort(ax, 1)[:, -2]
    gap_y = np.sort(ay, 1)[:, -1] - np.sort(ay, 1)[:, -2]
    assert min(gap_x.min(), gap_y.min()) > 1e-3
    # atol: the scale is held in float32 (426.6667 for 144 x 256), the recomputation in float64
    np.testing.assert_allclose(kp, input_to_frame(bins / 2, 144, 256), atol=1e-4)


def test_load_dwpose_checks_file_and_signature(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dwpose(tmp_path / "absent.onnx")
    bad = build_dwpose_onnx(tmp_path / "bad.onnx", output_names=("x_out", "y_out"))
    with pytest.raises(ValueError, match="simcc_x"):
        load_dwpose(bad)
    wrong = ScriptedSession([], 1)
    wrong.get_inputs = lambda: [_Node("input", [1, 3, 256, 192])]
    with pytest.raises(ValueError, match="256"):
        DWPose(wrong)
