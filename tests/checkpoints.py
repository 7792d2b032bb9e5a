"""Random-weight checkpoints in the official containers, built from the reference manifests.

The manifests (tests/reference/checkpoints/*.json, copied into the repo with their provenance in
tests/reference/PROVENANCE.md) list every state-dict key, shape and dtype of the official files. Nothing here downloads weights: tensors are
random, written to temporary folders, and never committed. Used by tests and by bench/.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
MANIFEST_DIR = REFERENCE_DIR / "checkpoints"
CONFIG_DIR = REFERENCE_DIR / "configs"


def load_manifest(name: str) -> dict:
    """The manifest JSON for one model, e.g. "wav2lip_generator"."""
    return json.loads((MANIFEST_DIR / f"{name}.json").read_text())


def load_config(name: str) -> dict:
    """A reference config, e.g. "musetalkV15_musetalk" or "sd-vae-ft-mse_config"."""
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def manifest_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """key -> shape for every state-dict entry of the official file, in manifest order."""
    return {key: tuple(shape) for key, shape in load_manifest(name)["params"].items()}


def manifest_dtypes(name: str) -> dict[str, torch.dtype]:
    """key -> dtype; keys not listed as non-float carry the manifest's float dtype."""
    manifest = load_manifest(name)
    default = getattr(torch, manifest["dtype"])
    special = {k: getattr(torch, v) for k, v in (manifest.get("non_float_keys") or {}).items()}
    return {key: special.get(key, default) for key in manifest["params"]}


def random_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors for every manifest key with plausible magnitudes.

    Conv weights are He-scaled so activations neither vanish nor explode; BatchNorm statistics
    are random (running_var > 0) so that eval-mode BN is not the identity.
    """
    gen = torch.Generator().manual_seed(seed)
    dtypes = manifest_dtypes(name)
    state: dict[str, torch.Tensor] = {}
    for key, shape in manifest_shapes(name).items():
        if dtypes[key] == torch.int64:
            state[key] = torch.tensor(1000, dtype=torch.int64).reshape(shape)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith("running_mean"):
            state[key] = 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) > 1:
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            state[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif key.endswith("weight"):
            state[key] = 1.0 + 0.2 * torch.randn(shape, generator=gen)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=gen)
    return state


def training_container(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict:
    """The dict the official Wav2Lip training scripts torch.save, with a small Adam state."""
    first = next(iter(state.values()))
    return {
        "state_dict": {prefix + key: value for key, value in state.items()},
        "optimizer": {
            "state": {
                0: {
                    "step": torch.tensor(3.0),
                    "exp_avg": torch.zeros_like(first),
                    "exp_avg_sq": torch.zeros_like(first),
                }
            },
            "param_groups": [
                {
                    "lr": 1e-4,
                    "betas": (0.9, 0.999),
                    "eps": 1e-8,
                    "weight_decay": 0,
                    "amsgrad": False,
                    "params": list(range(len(state))),
                }
            ],
        },
        "global_step": 250000,
        "global_epoch": 42,
    }


def save(obj: object, path: Path, legacy: bool = False) -> Path:
    """torch.save, optionally in the pre-1.6 (non-zip) serialization the 2020 files may use."""
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path
