"""models/wav2lip/model.py and load_wav2lip against the manifest and a functional re-computation."""

from __future__ import annotations

import copy

import pytest
import torch

from models.wav2lip import CheckpointError, Wav2Lip, load_wav2lip

from .functional import functional_generator

NAME = "wav2lip_generator"


def inputs(batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mel = torch.rand(batch, 1, 80, 16, generator=gen) * 8 - 4
    face = torch.rand(batch, 6, 96, 96, generator=gen)
    face[:, :3, 48:] = 0
    return mel, face


# --- tests ---


def test_state_dict_matches_manifest_exactly(checkpoints):
    # Given the manifest of the official file; When a fresh model is built
    state = Wav2Lip().state_dict()
    # Then every key, shape and dtype agree, and there is no extra key either way
    assert {k: tuple(v.shape) for k, v in state.items()} == checkpoints.manifest_shapes(NAME)
    assert {k: v.dtype for k, v in state.items()} == checkpoints.manifest_dtypes(NAME)
    manifest = checkpoints.load_manifest(NAME)
    assert sum(p.numel() for p in Wav2Lip().parameters()) == manifest["num_params"]


@pytest.mark.parametrize(
    ("container", "legacy"), [("training", False), ("plain", False), ("training", True)]
)
def test_loads_official_and_plain_containers(checkpoints, container, legacy):
    model = load_wav2lip(checkpoints.file(NAME, container, legacy=legacy))
    assert not model.training
    loaded = model.state_dict()
    for key, value in checkpoints.state_dict(NAME).items():
        assert torch.equal(loaded[key], value), key


def test_forward_matches_functional_recomputation(checkpoints):
    # Given the random official checkpoint and a masked face batch
    model = load_wav2lip(checkpoints.file(NAME, "training"))
    mel, face = inputs()
    # When
    with torch.inference_mode():
        out = model(mel, face)
        expected = functional_generator(checkpoints.state_dict(NAME), mel, face)
    # Then shape and range are right and the numbers agree, with a non-trivial output
    assert out.shape == (2, 3, 96, 96) and out.dtype == torch.float32
    assert 0.0 <= out.min().item() and out.max().item() <= 1.0
    assert out.std().item() > 1e-3
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


def test_output_depends_on_mel(checkpoints):
    model = load_wav2lip(checkpoints.file(NAME, "training"))
    mel, face = inputs()
    with torch.inference_mode():
        a = model(mel, face)
        b = model(-mel, face)
    assert (a - b).abs().max().item() > 1e-4


def test_channels_last_gives_the_same_output(checkpoints):
    # Given the float64 output as the reference (40 random-weight layers amplify float32 rounding,
    # which differs between memory layouts by a few 1e-4)
    model = load_wav2lip(checkpoints.file(NAME, "training"))
    mel, face = inputs()
    with torch.inference_mode():
        exact = copy.deepcopy(model).double()(mel.double(), face.double()).float()
        model = model.to(memory_format=torch.channels_last)
        fast = model(
            mel.contiguous(memory_format=torch.channels_last),
            face.contiguous(memory_format=torch.channels_last),
        )
    # Then channels_last agrees to float32 rounding, far below what a layout bug would cause
    torch.testing.assert_close(fast, exact, rtol=0, atol=3e-3)


def test_every_module_prefix_occurrence_is_stripped(checkpoints, tmp_path):
    state = checkpoints.state_dict(NAME)
    path = checkpoints.save(
        checkpoints.training_container(state, prefix="module.module."), tmp_path / "w.pth"
    )
    assert load_wav2lip(path).state_dict().keys() == state.keys()


def test_missing_key_is_named(checkpoints, tmp_path):
    state = dict(checkpoints.state_dict(NAME))
    del state["output_block.1.bias"]
    path = checkpoints.save(checkpoints.training_container(state), tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: output_block\.1\.bias"):
        load_wav2lip(path)


def test_unexpected_key_is_named(checkpoints, tmp_path):
    state = dict(checkpoints.state_dict(NAME))
    state["face_encoder_blocks.7.0.conv_block.0.weight"] = torch.zeros(1)
    path = checkpoints.save(dict(state), tmp_path / "w.pth")
    with pytest.raises(
        ValueError, match=r"unexpected keys: face_encoder_blocks\.7\.0\.conv_block\.0\.weight"
    ):
        load_wav2lip(path)


def test_shape_mismatch_is_named(checkpoints, tmp_path):
    state = dict(checkpoints.state_dict(NAME))
    state["output_block.1.weight"] = torch.zeros(3, 32, 3, 3)
    path = checkpoints.save(dict(state), tmp_path / "w.pth")
    with pytest.raises(
        CheckpointError, match=r"output_block\.1\.weight \(3, 32, 3, 3\) != \(3, 32, 1, 1\)"
    ):
        load_wav2lip(path)


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"model": {"a": 1}}, path)
    with pytest.raises(CheckpointError, match="state dict"):
        load_wav2lip(path)


def test_folding_batchnorm_keeps_the_outputs(checkpoints):
    # Given the official model and a copy with every BatchNorm folded into its convolution
    import copy

    from models.wav2lip.conv import fold_batchnorm

    model = load_wav2lip(checkpoints.file(NAME, "training"))
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    gen = torch.Generator().manual_seed(3)
    mel, face = torch.randn(2, 1, 80, 16, generator=gen), torch.rand(2, 6, 96, 96, generator=gen)
    with torch.inference_mode():
        plain, fast = model(mel, face), folded(mel, face)
    # Then they agree to float rounding (random weights amplify it: ~5e-4 of the [0, 1] range,
    # a fifth of one 8-bit level)
    assert (plain - fast).abs().max() < 2e-3
    assert not torch.equal(plain, fast)  # it really is a different computation
