"""A tiny random stand-in for `dw-ll_ucoco_384.onnx`: same input/output names and shapes.

The graph (ONNX opset 17, float32), position-sensitive so that the flip test and the affine matter:

    input  [N, 3, 384, 288]
    p = AveragePool(input, 4x4, stride 4)            [N, 3, 96, 72]
    f = Conv1x1(p, W [133, 3, 1, 1], b [133])        [N, 133, 96, 72]
    simcc_x = ReduceMean(f, axis=2) @ Mx [72, 576]   [N, 133, 576]
    simcc_y = ReduceMean(f, axis=3) @ My [96, 768]   [N, 133, 768]

W, b, Mx, My are standard normal from numpy's default_rng(seed), stored as initializers named
"W", "b", "Mx", "My" (tests read them back with onnx.numpy_helper to recompute the graph). The
batch axis is 1, as in the official export, or the symbolic "batch" with dynamic_batch=True.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

POOL = 4
HEIGHT, WIDTH = 384, 288
KEYPOINTS = 133
X_BINS, Y_BINS = 576, 768


def dwpose_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """The graph's initializers for `seed`, float32."""
    rng = np.random.default_rng(seed)
    return {
        "W": rng.standard_normal((KEYPOINTS, 3, 1, 1)).astype(np.float32),
        "b": rng.standard_normal(KEYPOINTS).astype(np.float32),
        "Mx": rng.standard_normal((WIDTH // POOL, X_BINS)).astype(np.float32),
        "My": rng.standard_normal((HEIGHT // POOL, Y_BINS)).astype(np.float32),
    }


def build_dwpose_onnx(path, seed: int = 0, *, dynamic_batch: bool = False,
                      output_names: tuple[str, str] = ("simcc_x", "simcc_y")) -> Path:
    """Write the graph to `path` and return it as a Path. `output_names` lets a test break them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    batch = "batch" if dynamic_batch else 1
    weights = dwpose_weights(seed)
    nodes = [
        helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[POOL, POOL],
                         strides=[POOL, POOL]),
        helper.make_node("Conv", ["pooled", "W", "b"], ["features"]),
        helper.make_node("ReduceMean", ["features"], ["columns"], axes=[2], keepdims=0),
        helper.make_node("ReduceMean", ["features"], ["rows"], axes=[3], keepdims=0),
        helper.make_node("MatMul", ["columns", "Mx"], [output_names[0]]),
        helper.make_node("MatMul", ["rows", "My"], [output_names[1]]),
    ]
    graph = helper.make_graph(
        nodes,
        "dwpose_stub",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, HEIGHT, WIDTH])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, KEYPOINTS, bins])
            for name, bins in zip(output_names, (X_BINS, Y_BINS))
        ],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="lipsync-node tests")
    model.ir_version = 8  # readable by any onnxruntime >= 1.10
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path
