"""models/wav2lip/syncnet.py and load_syncnet: manifest and a functional re-computation."""

from __future__ import annotations

import pytest
import torch

from models.wav2lip import CheckpointError, SyncNet, load_syncnet

from .functional import functional_syncnet

NAME = "wav2lip_syncnet_expert"


def inputs(batch=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, 80, 16, generator=gen) * 8 - 4, torch.rand(
        batch, 15, 48, 96, generator=gen
    )


def test_state_dict_matches_manifest_exactly(checkpoints):
    state = SyncNet().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == checkpoints.manifest_shapes(NAME)
    assert {k: v.dtype for k, v in state.items()} == checkpoints.manifest_dtypes(NAME)


@pytest.mark.parametrize("container", ["training", "plain"])
def test_loads_official_and_plain_containers(checkpoints, container):
    model = load_syncnet(checkpoints.file(NAME, container))
    assert not model.training
    for key, value in checkpoints.state_dict(NAME).items():
        assert torch.equal(model.state_dict()[key], value), key


def test_embeddings_match_functional_recomputation(checkpoints):
    # Given
    model = load_syncnet(checkpoints.file(NAME, "training"))
    mel, face = inputs()
    # When
    with torch.inference_mode():
        audio_emb, face_emb = model(mel, face)
        expected_audio, expected_face = functional_syncnet(checkpoints.state_dict(NAME), mel, face)
    # Then: (B, 512), unit norm, equal to the functional version, and not constant over the batch
    assert audio_emb.shape == face_emb.shape == (3, 512)
    torch.testing.assert_close(audio_emb.norm(dim=1), torch.ones(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(face_emb.norm(dim=1), torch.ones(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(audio_emb, expected_audio, rtol=0, atol=1e-4)
    torch.testing.assert_close(face_emb, expected_face, rtol=0, atol=1e-4)
    assert (face_emb[0] - face_emb[1]).abs().max().item() > 1e-4


def test_generator_checkpoint_is_rejected_naming_keys(checkpoints, tmp_path):
    # The generator's state dict has different module names: the error lists them
    state = dict(checkpoints.state_dict(NAME))
    del state["audio_encoder.13.conv_block.0.bias"]
    state["face_decoder_blocks.0.0.conv_block.0.bias"] = torch.zeros(512)
    path = checkpoints.save(checkpoints.training_container(state), tmp_path / "s.pth")
    with pytest.raises(CheckpointError) as info:
        load_syncnet(path)
    assert "missing keys: audio_encoder.13.conv_block.0.bias" in str(info.value)
    assert "unexpected keys: face_decoder_blocks.0.0.conv_block.0.bias" in str(info.value)
