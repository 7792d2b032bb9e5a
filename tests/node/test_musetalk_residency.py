"""Which avatars' MuseTalk latents stay on the GPU between jobs, and the CPU path's gather."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from node.config import Settings
from node.device import Placement
from node.engines.musetalk import MIN_FREE_GPU_FRACTION, MuseTalkEngine, keep_on_device

GIB = 1 << 30


def test_latents_stay_on_a_gpu_only_while_it_keeps_room_for_the_jobs():
    total = 80 * GIB
    assert keep_on_device("cuda", 24 << 20, free_bytes=60 * GIB, total_bytes=total)
    assert keep_on_device("cuda:1", 24 << 20, free_bytes=60 * GIB, total_bytes=total)
    # Taking them would leave less than MIN_FREE_GPU_FRACTION free: they are copied per batch instead
    edge = int(MIN_FREE_GPU_FRACTION * total)
    assert not keep_on_device("cuda", 2 * GIB, free_bytes=edge + GIB, total_bytes=total)
    # On the CPU the memory-mapped cache already is the device's memory
    assert not keep_on_device("cpu", 1, free_bytes=total, total_bytes=total)


def test_on_the_cpu_a_batch_gathers_its_rows_from_the_mapped_cache_and_keeps_nothing(tmp_path):
    engine = MuseTalkEngine(Settings(_env_file=None, weights_dir=tmp_path))
    engine._placement = Placement("cpu", False, True, "test")
    latents = np.random.default_rng(0).standard_normal((6, 8, 32, 32)).astype(np.float32)
    avatar = SimpleNamespace(latents=latents, folder=tmp_path / "avatar")
    rows = np.array([5, 0, 0, 3])
    got = engine._latents(avatar, rows)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert torch.equal(got, torch.from_numpy(latents[rows]))
    assert not engine._resident
