"""The sd-vae-ft-mse autoencoder as MuseTalk uses it (musetalk/models/vae.py), with explicit noise.

load_vae(model_dir, *, device="cpu", dtype=torch.float32) -> MuseTalkVAE
    `model_dir` in the diffusers layout of stabilityai/sd-vae-ft-mse: `config.json` plus
    `diffusion_pytorch_model.safetensors` (current key names) or `diffusion_pytorch_model.bin`
    (torch.save of a plain state dict whose mid-block attention still uses the pre-0.14 names
    query/key/value/proj_attn, renamed here to to_q/to_k/to_v/to_out.0 as diffusers'
    from_pretrained does). The safetensors file wins when both exist, as in from_pretrained.
    Loaded strictly (CheckpointError naming the key); eval mode, requires_grad False.

MuseTalkVAE (an nn.Module holding the diffusers AutoencoderKL as `.vae`)
    scaling_factor: float, the config's value, else diffusers' default 0.18215 (the sd-vae
        config.json has no such key; vae.py:35 reads vae.config.scaling_factor).
    preprocess(faces_bgr (B, 256, 256, 3) uint8 BGR, half_mask=False) -> (B, 3, 256, 256) float
        RGB in [-1, 1]: BGR -> RGB, / 255, with `half_mask` rows 128-255 zeroed, then x * 2 - 1
        (so masked rows are exactly -1). No resize. vae.py:51-82.
    posterior(x (B, 3, 256, 256)) -> (mean, std), each (B, 4, 32, 32): the encoder's diagonal
        Gaussian, unscaled; std = exp(0.5 * clamp(logvar, -30, 20)).
    encode_for_unet(faces_bgr (B, 256, 256, 3), *, eps=None, generator=None) -> (B, 8, 32, 32)
        channels 0-3: the half-masked face, 4-7: the same face unmasked (the reference at
        inference, vae.py:110-122); each half is 0.18215 * (mean + std * eps). `eps` (B, 8, 32, 32)
        gives the noise (0-3 masked, 4-7 reference); else `generator` draws it once as
        torch.randn((B, 8, 32, 32), generator=generator); with neither, eps = 0 (the mean, as
        training and a deterministic avatar cache use). Both -> ValueError. The official code
        calls latent_dist.sample() on torch's global RNG; here the noise is explicit.
    decode(latents (B, 4, 32, 32)) -> (B, 3, 256, 256) float, RGB, unclamped: the decoder output
        of latents / 0.18215.
    decode_bgr(latents) -> np.uint8 (B, 256, 256, 3) BGR: round(clamp(decode / 2 + 0.5, 0, 1)
        * 255), RGB -> BGR (vae.py:96-108).

Images may be numpy arrays or CPU tensors and are never modified; returned arrays are new and
C-contiguous. Tensor inputs may be numpy arrays or tensors on any device; tensor results are on
the model's device in its dtype.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from torch import nn

from models.checkpoint import CheckpointError, build_empty, load_strict, read_plain_state_dict


__all__ = ["MuseTalkVAE", "load_vae"]

#: diffusers' AutoencoderKL default, used because the sd-vae-ft-mse config has no scaling_factor
SCALING_FACTOR = 0.18215
#: MuseTalk's face crop side (scripts/inference.py:174, vae.py resized_img=256)
FACE_SIZE = 256
#: the first masked row: the mask is 1 on rows [0, 256 // 2) (vae.py:40-49)
MASK_FROM_ROW = FACE_SIZE // 2  # 128
#: the autoencoder's spatial reduction, three stride-2 downsamplers: 256 -> 32
LATENT_STRIDE = 8
LATENT_CHANNELS = 4
#: DiagonalGaussianDistribution's clamp of the encoder's log-variance
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
BIN_NAME = "diffusion_pytorch_model.bin"

#: pre-0.14 diffusers attention names -> current ones (diffusers' _fix_state_dict_keys_on_load)
_LEGACY_ATTENTION_NAMES = {
    "query": "to_q",
    "key": "to_k",
    "value": "to_v",
    "proj_attn": "to_out.0",
}


def _as_numpy(images) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        return images.detach().cpu().numpy()
    return np.asarray(images)


def _faces(faces_bgr) -> np.ndarray:
    """(B, 256, 256, 3) view of the input; a single (256, 256, 3) face counts as a batch of 1."""
    faces = _as_numpy(faces_bgr)
    if faces.ndim == 3:
        faces = faces[None]
    if faces.ndim != 4 or faces.shape[1:] != (FACE_SIZE, FACE_SIZE, 3):
        raise ValueError(
            f"expected faces (B, {FACE_SIZE}, {FACE_SIZE}, 3) BGR, got {tuple(faces.shape)}"
        )
    return faces


class MuseTalkVAE(nn.Module):
    """AutoencoderKL with MuseTalk's pre- and post-processing (see the module docstring)."""

    def __init__(self, vae: AutoencoderKL, scaling_factor: float | None = None) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(
            vae.config.scaling_factor if scaling_factor is None else scaling_factor
        )

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def _to_model(self, x) -> torch.Tensor:
        return torch.as_tensor(x).to(device=self.device, dtype=self.dtype)

    def preprocess(self, faces_bgr, half_mask: bool = False) -> torch.Tensor:
        """(B, 256, 256, 3) BGR uint8 -> (B, 3, 256, 256) RGB in [-1, 1]; masked rows at -1."""
        faces = _faces(faces_bgr)
        # as the official code: /255 in float64, then float32; [..., ::-1] is BGR -> RGB
        x = torch.from_numpy(
            np.ascontiguousarray(faces[..., ::-1].transpose(0, 3, 1, 2)) / 255.0
        ).float()
        if half_mask:
            x[:, :, MASK_FROM_ROW:, :] = 0.0
        # Normalize(mean=0.5, std=0.5), written as the official transform computes it
        x = (x - 0.5) / 0.5
        return x.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def posterior(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 256, 256) in [-1, 1] -> (mean, std), each (B, 4, 32, 32), unscaled."""
        x = self._to_model(x)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected x (B, 3, H, W), got {tuple(x.shape)}")
        moments = self.vae.encoder(x)
        if self.vae.quant_conv is not None:
            moments = self.vae.quant_conv(moments)
        mean, logvar = torch.chunk(moments, 2, dim=1)
        std = torch.exp(0.5 * torch.clamp(logvar, LOGVAR_MIN, LOGVAR_MAX))
        return mean, std

    @torch.no_grad()
    def encode_for_unet(self, faces_bgr, *, eps=None, generator: torch.Generator | None = None):
        """(B, 256, 256, 3) BGR faces -> (B, 8, 32, 32): masked latents (0-3), reference (4-7)."""
        if eps is not None and generator is not None:
            raise ValueError("pass eps or generator, not both")
        faces = _faces(faces_bgr)
        batch = faces.shape[0]
        side = FACE_SIZE // LATENT_STRIDE
        shape = (batch, 2 * LATENT_CHANNELS, side, side)
        if generator is not None:
            eps = torch.randn(shape, generator=generator, device=generator.device)
        if eps is not None:
            eps = self._to_model(eps)
            if tuple(eps.shape) != shape:
                raise ValueError(f"eps must have shape {shape}, got {tuple(eps.shape)}")

        # one encoder pass over [masked; unmasked]
        x = torch.cat([self.preprocess(faces, half_mask=True), self.preprocess(faces)])
        mean, std = self.posterior(x)
        masked, reference = mean[:batch], mean[batch:]
        if eps is not None:
            # DiagonalGaussianDistribution.sample(): mean + std * noise
            masked = masked + std[:batch] * eps[:, :LATENT_CHANNELS]
            reference = reference + std[batch:] * eps[:, LATENT_CHANNELS:]
        return torch.cat([masked, reference], dim=1) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents) -> torch.Tensor:
        """(B, 4, 32, 32) on the x 0.18215 scale -> (B, 3, 256, 256) RGB, unclamped."""
        z = self._to_model(latents)
        if z.ndim != 4 or z.shape[1] != LATENT_CHANNELS:
            raise ValueError(f"expected latents (B, {LATENT_CHANNELS}, h, w), got {tuple(z.shape)}")
        # (1 / s) * latents, as decode_latents writes it (vae.py:102)
        return self.vae.decode((1.0 / self.scaling_factor) * z).sample

    @torch.no_grad()
    def decode_bgr(self, latents) -> np.ndarray:
        """(B, 4, 32, 32) latents -> np.uint8 (B, 256, 256, 3) BGR faces."""
        # clamp in the model dtype, then *255 and round in float32, as vae.py:103-106
        image = (self.decode(latents) / 2 + 0.5).clamp(0, 1).float()
        image = (image * 255).round().to(torch.uint8)
        image = image.flip(1).permute(0, 2, 3, 1).cpu().numpy()  # RGB -> BGR, NHWC
        return np.ascontiguousarray(image)


def _rename_legacy_attention(model: AutoencoderKL, state: dict[str, torch.Tensor]) -> dict:
    """query/key/value/proj_attn -> to_q/to_k/to_v/to_out.0 in the deprecated attention blocks."""
    paths = [
        name for name, module in model.named_modules()
        if getattr(module, "_from_deprecated_attn_block", False)
    ]
    state = dict(state)
    for path in paths:
        for old, new in _LEGACY_ATTENTION_NAMES.items():
            for kind in ("weight", "bias"):
                old_key, new_key = f"{path}.{old}.{kind}", f"{path}.{new}.{kind}"
                if old_key not in state:
                    continue
                if new_key in state:
                    raise CheckpointError(f"both {old_key!r} and {new_key!r} are present")
                state[new_key] = state.pop(old_key)
    return state


def load_vae(
    model_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MuseTalkVAE:
    """Build AutoencoderKL from `model_dir/config.json` and load its weights strictly."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / CONFIG_NAME).read_text(encoding="utf-8"))
    config = {k: v for k, v in config.items() if not k.startswith("_")}

    if (model_dir / SAFETENSORS_NAME).is_file():
        from safetensors.torch import load_file

        state = load_file(model_dir / SAFETENSORS_NAME, device="cpu")
    elif (model_dir / BIN_NAME).is_file():
        state = read_plain_state_dict(model_dir / BIN_NAME)
    else:
        raise FileNotFoundError(f"{model_dir} has neither {SAFETENSORS_NAME} nor {BIN_NAME}")

    model = build_empty(AutoencoderKL, config, device, dtype)
    load_strict(model, _rename_legacy_attention(model, state))
    model.eval().requires_grad_(False)
    # AutoencoderKL's constructor default fills in the missing key: 0.18215
    return MuseTalkVAE(model).eval().requires_grad_(False)
