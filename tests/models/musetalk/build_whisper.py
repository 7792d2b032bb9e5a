"""A random-weight whisper-tiny directory in the layout MuseTalk downloads (openai/whisper-tiny).

The official `models/whisper/` holds `config.json`, `preprocessor_config.json` and
`pytorch_model.bin`, a torch.save'd WhisperForConditionalGeneration state dict whose keys are
`model.` + the WhisperModel keys of the manifest `whisper_tiny` (encoder and decoder, 167 keys,
37.8 M float32 values, about 151 MB). Newer hub snapshots carry `model.safetensors` instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.checkpoints import load_config, random_state_dict

MANIFEST = "whisper_tiny"
CONFIG = "whisper-tiny_config"
PREPROCESSOR_CONFIG = "whisper-tiny_preprocessor_config"
FILE_PREFIX = "model."  # WhisperForConditionalGeneration's base_model_prefix
CONTAINERS = {"bin": "pytorch_model.bin", "safetensors": "model.safetensors"}


def whisper_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the file's key names (`model.encoder.*`, `model.decoder.*`)."""
    return {FILE_PREFIX + key: value for key, value in random_state_dict(MANIFEST, seed).items()}


def build_whisper_dir(directory: Path, seed: int = 0, container: str = "bin") -> Path:
    """Write config.json, preprocessor_config.json and the weights into `directory`; return it.

    container "bin" writes pytorch_model.bin (a plain torch.save'd dict), "safetensors" writes
    model.safetensors. Weights are `tests.checkpoints.random_state_dict` (He-scaled matrices,
    LayerNorm gains 1 + 0.2 N(0, 1), biases 0.1 N(0, 1)), so the encoder's states are O(1).
    """
    if container not in CONTAINERS:
        raise ValueError(f"container must be one of {sorted(CONTAINERS)}, got {container!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(load_config(CONFIG), indent=2))
    (directory / "preprocessor_config.json").write_text(
        json.dumps(load_config(PREPROCESSOR_CONFIG), indent=2)
    )
    state = whisper_state_dict(seed)
    path = directory / CONTAINERS[container]
    if container == "bin":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"format": "pt"})
    return directory
