"""The MuseTalk v1.5 UNet (diffusers' UNet2DConditionModel) and its audio positional encoding.

load_unet(config, weights, *, device="cpu", dtype=torch.float32) -> UNet2DConditionModel
    `config`: path of `musetalk.json` or its parsed dict; keys starting with "_" are metadata
    and are dropped (the official loader hands them to diffusers, which swallows them).
    `weights`: `unet.pth`, a plain state dict (torch.save(unet.state_dict())) with diffusers key
    names and no prefix, read with torch.load(weights_only=True). Loaded strictly: a missing,
    unexpected or wrongly shaped key raises CheckpointError (a ValueError) naming it. Returns the
    model on `device` in `dtype`, eval mode, requires_grad False.

    The call (PIPELINES.md §4.4, scripts/inference.py:199-203):
        unet(latents, 0, encoder_hidden_states=ctx).sample
    latents (B, 8, 32, 32): channels 0-3 the half-masked face latents, 4-7 the reference latents,
    both already x 0.18215; timestep 0 (one pass, no scheduler, no noise); ctx (B, 50, 384) =
    PositionalEncoding()(whisper windows). Result (B, 4, 32, 32) on the same x 0.18215 scale,
    given straight to the VAE decoder; on the model's device, in its dtype.
    `attention_head_dim: 8` in the config is diffusers' name for the number of heads.

PositionalEncoding(d_model=384, max_len=5000), an nn.Module (musetalk/models/unet.py:12-27)
    forward(x (B, L, d_model)) -> x + table[:L], in x's dtype and on x's device (x may also be a
    numpy array). table[pos, 2k] = sin(pos * div[k]), table[pos, 2k + 1] = cos(pos * div[k]),
    div = exp(arange(0, d, 2) * (-ln 10000 / d)), all in float32 with a float32 `pos`; a float64
    table cast down differs by up to 3e-6. The table is a non-persistent buffer: it is in no
    checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from torch import nn

from models.checkpoint import build_empty, load_strict, read_plain_state_dict

__all__ = ["PositionalEncoding", "load_unet"]

#: whisper-tiny's hidden width, the UNet's cross-attention width (musetalk/models/unet.py:37)
AUDIO_DIM = 384
#: rows in the official table; a window only ever uses the first 50 (10 steps x 5 layers)
PE_MAX_LEN = 5000
#: the transformer sinusoid base (musetalk/models/unet.py:17)
PE_BASE = 10000.0


class PositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal table to a (B, L, d_model) audio batch."""

    pe: torch.Tensor

    def __init__(self, d_model: int = AUDIO_DIM, max_len: int = PE_MAX_LEN) -> None:
        super().__init__()
        if d_model % 2:
            raise ValueError(f"d_model must be even, got {d_model}")
        # float32 throughout, as the official module builds it: the sin/cos arguments are
        # float32 products, and that rounding is part of the reference numbers
        position = torch.arange(0, max_len, dtype=torch.float32).unsqueeze(1)
        div = torch.exp(
            torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(PE_BASE) / d_model)
        )
        table = torch.zeros(max_len, d_model, dtype=torch.float32)
        table[:, 0::2] = torch.sin(position * div)
        table[:, 1::2] = torch.cos(position * div)
        self.d_model = d_model
        self.max_len = max_len
        self.register_buffer("pe", table, persistent=False)

    def forward(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"expected (B, L, {self.d_model}), got {tuple(x.shape)}")
        if x.shape[1] > self.max_len:
            raise ValueError(f"sequence length {x.shape[1]} exceeds max_len {self.max_len}")
        if not x.is_floating_point():
            x = x.float()
        return x + self.pe[: x.shape[1]].to(device=x.device, dtype=x.dtype)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}"


def _read_config(config: str | os.PathLike | Mapping) -> dict:
    if not isinstance(config, Mapping):
        with open(config, encoding="utf-8") as f:
            config = json.load(f)
    # "_class_name", "_diffusers_version": metadata, not constructor arguments
    return {k: v for k, v in config.items() if not str(k).startswith("_")}


def load_unet(
    config: str | os.PathLike | Mapping,
    weights: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> UNet2DConditionModel:
    """Build the UNet from `musetalk.json` and load `unet.pth` strictly (see module docstring)."""
    model = build_empty(UNet2DConditionModel, _read_config(config), device, dtype)
    state = read_plain_state_dict(weights)
    load_strict(model, state)
    model.eval().requires_grad_(False)
    return model
