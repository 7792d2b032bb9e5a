"""The Wav2Lip generator backends: ONNX Runtime parity with torch, the export cache, the auto rule,
the CUDA copy plan, and a whole render through ONNX Runtime."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from models.wav2lip import Wav2Lip
from node.device import Placement
from node.engines import wav2lip_backends as backends
from node.engines.wav2lip import Wav2LipEngine
from node.engines.wav2lip_backends import (
    CopyPlan, HostStaging, TorchGenerator, cached_export, choose_backend, copy_plan, generator_input,
    load_backend, load_onnx_generator, load_torch_generator, to_uint8_bgr,
)
from node.job import parse_job
from node.pipeline import Renderer
from tests.checkpoints import random_state_dict, save, training_container
from tests.conftest import make_speech, make_video
from tests.node.test_render import assert_output_contract

CPU = Placement("cpu", False, True, "test")
CUDA = Placement("cuda", True, True, "test")


def calibrated_state(seed: int) -> dict[str, torch.Tensor]:
    """Random official-format weights whose BatchNorm statistics are those of a batch, as training
    leaves them. Raw random statistics let activations reach ~2e3 before the final sigmoid, where
    fp32 itself (torch fp32 against fp64) moves outputs by ~5e-4, so no backend could be held to
    1e-4 there; calibrated, activations stay O(10) as with the real checkpoints."""
    model = Wav2Lip()
    model.load_state_dict(random_state_dict("wav2lip_generator", seed=seed))
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: one batch's statistics exactly
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.train()(torch.randn(16, 1, 80, 16, generator=gen), torch.rand(16, 6, 96, 96, generator=gen))
    return model.state_dict()


def inputs(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mel = (2 * rng.standard_normal((batch, 80, 16))).clip(-4, 4).astype(np.float32)
    crops = rng.integers(0, 256, (batch, 96, 96, 3), dtype=np.uint8)
    return mel, crops


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    return save(training_container(calibrated_state(seed=4)), folder / "wav2lip_gan.pth")


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> Path:
    """The real export of `checkpoint`, made once for the module."""
    return cached_export(checkpoint, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def torch_backend(checkpoint):
    return load_torch_generator(checkpoint, CPU)


@pytest.fixture
def counted_export(monkeypatch, exported):
    """The exporter replaced by one that writes the module's real export and counts its calls:
    the cache logic is what these tests are about, and a real export costs seconds."""
    calls = []
    hashes: dict[str, tuple[str, str]] = {}
    real_key = backends.export_key
    # the checkpoint's sha256 once per path (the export's own is still checked on every load)
    monkeypatch.setattr(backends, "export_key", lambda p: hashes.get(str(p)) or hashes.setdefault(str(p), real_key(p)))

    def fake_export(checkpoint, path):
        calls.append(path)
        time.sleep(0.2)  # widens the window in which a second process could race
        shutil.copyfile(exported, path)
        return Path(path)

    monkeypatch.setattr(backends, "export_checkpoint", fake_export)
    return calls


# --- parity ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_backend(checkpoint, exported):
    return load_onnx_generator(checkpoint, CPU, exported.parent.parent)


@pytest.mark.parametrize("batch", [3, 10])  # the export's batch axis is dynamic: neither is its trace's 2
def test_onnxruntime_matches_torch_within_1e4(torch_backend, onnx_backend, batch):
    mel, crops = inputs(batch)
    face = generator_input(crops)
    expected, actual = torch_backend.generate(mel, face), onnx_backend.generate(mel, face)
    assert actual.shape == expected.shape == (batch, 3, 96, 96) and actual.dtype == np.float32
    assert expected.std() > 0.1  # the mouths are not a constant that any graph would match
    assert np.abs(actual - expected).max() < 1e-4
    mouths = onnx_backend.mouths(mel, crops)
    assert mouths.dtype == np.uint8 and mouths.shape == (batch, 96, 96, 3)
    assert np.abs(mouths.astype(int) - to_uint8_bgr(expected)).max() <= 1


# --- the export cache -------------------------------------------------------------------------------


def test_second_load_reuses_the_export(checkpoint, exported, counted_export):
    before = exported.stat()
    again = cached_export(checkpoint, exported.parent.parent)
    assert again == exported and counted_export == []  # not exported again ...
    after = exported.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # ... nor rewritten


def test_the_export_is_keyed_by_the_checkpoints_hash(checkpoint, exported, counted_export, tmp_path):
    cache = tmp_path / "models"
    shutil.copytree(exported.parent.parent, cache)
    other = save(training_container(random_state_dict("wav2lip_generator", seed=9)), tmp_path / "wav2lip_gan.pth")
    path = cached_export(other, cache)
    assert len(counted_export) == 1 and path != cache / "wav2lip" / exported.name
    assert path.name.startswith(backends.export_key(other)[0])
    assert (cache / "wav2lip" / exported.name).is_file()  # the first checkpoint's export is kept
    # the same bytes under another name are the same checkpoint: no new export
    shutil.copyfile(checkpoint, tmp_path / "renamed.pth")
    assert cached_export(tmp_path / "renamed.pth", cache) == cache / "wav2lip" / exported.name
    assert len(counted_export) == 1


def _truncate(onnx: Path, record: Path) -> None:
    with open(onnx, "r+b") as f:
        f.truncate(onnx.stat().st_size // 2)


def _same_size_other_bytes(onnx: Path, record: Path) -> None:
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))


def _no_record(onnx: Path, record: Path) -> None:
    record.unlink()


def _garbage_record(onnx: Path, record: Path) -> None:
    record.write_text("{not json")


def _record_of_another_checkpoint(onnx: Path, record: Path) -> None:
    record.write_text(record.read_text().replace('"checkpoint_sha256": "', '"checkpoint_sha256": "0'))


@pytest.mark.parametrize("damage", [_truncate, _same_size_other_bytes, _no_record, _garbage_record,
                                    _record_of_another_checkpoint])
def test_a_torn_or_foreign_export_is_rebuilt(checkpoint, exported, counted_export, tmp_path, damage):
    cache = tmp_path / "models"
    shutil.copytree(exported.parent.parent, cache)
    onnx = cache / "wav2lip" / exported.name
    damage(onnx, onnx.with_suffix(".json"))
    assert cached_export(checkpoint, cache) == onnx
    assert len(counted_export) == 1
    assert onnx.read_bytes() == exported.read_bytes()
    assert cached_export(checkpoint, cache) == onnx and len(counted_export) == 1  # and trusted from now on
    assert not list(onnx.parent.glob("*.part"))  # no temporary file left behind


def test_processes_sharing_the_cache_export_once(checkpoint, counted_export, tmp_path):
    # threads stand in for processes: each takes its own file lock, as another process would
    results, errors = [], []

    def load():
        try:
            results.append(cached_export(checkpoint, tmp_path / "models"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(results)) == 1 and len(counted_export) == 1


# --- the auto rule and the fallback -----------------------------------------------------------------


@pytest.mark.parametrize(("setting", "placement", "ort", "expected"), [
    ("auto", CPU, True, "onnxruntime"),
    ("auto", CPU, False, "torch"),
    ("auto", CUDA, True, "torch"),
    ("auto", Placement("cuda:1", False, True, "test"), True, "torch"),
    ("torch", CPU, True, "torch"),
    ("onnxruntime", CUDA, False, "onnxruntime"),  # forced: a missing onnxruntime then falls back at load
])
def test_auto_rule(setting, placement, ort, expected):
    name, why = choose_backend(setting, placement, onnxruntime_available=lambda: ort)
    assert name == expected and why


def test_unknown_backend_setting_is_refused():
    with pytest.raises(ValueError, match="WAV2LIP_BACKEND"):
        choose_backend("tensorrt", CPU)


def test_onnxruntime_is_importable_here():
    # the cpu extra installs it: the auto rule must pick it on this (CPU) machine
    assert backends.onnxruntime_cpu_available()


def test_a_failing_onnxruntime_load_falls_back_to_torch_with_one_warning(checkpoint, tmp_path, caplog):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("MODEL_CACHE_DIR pointing at a file")
    with caplog.at_level(logging.WARNING, logger=backends.__name__):
        backend, why = load_backend("onnxruntime", CPU, checkpoint, not_a_folder)
    assert backend.name == "torch" and "failed at load" in why
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


# --- the copy plan (CUDA host<->device traffic), checked without a GPU ---------------------------------


def test_copy_plan_per_placement():
    assert copy_plan(CPU, can_pin=lambda: True) == CopyPlan(False, False, False, copy_plan(CPU).reason)
    pinned = copy_plan(CUDA, can_pin=lambda: True)
    assert (pinned.staged, pinned.pinned, pinned.non_blocking) == (True, True, True)
    refused = copy_plan(CUDA, can_pin=lambda: False)
    assert (refused.staged, refused.pinned, refused.non_blocking) == (True, False, False)


def test_staging_buffers_are_reused_and_grown():
    staging = HostStaging(pinned=False)
    first = staging.view("face", (8, 6, 96, 96), torch.float32)
    smaller = staging.view("face", (3, 6, 96, 96), torch.float32)
    assert smaller.shape == (3, 6, 96, 96) and smaller.data_ptr() == first.data_ptr()
    larger = staging.view("face", (16, 6, 96, 96), torch.float32)
    assert larger.shape[0] == 16 and staging.view("face", (8, 6, 96, 96), torch.float32).data_ptr() == larger.data_ptr()
    assert staging.view("mel", (8, 80, 16), torch.float32).data_ptr() != first.data_ptr()


def test_staged_copies_give_the_same_mouths_as_direct_ones(torch_backend):
    direct = torch_backend
    staged = TorchGenerator(direct.model, CPU, CopyPlan(True, False, True, "the CUDA plan, on the CPU"))
    mel, crops = inputs(2, seed=1)
    expected = to_uint8_bgr(direct.generate(mel, generator_input(crops)))  # the numpy path
    first = staged.mouths(mel, crops)
    assert np.array_equal(first, expected) and np.array_equal(direct.mouths(mel, crops), expected)
    kept = first.copy()
    staged.mouths(*inputs(1, seed=2))  # the next batch reuses the buffers ...
    assert np.array_equal(first, kept)  # ... and does not change what the last call returned
    # render slots are threads sharing the engine: each has its own buffers
    other: list = []
    worker = threading.Thread(target=lambda: other.append(staged.staging))
    worker.start()
    worker.join()
    assert other[0] is not staged.staging and staged.staging is staged.staging


@pytest.mark.requires_cuda
def test_cuda_backend_uses_pinned_buffers_and_matches_the_cpu(checkpoint):
    from node.device import choose_placement

    placement = choose_placement("cuda")
    gpu = load_torch_generator(checkpoint, placement)
    assert gpu.plan.pinned and gpu.plan.non_blocking
    mel, crops = inputs(32, seed=3)
    out = gpu.mouths(mel, crops)
    assert all(buf.is_pinned() for buf in gpu.staging._buffers.values())
    cpu = load_torch_generator(checkpoint, CPU).mouths(mel, crops)
    assert np.abs(out.astype(int) - cpu).mean() < 1.0  # fp16 autocast on the GPU


# --- a whole render ------------------------------------------------------------------------------------


def test_wav2lip_render_through_onnxruntime(tmp_path, settings, exported, checkpoint, ffprobe):
    weights = tmp_path / "weights"
    weights.mkdir()
    os.link(checkpoint, weights / "wav2lip_gan.pth")
    save(random_state_dict("s3fd", seed=2), weights / "s3fd.pth")
    s = settings.model_copy(update={"weights_dir": weights, "model_cache_dir": exported.parent.parent,
                                    "wav2lip_backend": "onnxruntime"})
    engine = Wav2LipEngine(s, detector=lambda frames: [(40, 30, 120, 110)] * len(frames), detector_id="box")
    renderer = Renderer(s, engines={"wav2lip": engine})
    job = parse_job({"video_id": "w2l-ort", "audio": str(make_speech(tmp_path / "s.wav", 1.2)),
                     "avatar": str(make_video(tmp_path / "a.mp4", seconds=0.4)), "engine": "wav2lip"})
    result = renderer.render(job, tmp_path / "o.mp4")
    assert result.status == "succeeded", result.as_dict()
    assert engine.backend_name == "onnxruntime"
    assert result.extra["lipsync_report"]["generator_backend"] == "onnxruntime"
    assert_output_contract(tmp_path / "o.mp4", 1.2, Fraction(25))


def test_engine_honours_wav2lip_backend_torch(tmp_path, settings, checkpoint):
    weights = tmp_path / "weights"
    weights.mkdir()
    os.link(checkpoint, weights / "wav2lip_gan.pth")
    engine = Wav2LipEngine(settings.model_copy(update={"weights_dir": weights, "wav2lip_backend": "torch",
                                                       "model_cache_dir": tmp_path / "models"}))
    assert engine.backend_name is None
    engine.load()
    assert engine.backend_name == "torch" and engine.backend_reason == "WAV2LIP_BACKEND=torch"
    mel, crops = inputs(2)
    mouths = engine._generate(mel, crops)
    assert mouths.shape == (2, 96, 96, 3) and mouths.dtype == np.uint8
    assert not (tmp_path / "models").exists()  # the torch backend exports nothing
