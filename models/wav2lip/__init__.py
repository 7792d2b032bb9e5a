"""Wav2Lip: the generator, its SyncNet expert and their checkpoint loaders.

The mel front end is `models.wav2lip.audio` (imported on demand: it pulls in librosa).
"""

from __future__ import annotations

import os

import torch

from models.checkpoint import CheckpointError, load_strict, read_state_dict
from .model import Wav2Lip
from .syncnet import SyncNet

__all__ = ["CheckpointError", "SyncNet", "Wav2Lip", "load_syncnet", "load_wav2lip"]


def load_wav2lip(path: str | os.PathLike, device: str | torch.device = "cpu") -> Wav2Lip:
    """Load `wav2lip.pth` / `wav2lip_gan.pth` (or a plain state dict) into an eval-mode generator.

    Accepts the official training container (keys optionally prefixed "module.") and plain
    state dicts. A missing, unexpected or wrongly shaped key raises CheckpointError (a
    ValueError) naming it.
    """
    state = read_state_dict(path, device)
    model = Wav2Lip().to(device)
    load_strict(model, state)
    return model.eval()


def load_syncnet(path: str | os.PathLike, device: str | torch.device = "cpu") -> SyncNet:
    """Load `lipsync_expert.pth` (or a plain state dict) into an eval-mode SyncNet, strictly."""
    state = read_state_dict(path, device)
    model = SyncNet().to(device)
    load_strict(model, state)
    return model.eval()
