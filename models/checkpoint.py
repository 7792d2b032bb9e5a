"""Reading official checkpoint containers and loading them strictly.

The Wav2Lip training scripts save `{"state_dict", "optimizer", "global_step", "global_epoch"}`,
with keys that may carry the nn.DataParallel prefix `module.`; the official loader removes every
occurrence of that substring. The S3FD file is a plain state dict. Both are read with
`torch.load(weights_only=True)`, which never runs pickled code.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["CheckpointError", "build_empty", "load_strict", "read_plain_state_dict", "read_state_dict",
           "unwrap_state_dict"]

#: how many offending keys an error message lists before summarising the rest
_MAX_KEYS_SHOWN = 8

_DATA_PARALLEL_PREFIX = "module."


class CheckpointError(ValueError):
    """The checkpoint's container or its keys and shapes do not fit the model."""


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj: object, *, allow_container: bool = True) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint object.

    Accepts a plain key->tensor mapping, or (with `allow_container`) the official training dict
    whose "state_dict" entry holds it. Every occurrence of "module." is removed from the keys,
    as the official loader does.
    """
    if allow_container and isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not _is_state_dict(obj):
        kind = (
            f"a mapping with keys {sorted(map(str, obj))[:_MAX_KEYS_SHOWN]}"
            if isinstance(obj, Mapping)
            else type(obj).__name__
        )
        wanted = (
            "a state dict or a dict with 'state_dict'" if allow_container else "a plain state dict"
        )
        raise CheckpointError(f"expected {wanted} of tensors, got {kind}")

    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        new_key = key.replace(_DATA_PARALLEL_PREFIX, "")
        if new_key in state:
            raise CheckpointError(
                f"key {key!r} collides with another key once 'module.' is removed"
            )
        state[new_key] = value
    return state


def read_state_dict(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, allow_container: bool = True
) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True) a checkpoint onto `device` and return its state dict."""
    obj = torch.load(path, map_location=device, weights_only=True)
    return unwrap_state_dict(obj, allow_container=allow_container)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    more = len(keys) - _MAX_KEYS_SHOWN
    return shown + (f" (and {more} more)" if more > 0 else "")


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """load_state_dict(strict=True), with one error naming every mismatched key first.

    Raises CheckpointError listing missing keys, unexpected keys and shape mismatches.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (checkpoint != model): {_listing(mismatched)}")
    if problems:
        raise CheckpointError(
            f"checkpoint does not fit {type(module).__name__}: " + "; ".join(problems)
        )
    module.load_state_dict(state, strict=True)


def read_plain_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True) a plain key -> tensor file onto the CPU.

    Zip-format files (every torch >= 1.6 save) are memory-mapped, so a 3.4 GB file is paged in
    while it is copied into the model instead of being held twice.
    """
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    return unwrap_state_dict(obj, allow_container=False)


def build_empty(cls: type[nn.Module], config: Mapping, device, dtype) -> nn.Module:
    """`cls(**config)` with uninitialised storage on `device` in `dtype`, for a strict load.

    Built on the meta device and then allocated, so no time goes into random initialisation
    (seconds for the 850M-parameter UNet). Only valid for modules without non-persistent
    buffers, which the strict load would leave uninitialised; checked here.
    """
    with torch.device("meta"):
        model = cls(**config)
    persistent = set(model.state_dict())
    transient = [name for name, _ in model.named_buffers() if name not in persistent]
    if transient:
        raise RuntimeError(f"{cls.__name__} has non-persistent buffers {transient}")
    # nn.Module.to, not diffusers' override, which warns about fp32-pinned modules (none here)
    return nn.Module.to(model, dtype=dtype).to_empty(device=device)
