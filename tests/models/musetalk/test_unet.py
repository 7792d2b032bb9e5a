"""models/musetalk/unet.py: PositionalEncoding against a hand-built table, load_unet against the
manifest, strict errors, and the UNet call against a diffusers model built here independently."""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import time

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from models.musetalk import CheckpointError, PositionalEncoding, load_unet
from tests.checkpoints import load_config, load_manifest, manifest_shapes

from .build_unet_vae import UNET_CONFIG, UNET_MANIFEST, build_unet, empty_model, reduced_unet_config

#: what the slow full-size test needs: the 3.4 GB model plus about as much again while the
#: random weights are written and read back (memory-mapped), and the file itself on disk
FULL_UNET_BYTES = load_manifest(UNET_MANIFEST)["fp32_bytes_of_float_tensors"]  # 3,399,791,376
FULL_UNET_MEMORY = 8 * 2**30
FULL_UNET_DISK = FULL_UNET_BYTES + 2**28


def hand_table(length: int, d_model: int = 384) -> np.ndarray:
    """The sinusoid table written out column pair by column pair, float32 like the official one.

    The frequencies come from torch's float32 exp: a correctly rounded exp differs from it in
    the last bit of 4 of the 192 frequencies, which moves sin(pos * div) at pos <= 49 by up to
    7e-6, over the 1e-6 the contract allows; sin and cos are then taken in float64 of the float32
    angle and rounded, so any float32 sin/cos within an ulp agrees.
    """
    table = np.zeros((length, d_model), dtype=np.float32)
    pos = np.arange(length, dtype=np.float32)
    exponents = torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model)
    div = torch.exp(exponents).numpy()
    for k in range(d_model // 2):
        angle = (pos * div[k]).astype(np.float64)  # float32 products, as the official module
        table[:, 2 * k] = np.sin(angle)
        table[:, 2 * k + 1] = np.cos(angle)
    return table


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    config_path, weights_path = build_unet(tmp_path_factory.mktemp("unet"), seed=0)
    return config_path, weights_path


def inputs(batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 8, 32, 32, generator=gen)
    windows = torch.randn(batch, 50, 384, generator=gen)
    return latents, windows


# --- PositionalEncoding ---


def test_positional_encoding_matches_hand_table():
    # Given a whisper-window batch of zeros and random values
    pe = PositionalEncoding()
    x = torch.randn(3, 50, 384, generator=torch.Generator().manual_seed(1))
    # When / Then the table is added row for row, within 1e-6
    expected = hand_table(50)
    np.testing.assert_allclose(pe(torch.zeros(1, 50, 384))[0].numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(pe(x).numpy(), x.numpy() + expected, rtol=0, atol=1e-6)
    # and a float64 table cast down (the rounding the contract rules out) is measurably off
    pos = np.arange(50, dtype=np.float64)[:, None]
    div = np.exp(np.arange(0, 384, 2) * (-math.log(10000.0) / 384))
    double = np.zeros((50, 384))
    double[:, 0::2], double[:, 1::2] = np.sin(pos * div), np.cos(pos * div)
    assert np.abs(double.astype(np.float32) - expected).max() > 1e-6


def test_positional_encoding_follows_input_dtype_and_is_in_no_checkpoint():
    pe = PositionalEncoding()
    assert pe.state_dict() == {}
    half = pe(torch.zeros(2, 10, 384, dtype=torch.float16))
    assert half.dtype == torch.float16 and half.shape == (2, 10, 384)
    np.testing.assert_allclose(half[0].float().numpy(), hand_table(10), rtol=0, atol=1e-3)
    # numpy input, shorter window and a custom width
    x = np.zeros((1, 7, 16), dtype=np.float32)
    out = PositionalEncoding(d_model=16, max_len=20)(x)
    np.testing.assert_allclose(out[0].numpy(), hand_table(7, 16), rtol=0, atol=1e-6)
    assert x.sum() == 0  # input untouched
    with pytest.raises(ValueError):
        pe(torch.zeros(1, 50, 256))
    with pytest.raises(ValueError):
        PositionalEncoding(max_len=10)(torch.zeros(1, 11, 384))


# --- load_unet ---


def test_full_config_state_dict_equals_manifest():
    # the config our tests reconstruct builds exactly the official key set, in order
    shapes = {k: tuple(v.shape) for k, v in
              empty_model(UNet2DConditionModel, load_config(UNET_CONFIG)).state_dict().items()}
    assert list(shapes.items()) == list(manifest_shapes(UNET_MANIFEST).items())


def test_reduced_config_keeps_the_official_structure():
    full, small = load_config(UNET_CONFIG), reduced_unet_config()
    assert {k: v for k, v in small.items() if k != "block_out_channels"} == {
        k: v for k, v in full.items() if k != "block_out_channels"}
    full_keys = set(manifest_shapes(UNET_MANIFEST))
    assert set(empty_model(UNet2DConditionModel, small).state_dict()) == full_keys


def test_load_unet_loads_every_tensor(reduced):
    config_path, weights_path = reduced
    state = torch.load(weights_path, weights_only=True)
    for config in (config_path, json.loads(config_path.read_text())):
        model = load_unet(config, weights_path)
        assert isinstance(model, UNet2DConditionModel)
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
        loaded = model.state_dict()
        assert loaded.keys() == state.keys()
        for key, value in state.items():
            assert torch.equal(loaded[key], value), key
    half = load_unet(config_path, weights_path, dtype=torch.float16)
    assert {p.dtype for p in half.parameters()} == {torch.float16}


def test_unet_call_matches_independent_diffusers_model(reduced):
    # Given the same files loaded the way the official UNet class does (json -> constructor,
    # torch.load, load_state_dict)
    config_path, weights_path = reduced
    config = json.loads(config_path.read_text())
    reference = UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    reference.load_state_dict(torch.load(weights_path, weights_only=True))
    reference.eval()
    model = load_unet(config_path, weights_path)
    latents, windows = inputs()
    with torch.no_grad():
        ctx = PositionalEncoding()(windows)
        out = model(latents, 0, encoder_hidden_states=ctx).sample
        expected = reference(latents, torch.tensor([0]), encoder_hidden_states=
                             windows + torch.from_numpy(hand_table(50))).sample
        other = model(latents, 0, encoder_hidden_states=PositionalEncoding()(-windows)).sample
    # Then the result is the predicted latent, within 1e-4 of the reference's scale
    assert out.shape == (2, 4, 32, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.std() > 1e-2
    assert (out - expected).abs().max() <= 1e-4 * expected.abs().max()
    # and it depends on the audio
    assert (out - other).abs().max() > 1e-3


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape", "container"])
def test_strict_load_names_the_key(reduced, tmp_path, change):
    config_path, weights_path = reduced
    state = torch.load(weights_path, weights_only=True)
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    if change == "missing":
        del state[key]
        expected = key
    elif change == "unexpected":
        state["mid_block.extra.weight"] = torch.zeros(1)
        expected = "mid_block.extra.weight"
    elif change == "shape":
        state[key] = torch.zeros(3, 3)
        expected = key
    else:
        state = {"state_dict": state}
        expected = "state_dict"
    broken = tmp_path / "unet.pth"
    torch.save(state, broken)
    with pytest.raises(CheckpointError, match=expected.replace(".", r"\.")):
        load_unet(config_path, broken)


# --- the full official config ---


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.slow
def test_full_size_unet_loads_strictly_and_runs(tmp_path):
    """The official musetalk.json (850M parameters) with random weights: write, load, one forward.

    Needs about 8 GB of available memory (the 3.4 GB model, plus the memory-mapped file paged in
    while it is copied) and 3.4 GB free disk in pytest's tmp dir; skipped otherwise. About 30 s on
    two CPU cores, most of it writing and reading the file.
    """
    if (avail := _mem_available()) < FULL_UNET_MEMORY:
        pytest.skip(f"needs {FULL_UNET_MEMORY / 2**30:.0f} GiB available memory, "
                    f"MemAvailable is {avail / 2**30:.1f} GiB")
    if (free := shutil.disk_usage(tmp_path).free) < FULL_UNET_DISK:
        pytest.skip(f"needs {FULL_UNET_DISK / 2**30:.1f} GiB free disk in {tmp_path}, has "
                    f"{free / 2**30:.1f} GiB")
    start = time.monotonic()
    config_path, weights_path = build_unet(tmp_path, config=load_config(UNET_CONFIG), seed=1)
    gc.collect()
    assert os.path.getsize(weights_path) > FULL_UNET_BYTES
    model = load_unet(config_path, weights_path)
    assert sum(p.numel() for p in model.parameters()) == load_manifest(UNET_MANIFEST)["num_params"]
    assert list(model.state_dict()) == list(manifest_shapes(UNET_MANIFEST))
    latents, windows = inputs(batch=1)
    with torch.no_grad():
        out = model(latents, 0, encoder_hidden_states=PositionalEncoding()(windows)).sample
    assert out.shape == (1, 4, 32, 32) and torch.isfinite(out).all()
    weights_path.unlink()
    assert time.monotonic() - start < 120
