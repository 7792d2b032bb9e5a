"""The Wav2Lip generator as an ONNX graph: its inference form (BatchNorm folded), batch axis dynamic.

    mel   (B, 1, 80, 16) float32   -> graph input "mel"
    face  (B, 6, 96, 96) float32   -> graph input "face"
    mouth (B, 3, 96, 96) float32   <- graph output "mouth"

Exporter: the TorchScript one (`dynamo=False`) where torch still has it (torch 2.2 ... 2.13 do):
it needs nothing beyond torch, traces this static graph in a few seconds and writes one
self-contained file. Torch releases without it get the torch.export-based exporter, which needs
the `onnxscript` package; `exporter_id` names which one runs, so a cache keyed on it re-exports
when torch changes. Graph optimisation is left to ONNX Runtime, which fuses conv + add + ReLU
itself when the session is built; only constant folding happens here.

Export is fp32 on the CPU whatever device the node uses: the graph is device-neutral and the
runtime decides where it runs.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch

from .conv import fold_batchnorm
from .model import Wav2Lip

__all__ = ["INPUT_NAMES", "OPSET", "OUTPUT_NAME", "export_generator", "exporter_id", "inference_form"]

#: ONNX opset: 17 is read by every onnxruntime >= 1.14 and written by every torch >= 1.13.
OPSET = 17
INPUT_NAMES = ("mel", "face")
OUTPUT_NAME = "mouth"
#: Bumped when what this module writes changes for the same torch and opset (names, axes, folding).
EXPORT_FORMAT = 1


def exporter_id() -> str:
    """What produced an export, for cache keys: format, opset and torch version (a torch version
    always takes the same exporter path below, so it names the exporter too)."""
    return f"f{EXPORT_FORMAT}-opset{OPSET}-torch{torch.__version__.split('+')[0]}"


def inference_form(model: Wav2Lip) -> Wav2Lip:
    """The form that is exported: fp32, on the CPU, eval mode, BatchNorm folded.

    Folds in place (the caller's model is consumed). Runs under no_grad, not inference_mode:
    tensors made in inference mode cannot be traced by the exporter."""
    with torch.no_grad():
        return fold_batchnorm(model.float().cpu().eval())


def _example_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 1, 80, 16, generator=gen), torch.rand(batch, 6, 96, 96, generator=gen))


def export_generator(model: Wav2Lip, path: str | os.PathLike) -> Path:
    """Write `model` (already in `inference_form`) to `path` as ONNX with a dynamic batch axis.

    Writes `path` directly: callers that need atomicity export to a temporary name and rename."""
    path = Path(path)
    args = _example_inputs(2)  # 2, not 1: a batch of one could let a tracer specialise the axis
    names = dict(input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME], opset_version=OPSET)
    with torch.no_grad():
        try:
            _export_torchscript(model, args, path, names)
        except (ImportError, AttributeError, NotImplementedError, TypeError):  # pragma: no cover
            # a torch without the TorchScript exporter: torch.export-based, needs onnxscript
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(model, args, str(path), dynamo=True, external_data=False,
                              dynamic_shapes=({0: batch}, {0: batch}), **names)
    return path


def _export_torchscript(model: Wav2Lip, args: tuple, path: Path, names: dict) -> None:
    import warnings

    extra = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():  # torch >= 2.9 warns that this exporter is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, args, str(path), do_constant_folding=True,
                          dynamic_axes={n: {0: "batch"} for n in (*INPUT_NAMES, OUTPUT_NAME)}, **extra, **names)
