"""Where the Wav2Lip generator runs: PyTorch, or ONNX Runtime on an export cached per checkpoint.

Every backend answers the same two calls:

    generate(mel (B, 80, 16) float32, face (B, 6, 96, 96) float32) -> (B, 3, 96, 96) float32 [0, 1]
    mouths(mel (B, 80, 16) float32, crops (B, 96, 96, 3) uint8 BGR) -> (B, 96, 96, 3) uint8 BGR

WAV2LIP_BACKEND picks one; `auto` follows this rule (`choose_backend`):

    CUDA placement                 -> torch: fp16 autocast + channels-last already runs the
                                      generator at ~20k frames/s on an H200, far past what the
                                      encoder can take; ONNX Runtime would need the CUDA EP and an
                                      fp16 export for no gain the node can use
    CPU placement, onnxruntime     -> onnxruntime: on a 2-core EPYC (bench/generator_backends.py)
      importable                      it matched torch's folded channels-last path on idle cores
                                      (16.2 vs 15.5 frames/s) and ran 1.3-2.2x its frames/s on
                                      shared ones, where torch's OpenMP workers spin and ORT's
                                      sleep; a warm render took 13-37% less time. Outputs within 1e-4
    CPU placement, no onnxruntime  -> torch (folded BatchNorm, channels-last)

The ONNX export (models/wav2lip/export.py) is made once per checkpoint and kept in MODEL_CACHE_DIR
under `wav2lip/<checkpoint sha256>-<exporter id>.onnx`, beside a JSON record of that key and the
export's own size and sha256. The record is written last, so a file without a matching record
(a crash mid-export, a torn copy, another file put there) is never trusted: it is exported again.
A file lock makes processes sharing the cache export once. If the export or the session fails
at load, one warning is logged and the torch backend is used: a job never fails for it.

On CUDA the torch backend follows a copy plan (`copy_plan`): crops cross the bus as uint8 (an
eighth of the bytes of the 6-channel float input, which is built on the device), the output
comes back as uint8 (a quarter of the float bytes), through page-locked host buffers reused
across batches, with non-blocking copies and one stream synchronise per batch.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from node.device import Placement
from node.engines.face_track import CROP_SIZE

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")


def generator_input(crops: np.ndarray) -> np.ndarray:
    """(B, 96, 96, 3) uint8 BGR crops -> (B, 6, 96, 96) float32 [0, 1]: [lower half masked | full].

    Both halves come from the same frame, as in the official inference (PIPELINES.md 1.4 #20-21)."""
    faces = crops.astype(np.float32) / 255.0
    masked = faces.copy()
    masked[:, CROP_SIZE // 2:] = 0.0
    return np.ascontiguousarray(np.concatenate([masked, faces], axis=3).transpose(0, 3, 1, 2))


def to_uint8_bgr(pred: np.ndarray) -> np.ndarray:
    """(B, 3, 96, 96) float [0, 1] -> (B, 96, 96, 3) uint8, rounded to nearest."""
    return np.clip(pred.transpose(0, 2, 3, 1) * 255.0 + 0.5, 0, 255).astype(np.uint8)


class GeneratorBackend(Protocol):
    name: str

    def generate(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray: ...

    def mouths(self, mel: np.ndarray, crops: np.ndarray) -> np.ndarray: ...


# --- the auto rule ------------------------------------------------------------------------------


def onnxruntime_cpu_available() -> bool:
    try:
        import onnxruntime
    except Exception:  # not installed, or a broken native library: either way, not usable
        return False
    return "CPUExecutionProvider" in onnxruntime.get_available_providers()


def choose_backend(setting: str, placement: Placement, *,
                   onnxruntime_available: Callable[[], bool] = onnxruntime_cpu_available) -> tuple[str, str]:
    """(backend, why) for WAV2LIP_BACKEND=`setting` on `placement`; the rule is the module's."""
    if setting in BACKENDS:
        return setting, f"WAV2LIP_BACKEND={setting}"
    if setting != "auto":
        raise ValueError(f"WAV2LIP_BACKEND must be auto, torch or onnxruntime, not {setting!r}")
    if placement.device.startswith("cuda"):
        return "torch", "auto: CUDA placement, fp16 channels-last torch"
    if onnxruntime_available():
        return "onnxruntime", "auto: CPU placement and onnxruntime installed"
    return "torch", "auto: CPU placement, onnxruntime not installed"


# --- torch, with its host<->device copy plan -----------------------------------------------------


@dataclass(frozen=True)
class CopyPlan:
    staged: bool  # host inputs/outputs go through buffers kept across batches
    pinned: bool  # those buffers are page-locked (DMA straight from them, and async)
    non_blocking: bool  # copies are queued on the stream; one synchronise per batch
    reason: str


def can_pin_memory() -> bool:
    """Whether page-locked host memory can be had (a tight memlock limit can refuse it)."""
    import torch

    try:
        return bool(torch.empty(1, pin_memory=True).is_pinned())
    except RuntimeError:
        return False


def copy_plan(placement: Placement, *, can_pin: Callable[[], bool] = can_pin_memory) -> CopyPlan:
    if not placement.device.startswith("cuda"):
        return CopyPlan(False, False, False, "CPU: the model reads the host arrays in place")
    if can_pin():
        return CopyPlan(True, True, True, "CUDA: pinned staging buffers, non-blocking copies")
    # a non-blocking copy from pageable memory is synchronous anyway; reusing buffers still helps
    return CopyPlan(True, False, False, "CUDA: page-locked memory refused, pageable staging buffers")


class HostStaging:
    """Named host tensors reused across batches, grown to the largest batch seen."""

    def __init__(self, pinned: bool):
        self.pinned = pinned
        self._buffers: dict[str, object] = {}

    def view(self, name: str, shape: tuple[int, ...], dtype):
        import torch

        buf = self._buffers.get(name)
        if buf is None or buf.shape[1:] != shape[1:] or buf.dtype != dtype or buf.shape[0] < shape[0]:
            buf = torch.empty(shape, dtype=dtype, pin_memory=self.pinned)
            self._buffers[name] = buf
        return buf[:shape[0]]


class TorchGenerator:
    """Today's generator: folded BatchNorm, channels-last, fp16 autocast on capable GPUs."""

    name = "torch"

    def __init__(self, model, placement: Placement, plan: CopyPlan):
        import torch

        self.model, self.placement, self.plan = model, placement, plan
        self.device = torch.device(placement.device)
        self._per_thread = threading.local()

    @property
    def staging(self) -> HostStaging | None:
        """This thread's buffers: a worker's render slots are threads sharing one engine."""
        if not self.plan.staged:
            return None
        if not hasattr(self._per_thread, "staging"):
            self._per_thread.staging = HostStaging(self.plan.pinned)
        return self._per_thread.staging

    def _upload(self, name: str, array: np.ndarray):
        import torch

        host, staging = torch.from_numpy(np.ascontiguousarray(array)), self.staging
        if staging is not None:
            host = staging.view(name, tuple(host.shape), host.dtype).copy_(host)
        return host.to(self.device, non_blocking=self.plan.non_blocking)

    def _download(self, name: str, tensor) -> np.ndarray:
        import torch

        staging = self.staging
        if staging is None:
            return tensor.cpu().numpy()
        host = staging.view(name, tuple(tensor.shape), tensor.dtype)
        host.copy_(tensor, non_blocking=self.plan.non_blocking)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return host.numpy().copy()  # the staging buffer is overwritten by the next batch

    def _run(self, mel, face):
        import torch

        if self.placement.channels_last:
            face = face.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.placement.fp16):
            return self.model(mel[:, None], face).float()

    def generate(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._download("pred", self._run(self._upload("mel", mel), self._upload("face", face)))

    def mouths(self, mel: np.ndarray, crops: np.ndarray) -> np.ndarray:
        """As `generator_input` -> generate -> `to_uint8_bgr`, with the float work on the device."""
        import torch

        with torch.inference_mode():
            faces = self._upload("crops", crops).permute(0, 3, 1, 2).float() / 255.0
            masked = faces.clone()
            masked[:, :, CROP_SIZE // 2:] = 0.0
            pred = self._run(self._upload("mel", mel), torch.cat([masked, faces], dim=1))
            out = (pred.permute(0, 2, 3, 1) * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8)
            return self._download("mouths", out.contiguous())


def load_torch_generator(checkpoint: Path, placement: Placement) -> TorchGenerator:
    import torch

    from models.wav2lip import load_wav2lip
    from models.wav2lip.conv import fold_batchnorm

    # Strict load of the official file first, then the inference-only rewrites.
    model = fold_batchnorm(load_wav2lip(checkpoint, placement.device))
    if placement.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return TorchGenerator(model, placement, copy_plan(placement))


# --- onnxruntime, on the cached export -------------------------------------------------------------


def export_key(checkpoint: Path) -> tuple[str, str]:
    """(checkpoint sha256, exporter id): what an export is valid for."""
    from models.wav2lip.export import exporter_id
    from node.weights import sha256_file

    return sha256_file(checkpoint), exporter_id()


def _record_matches(onnx_path: Path, record_path: Path, key: tuple[str, str]) -> bool:
    from node.weights import sha256_file

    try:
        record = json.loads(record_path.read_text())
        return ((record.get("checkpoint_sha256"), record.get("exporter")) == key
                and onnx_path.stat().st_size == record.get("onnx_bytes")
                and sha256_file(onnx_path) == record.get("onnx_sha256"))
    except (OSError, ValueError, AttributeError):  # missing, unreadable, not JSON, not a dict
        return False


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; other workers' users read it too
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_checkpoint(checkpoint: Path, path: Path) -> None:
    """Load, fold and export `checkpoint` to `path`: seconds, which the cache pays once."""
    from models.wav2lip import export, load_wav2lip

    export.export_generator(export.inference_form(load_wav2lip(checkpoint, "cpu")), path)


def cached_export(checkpoint: Path, cache_dir: Path) -> Path:
    """The ONNX export of `checkpoint` in `cache_dir`, exported (once, under a lock) if absent,
    torn or foreign."""
    from filelock import FileLock

    from node.weights import sha256_file

    key = export_key(checkpoint)
    folder = Path(cache_dir) / "wav2lip"
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / f"{key[0]}-{key[1]}.onnx"
    record_path = onnx_path.with_suffix(".json")
    if _record_matches(onnx_path, record_path, key):
        return onnx_path
    with FileLock(str(onnx_path.with_suffix(".lock"))):
        if _record_matches(onnx_path, record_path, key):  # another process made it meanwhile
            return onnx_path
        log.info("wav2lip: exporting %s to ONNX (once per checkpoint)", checkpoint.name)
        record_path.unlink(missing_ok=True)  # no record may vouch for the file being replaced
        _write_atomically(onnx_path, lambda tmp: export_checkpoint(checkpoint, tmp))
        record = {"checkpoint_sha256": key[0], "exporter": key[1], "checkpoint": checkpoint.name,
                  "onnx_bytes": onnx_path.stat().st_size, "onnx_sha256": sha256_file(onnx_path)}
        _write_atomically(record_path, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    return onnx_path


class OnnxGenerator:
    name = "onnxruntime"

    def __init__(self, session):
        self.session = session

    def generate(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
        mel = np.ascontiguousarray(mel, dtype=np.float32)[:, None]
        return self.session.run(None, {"mel": mel, "face": np.ascontiguousarray(face, dtype=np.float32)})[0]

    def mouths(self, mel: np.ndarray, crops: np.ndarray) -> np.ndarray:
        return to_uint8_bgr(self.generate(mel, generator_input(crops)))


def session_options(threads: int):
    """One graph, run on `threads` cores: all of ORT's graph rewrites, no inter-op parallelism,
    and worker threads that sleep rather than spin between batches, so the encoder running
    beside the generator gets those cores. The optimised graph is not saved: building the session
    takes ~0.3 s, and ORT_ENABLE_ALL's output is tied to this machine's CPU features, which a
    MODEL_CACHE_DIR shared between nodes must not assume."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def load_onnx_generator(checkpoint: Path, placement: Placement, cache_dir: Path) -> OnnxGenerator:
    import onnxruntime as ort
    import torch

    path = cached_export(checkpoint, cache_dir)
    providers = ["CPUExecutionProvider"]
    if placement.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        device_id = int(placement.device.partition(":")[2] or 0)
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
    # torch's thread count: the cores this process should use (OMP_NUM_THREADS, affinity)
    session = ort.InferenceSession(str(path), session_options(torch.get_num_threads()), providers=providers)
    backend = OnnxGenerator(session)
    probe = backend.generate(np.zeros((1, 80, 16), np.float32), np.zeros((1, 6, CROP_SIZE, CROP_SIZE), np.float32))
    if probe.shape != (1, 3, CROP_SIZE, CROP_SIZE):
        raise RuntimeError(f"the ONNX generator returned shape {probe.shape}")
    return backend


def load_backend(setting: str, placement: Placement, checkpoint: Path, cache_dir: Path) -> tuple[GeneratorBackend, str]:
    """(backend, why) per the rule; an onnxruntime failure falls back to torch with one warning."""
    name, why = choose_backend(setting, placement)
    if name == "onnxruntime":
        try:
            return load_onnx_generator(checkpoint, placement, cache_dir), why
        except Exception as e:  # never fail a job for the faster path: the torch one still works
            log.warning("wav2lip: onnxruntime backend unavailable (%s: %s); using torch", type(e).__name__, e)
            why = f"{why}, but it failed at load ({type(e).__name__}): torch"
    return load_torch_generator(checkpoint, placement), why
