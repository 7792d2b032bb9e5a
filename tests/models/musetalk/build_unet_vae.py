"""Random-weight MuseTalk UNet and sd-vae checkpoints in the official layouts, for tests and bench/.

reduced_unet_config() -> dict
    The official musetalkV15 `musetalk.json` (tests/reference/configs) with block_out_channels
    (32, 64, 96, 96): same blocks, heads (attention_head_dim 8), cross-attention width 384,
    8 -> 4 channels; a batch-2 forward at 32 x 32 takes a fraction of a second on a CPU.
build_unet(directory, config=None, seed=0) -> (config_path, weights_path)
    `musetalk.json` + `unet.pth` (torch.save of a plain state dict, diffusers names, no prefix)
    for `config` (default: the reduced one). Built in place with uninitialised storage, so the
    full 3.4 GB config costs one copy of the weights in memory.
reduced_vae_config() -> dict
    The sd-vae-ft-mse config with block_out_channels (16, 32, 64, 64), 16 groups.
build_vae_dir(directory, seed=0, container="bin", reduced=False) -> Path
    `config.json` + `diffusion_pytorch_model.bin` (legacy mid-block attention names
    query/key/value/proj_attn, from the manifest's "legacy_names") or `.safetensors` (current
    names). Full size draws the manifest's tensors (tests.checkpoints.random_state_dict).

Weights are He-scaled (std sqrt(2 / fan_in)) so activations stay finite through the random
network; norm weights are 1 + 0.2 N(0, 1), biases 0.1 N(0, 1), as tests.checkpoints does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from tests.checkpoints import load_config, load_manifest, random_state_dict

UNET_MANIFEST = "musetalk_unet_v15"
VAE_MANIFEST = "sd_vae_ft_mse"
UNET_CONFIG = "musetalkV15_musetalk"
VAE_CONFIG = "sd-vae-ft-mse_config"
#: narrower widths with the official pattern (a width change at blocks 1 and 2, none at 3, so
#: the same conv_shortcut keys exist); 32 groups divide each, 8 heads of 4, 8 and 12 channels
REDUCED_CHANNELS = [32, 64, 96, 96]
#: the VAE runs at 256 x 256, so its first width dominates: 16 there, the same width pattern
REDUCED_VAE_CHANNELS = [16, 32, 64, 64]


def reduced_unet_config() -> dict:
    config = load_config(UNET_CONFIG)
    config["block_out_channels"] = list(REDUCED_CHANNELS)
    config["norm_num_groups"] = 32  # divides every width above
    return config


def reduced_vae_config() -> dict:
    config = load_config(VAE_CONFIG)
    config["block_out_channels"] = list(REDUCED_VAE_CHANNELS)
    config["norm_num_groups"] = 16  # divides every width above
    return config


def _constructor_args(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def empty_model(cls, config: dict) -> torch.nn.Module:
    """`cls(**config)` on the meta device: shapes and key names without any storage."""
    with torch.device("meta"):
        return cls(**_constructor_args(config))


def fill_random_(state: dict[str, torch.Tensor], seed: int) -> None:
    """He-scaled random values written in place into every tensor of a state dict."""
    gen = torch.Generator().manual_seed(seed)
    for key, tensor in state.items():
        if tensor.ndim > 1:
            fan_in = math.prod(tensor.shape[1:])
            tensor.normal_(0.0, math.sqrt(2.0 / fan_in), generator=gen)
        elif key.endswith("weight"):
            tensor.normal_(1.0, 0.2, generator=gen)
        else:
            tensor.normal_(0.0, 0.1, generator=gen)


def random_model_state(cls, config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the keys and shapes of `cls(**config)`, He-scaled random values."""
    model = empty_model(cls, config).to_empty(device="cpu")
    state = model.state_dict()
    with torch.no_grad():
        fill_random_(state, seed)
    return state


def build_unet(directory, config: dict | None = None, seed: int = 0) -> tuple[Path, Path]:
    """Write `musetalk.json` and `unet.pth` for `config` (default reduced) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = reduced_unet_config() if config is None else config
    config_path = directory / "musetalk.json"
    config_path.write_text(json.dumps(config, indent=2))
    weights_path = directory / "unet.pth"
    state = random_model_state(UNet2DConditionModel, config, seed)
    torch.save(dict(state), weights_path)
    return config_path, weights_path


def legacy_names() -> dict[str, str]:
    """current -> legacy key for the sd-vae mid-block attention (manifest "format")."""
    return load_manifest(VAE_MANIFEST)["format"]["legacy_names"]


def build_vae_dir(directory, seed: int = 0, container: str = "bin", reduced: bool = False) -> Path:
    """An sd-vae model directory: config.json + diffusion_pytorch_model.{bin,safetensors}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if reduced:
        config = reduced_vae_config()
        state = random_model_state(AutoencoderKL, config, seed)
    else:
        config = load_config(VAE_CONFIG)
        state = random_state_dict(VAE_MANIFEST, seed)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    if container == "bin":
        renames = legacy_names()
        state = {renames.get(k, k): v for k, v in state.items()}
        torch.save(state, directory / "diffusion_pytorch_model.bin")
    elif container == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()},
                  str(directory / "diffusion_pytorch_model.safetensors"))
    else:
        raise ValueError(f"container must be 'bin' or 'safetensors', got {container!r}")
    return directory
