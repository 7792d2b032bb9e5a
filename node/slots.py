"""How many jobs a worker renders at once, on which device, and each one's share of the CPU.

A GPU node is not bounded by its models but by the CPU-side encoder: on an H200 with 16 cores the
Wav2Lip generator runs at ~20,000 frames/s and the MuseTalk UNet + decode at ~300, while libx264
(720p, CRF 23, preset medium) encodes ~155 frames/s for one stream and ~300 in aggregate when four
run side by side (GPU.md). One job per GPU leaves the GPU idle most of the time, so with libx264:

    slots per GPU  = clamp(cores per GPU // CPU_CORES_PER_SLOT, 1, MAX_SLOTS_PER_GPU)
    x264 threads   = cores // slots (each encode its share, not one thread per core each)
    torch threads  = cores // slots on a node without GPU (the models run on those cores too)

With NVENC the encode leaves the CPU, so one slot per GPU (a GPU's NVENC sessions are few). A node
without a GPU runs one slot per CPU_CORES_PER_SLOT cores, at least one. `worker --concurrency` or
RENDER_SLOTS overrides the count, X264_THREADS the share. Every slot on one GPU shares that GPU's
one Renderer (one copy of the models); slot i uses GPU i % gpus.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Cores one libx264 720p stream keeps busy: 4 streams on 16 cores gave 300 frames/s in aggregate
#: against 155 for one, and 8 streams only 328 (GPU.md), so a fifth core per stream buys little.
CPU_CORES_PER_SLOT = 4
#: Past four jobs per GPU the encoders compete for the same cores (the 8-stream figure above) and
#: each job only takes longer, while its memory (frames in flight, ffmpeg) still costs.
MAX_SLOTS_PER_GPU = 4


@dataclass(frozen=True)
class SlotPlan:
    slots: int
    devices: list[str]  # TORCH_DEVICE of each Renderer; slot i renders with devices[i % len]
    x264_threads: int | None  # per encode; None: ffmpeg's own default (a lone job on the node)
    reason: str
    #: torch intra-op threads for the process on a node without GPU, where the models share the
    #: cores with the encoders: each slot's model calls get its share (None: torch's default).
    torch_threads: int | None = None


def available_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPU cores this process may use: its affinity, capped by a cgroup v2 CPU quota (a container
    limited to 4 CPUs on a 64-core host must plan for 4)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def plan_slots(*, cores: int, gpus: int, codec: str, torch_device: str = "auto",
               slots: int | None = None, x264_threads: int | None = None) -> SlotPlan:
    """The plan for a node with `cores` CPU cores, `gpus` CUDA devices and encoder `codec`;
    `slots` (the flag or RENDER_SLOTS) and `x264_threads` (X264_THREADS) override the derivation."""
    if slots is not None:
        why = f"{slots} slot(s) as configured"
    elif codec == "h264_nvenc":
        slots, why = max(1, gpus), "NVENC encodes on the GPU: one slot per GPU"
    else:
        per_gpu = max(1, min(MAX_SLOTS_PER_GPU, cores // max(1, gpus) // CPU_CORES_PER_SLOT))
        slots = per_gpu * max(1, gpus)
        where = f"{gpus} GPU(s)" if gpus else "no GPU"
        why = (f"libx264 bounds the node: {cores} cores, {where}, one slot per {CPU_CORES_PER_SLOT} cores "
               f"(at most {MAX_SLOTS_PER_GPU} per GPU)")
    if torch_device == "auto" and gpus > 1:
        devices = [f"cuda:{i}" for i in range(min(slots, gpus))]
    else:
        devices = [torch_device]
    if x264_threads is None and slots > 1 and codec == "libx264":
        x264_threads = max(1, cores // slots)
    torch_threads = max(1, cores // slots) if gpus == 0 and slots > 1 else None
    return SlotPlan(slots, devices, x264_threads, why, torch_threads)


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no torch, or a CUDA driver problem: no GPU to place slots on
        return 0
