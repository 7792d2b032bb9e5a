"""models/musetalk/face_parsing.py: BiSeNet loading and logits, preprocessing, label -> mask rules.

Expectations are recomputed here from the state dict (a functional BiSeNet in float64), from
numpy (normalisation, morphology by shifted copies) and from the rule text of issue 10 (rules
12-15), never by calling back into the module under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models.checkpoint import CheckpointError
from models.musetalk.face_parsing import FaceParser, load_bisenet, mask_from_labels

from .build_bisenet import FILENAME, MANIFEST, build_bisenet

SKIN, NOSE, NECK = 1, 10, 14
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


# --- an independent functional BiSeNet (main head only), float64 ---


def _bn(sd, p, x):
    return F.batch_norm(
        x,
        sd[f"{p}.running_mean"],
        sd[f"{p}.running_var"],
        sd[f"{p}.weight"],
        sd[f"{p}.bias"],
        training=False,
        eps=1e-5,
    )


def _cbr(sd, p, x, padding):
    return F.relu(_bn(sd, f"{p}.bn", F.conv2d(x, sd[f"{p}.conv.weight"], padding=padding)))


def _block(sd, p, x, stride):
    r = F.relu(_bn(sd, f"{p}.bn1", F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1)))
    r = _bn(sd, f"{p}.bn2", F.conv2d(r, sd[f"{p}.conv2.weight"], padding=1))
    if f"{p}.downsample.0.weight" in sd:
        x = _bn(sd, f"{p}.downsample.1", F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride))
    return F.relu(x + r)


def _gate(x):
    return x.mean((2, 3), keepdim=True)


def _up2(x):  # nearest x2, written without F.interpolate
    return x.repeat_interleave(2, 2).repeat_interleave(2, 3)


def _align_corners_matrix(n_out, n_in):
    # bilinear with align_corners=True: source position d * (n_in - 1) / (n_out - 1)
    pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), lo + 1] += frac
    return torch.from_numpy(m)


def functional_bisenet(sd, x):
    sd = {k: v.double() for k, v in sd.items() if v.is_floating_point()}
    x = x.double()
    y = F.relu(
        _bn(sd, "cp.resnet.bn1", F.conv2d(x, sd["cp.resnet.conv1.weight"], stride=2, padding=3))
    )
    y = F.max_pool2d(y, 3, 2, 1)
    feats = []
    for i, stride in zip(range(1, 5), (1, 2, 2, 2)):
        y = _block(sd, f"cp.resnet.layer{i}.1", _block(sd, f"cp.resnet.layer{i}.0", y, stride), 1)
        feats.append(y)
    f8, f16, f32 = feats[1:]

    def arm(p, f):
        f = _cbr(sd, f"{p}.conv", f, 1)
        return f * torch.sigmoid(
            _bn(sd, f"{p}.bn_atten", F.conv2d(_gate(f), sd[f"{p}.conv_atten.weight"]))
        )

    s32 = arm("cp.arm32", f32) + _cbr(sd, "cp.conv_avg", _gate(f32), 0)
    up32 = _cbr(sd, "cp.conv_head32", _up2(s32), 1)
    up16 = _cbr(sd, "cp.conv_head16", _up2(arm("cp.arm16", f16) + up32), 1)
    fuse = _cbr(sd, "ffm.convblk", torch.cat([f8, up16], 1), 0)
    att = torch.sigmoid(
        F.conv2d(F.relu(F.conv2d(_gate(fuse), sd["ffm.conv1.weight"])), sd["ffm.conv2.weight"])
    )
    logits = F.conv2d(
        _cbr(sd, "conv_out.conv", fuse * att + fuse, 1), sd["conv_out.conv_out.weight"]
    )
    mh = _align_corners_matrix(x.shape[2], logits.shape[2])
    mw = _align_corners_matrix(x.shape[3], logits.shape[3])
    return mh @ logits @ mw.T


# --- independent mask rules (rule 15) ---


def jaw_kernel():
    k = np.zeros((33, 33), np.uint8)
    for r in range(10, 21):
        half = r - 10  # 2 (r - 10) + 1 ones centred on column 16
        k[r, 16 - half : 16 + half + 1] = 1
    k[21:33, 6:27] = 1
    return k


def cheek_ellipse():
    k = np.zeros((3, 35), np.uint8)
    k[1, :] = 1
    k[0, 17] = k[2, 17] = 1
    return k


def shifted(img, dy, dx, fill):
    # out[y, x] = img[y + dy, x + dx], `fill` outside the image
    m = max(abs(dy), abs(dx))
    padded = np.pad(img, m, constant_values=fill)
    h, w = img.shape
    return padded[m + dy : m + dy + h, m + dx : m + dx + w]


def morph(img, kernel, reduce, fill):
    ay, ax = kernel.shape[0] // 2, kernel.shape[1] // 2
    parts = [shifted(img, j - ay, i - ax, fill) for j, i in np.argwhere(kernel)]
    return reduce.reduce(np.stack(parts), axis=0)


def expected_mask(labels, mode, left=90, right=90):
    if mode == "raw":
        keep = np.isin(labels, [1, 11, 12, 13])
    elif mode == "neck":
        keep = np.isin(labels, [1, 11, 12, 13, 14])
    else:
        skin = np.where(labels == SKIN, 255, 0).astype(np.uint8)
        d = morph(skin, jaw_kernel(), np.maximum, 0)
        e = morph(morph(d, cheek_ellipse(), np.minimum, 255), cheek_ellipse(), np.minimum, 255)
        x = np.arange(512)[None, :]
        region = np.where((x <= 256 - left) | (x >= 256 + right), e, d) == 255
        keep = (region & (labels != NOSE)) | np.isin(labels, [11, 12, 13])
    return np.where(keep, 255, 0).astype(np.uint8)


def face_labels(seed=0, shift=(0, 0)):
    """A face-like class map: skin ellipse reaching the image edge, nose, lips, neck, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:512, :512]
    cy, cx = 250 + shift[0], 256 + shift[1]
    labels = rng.choice([0, 16, 17], size=(512, 512), p=[0.7, 0.2, 0.1])
    labels[((xx - cx) / 230) ** 2 + ((yy - cy) / 260) ** 2 < 1] = SKIN
    labels[(abs(yy - cy + 10) < 50) & (abs(xx - cx) < 25)] = NOSE
    labels[(abs(yy - cy - 90) < 8) & (abs(xx - cx) < 55)] = 12
    labels[(abs(yy - cy - 100) < 4) & (abs(xx - cx) < 50)] = 11
    labels[(abs(yy - cy - 112) < 9) & (abs(xx - cx) < 55)] = 13
    labels[(yy > cy + 200) & (abs(xx - cx) < 130)] = NECK
    speckle = rng.random((512, 512)) < 0.01  # isolated skin pixels and holes
    labels[speckle] = rng.choice([0, SKIN, 4, 12], size=int(speckle.sum()))
    return labels


class StubNet(torch.nn.Module):
    """Parameter-less: logits one-hot on face_labels(), shifted by the image's mean brightness."""

    def forward(self, x):
        shift = round(float(x.mean()) * 40)
        labels = torch.from_numpy(face_labels(seed=1, shift=(shift, -shift)))
        onehot = F.one_hot(labels, 19).permute(2, 0, 1).float()[None]
        return onehot.expand(x.shape[0], -1, -1, -1) * 3.0 + 0.01 * x[:, :1]


# --- fixtures ---


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return build_bisenet(tmp_path_factory.mktemp("bisenet"))


@pytest.fixture(scope="module")
def net(weights):
    return load_bisenet(weights)


def smooth_image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)).astype(int)
    return np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)


# --- BiSeNet ---


def test_build_bisenet_writes_every_manifest_key(tmp_path, checkpoints):
    path = build_bisenet(tmp_path, seed=3)
    assert path == tmp_path / FILENAME and sorted(p.name for p in tmp_path.iterdir()) == [FILENAME]
    state = torch.load(path, weights_only=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == checkpoints.manifest_shapes(MANIFEST)
    assert {k: v.dtype for k, v in state.items()} == checkpoints.manifest_dtypes(MANIFEST)


def test_load_bisenet_is_strict_eval_and_frozen(weights, net, checkpoints):
    # Given only 79999_iter.pth in its folder (no resnet18-5c106cde.pth)
    assert sorted(p.name for p in weights.parent.iterdir()) == [FILENAME]
    # Then every key of the file is in the module, and nothing else
    state = torch.load(weights, weights_only=True)
    loaded = net.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert (
        sum(p.numel() for p in net.parameters())
        == checkpoints.load_manifest(MANIFEST)["num_params"]
    )
    assert not net.training and not any(m.training for m in net.modules())
    assert not any(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (
            lambda s: s.pop("cp.resnet.layer3.1.bn2.running_var"),
            "cp.resnet.layer3.1.bn2.running_var",
        ),
        (lambda s: s.pop("conv_out32.conv_out.weight"), "conv_out32.conv_out.weight"),
        (lambda s: s.__setitem__("fc.weight", torch.zeros(1000, 512)), "fc.weight"),
        (
            lambda s: s.__setitem__("ffm.conv1.weight", torch.zeros(64, 256, 3, 3)),
            "ffm.conv1.weight",
        ),
    ],
)
def test_strict_load_errors_name_the_key(tmp_path, weights, edit, named):
    state = torch.load(weights, weights_only=True)
    edit(state)
    torch.save(state, tmp_path / FILENAME)
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
        load_bisenet(tmp_path / FILENAME)


def test_logits_shape_determinism_and_functional_recomputation(weights, net):
    x = torch.randn(2, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = net(x)
        again = net(x)
    assert out.shape == (2, 19, 512, 512) and out.dtype == torch.float32
    assert torch.equal(out, again)
    assert not torch.equal(out[0], out[1])
    expected = functional_bisenet(torch.load(weights, weights_only=True), x[1:])
    scale = expected.abs().max().item()
    assert scale > 1.0 and out.std() > 1e-2  # a non-trivial head
    # float32 against float64 through ~25 random layers: relative to the logits' scale
    assert (out[1:].double() - expected).abs().max().item() <= 1e-5 * scale + 1e-4


def test_auxiliary_heads_never_run(net):
    calls = []
    hooks = [
        getattr(net, n).register_forward_hook(lambda *a: calls.append(1))
        for n in ("conv_out16", "conv_out32")
    ]
    try:
        with torch.inference_mode():
            net(torch.zeros(1, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    assert calls == []


# --- preprocessing ---


@pytest.mark.parametrize("size", [(300, 280), (700, 650), (512, 512)])
def test_preprocess_is_pillow_bilinear_and_imagenet_normalisation(size):
    image = smooth_image(*size, seed=size[0])
    before = image.copy()
    x = FaceParser(StubNet()).preprocess(image)
    resized = np.asarray(Image.fromarray(image).resize((512, 512), Image.BILINEAR), np.float64)
    expected = ((resized / 255 - MEAN) / STD).transpose(2, 0, 1)[None]
    assert x.dtype == torch.float32 and tuple(x.shape) == (1, 3, 512, 512)
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-5)
    assert np.array_equal(image, before)


# --- label -> mask ---


@pytest.mark.parametrize(("seed", "shift"), [(0, (0, 0)), (1, (-120, 90)), (2, (180, -200))])
@pytest.mark.parametrize(("left", "right"), [(90, 90), (80, 80), (40, 130)])
def test_jaw_mask_matches_numpy_morphology(seed, shift, left, right):
    labels = face_labels(seed, shift)
    mask = mask_from_labels(labels, "jaw", left_cheek_width=left, right_cheek_width=right)
    assert mask.dtype == np.uint8 and mask.shape == (512, 512) and mask.flags.c_contiguous
    assert set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask, expected_mask(labels, "jaw", left, right))


def test_jaw_mask_grows_skin_up_16_rows_and_down_6():
    # Given a single skin pixel far from the cheek columns
    labels = np.zeros((512, 512), np.int64)
    labels[300, 256] = SKIN
    mask = mask_from_labels(labels, "jaw")
    rows = np.nonzero(mask[:, 256])[0]
    assert (rows.min(), rows.max()) == (300 - 16, 300 + 6)
    assert np.count_nonzero(mask) == int(jaw_kernel().sum())


def test_jaw_default_cheek_width_is_90():
    labels = face_labels(4)
    np.testing.assert_array_equal(mask_from_labels(labels), expected_mask(labels, "jaw", 90, 90))
    assert not np.array_equal(
        expected_mask(labels, "jaw", 90, 90), expected_mask(labels, "jaw", 80, 80)
    )


@pytest.mark.parametrize("mode", ["raw", "neck"])
def test_raw_and_neck_modes(mode):
    labels = np.random.default_rng(5).integers(0, 19, (512, 512))
    np.testing.assert_array_equal(mask_from_labels(labels, mode), expected_mask(labels, mode))


def test_mask_from_labels_rejects_bad_input():
    with pytest.raises(ValueError, match="mode"):
        mask_from_labels(np.zeros((512, 512), np.int64), "chin")
    with pytest.raises(ValueError, match="512"):
        mask_from_labels(np.zeros((256, 256), np.int64), "raw")


# --- FaceParser ---


def test_parameterless_stub_parser_runs_on_cpu():
    # Given a stub net without parameters
    parser = FaceParser(StubNet())
    assert parser.device == torch.device("cpu")
    image = smooth_image(420, 380, seed=7)
    # When
    masks = {mode: parser.mask(image, mode) for mode in ("raw", "neck", "jaw")}
    # Then the stub's class map (which depends on the preprocessed image) goes through rule 15
    labels = StubNet()(parser.preprocess(image))[0].argmax(0).numpy()
    for mode, mask in masks.items():
        assert mask.dtype == np.uint8 and mask.shape == (512, 512)
        np.testing.assert_array_equal(mask, expected_mask(labels, mode), err_msg=mode)
    assert np.array_equal(parser.mask(image), masks["jaw"])  # jaw is the default


def test_parser_cheek_widths_are_passed_through():
    image = smooth_image(300, 300, seed=8)
    parser = FaceParser(StubNet(), left_cheek_width=40, right_cheek_width=130)
    labels = StubNet()(parser.preprocess(image))[0].argmax(0).numpy()
    np.testing.assert_array_equal(parser.mask(image), expected_mask(labels, "jaw", 40, 130))


def test_parser_device_follows_the_net(net):
    assert FaceParser(net).device == torch.device("cpu")
    assert FaceParser(StubNet(), device="meta").device == torch.device("meta")


def test_parser_over_bisenet_takes_argmax_of_the_main_head(net):
    image = smooth_image(600, 560, seed=9)
    x = FaceParser(net).preprocess(image)  # checked against numpy above
    with torch.inference_mode():
        labels = net(x)[0].numpy().argmax(0)
    for mode in ("raw", "neck", "jaw"):
        np.testing.assert_array_equal(
            FaceParser(net).mask(image, mode), expected_mask(labels, mode)
        )
