"""Where and how models run, chosen by capability probes (unit-tested on CPU with fakes).

    device         cuda when torch sees a GPU, else cpu (TORCH_DEVICE overrides)
    precision      fp16 autocast on CUDA GPUs with fast fp16 (compute capability >= 7.0: V100,
                   T4, A100, H100, ...); fp32 everywhere else, CPU included
    memory format  channels-last everywhere: cuDNN's tensor-core kernels want NHWC, and on x86
                   oneDNN it measured 1.22x faster for the Wav2Lip generator (2-core EPYC)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

#: Volta: the first generation with tensor cores, where fp16 inference is reliably faster.
MIN_FP16_CAPABILITY = (7, 0)


@dataclass(frozen=True)
class Placement:
    device: str  # "cuda" / "cuda:1" / "cpu"
    fp16: bool
    channels_last: bool
    reason: str


def choose_placement(setting: str = "auto", *, cuda_available: Callable[[], bool] | None = None,
                     capability: Callable[[str], tuple[int, int]] | None = None) -> Placement:
    """`setting` is TORCH_DEVICE: auto | cpu | cuda | cuda:N. The probes are injectable."""
    import torch

    cuda_available = cuda_available or torch.cuda.is_available
    capability = capability or torch.cuda.get_device_capability
    if setting == "cpu" or (setting == "auto" and not cuda_available()):
        return Placement("cpu", False, True, "no CUDA device" if setting == "auto" else "TORCH_DEVICE=cpu")
    if not cuda_available():
        return Placement("cpu", False, True, f"TORCH_DEVICE={setting} but CUDA is not available")
    device = "cuda" if setting == "auto" else setting
    major_minor = tuple(capability(device))
    fp16 = major_minor >= MIN_FP16_CAPABILITY
    why = f"compute capability {major_minor[0]}.{major_minor[1]}: " + ("fp16 autocast" if fp16 else "fp32")
    return Placement(device, fp16, True, why)
