"""Shared helpers for the quantizer tests: small graphs, ranges by min/max, running."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits_cnn"


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def minmax_ranges(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str]
) -> dict[str, tuple[float, float]]:
    """Global min/max of ``names`` over ``feeds`` (one onnxruntime run, all as outputs)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    outputs = {o.name for o in m.graph.output}
    for name in names:
        if name not in outputs:
            m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    sess = session(m)
    wanted = [o.name for o in sess.get_outputs()]
    values = dict(zip(wanted, sess.run(None, feeds), strict=True))
    return {n: (float(values[n].min()), float(values[n].max())) for n in names}


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[tuple[str, list]],
    outputs: list[str],
    initializers: dict[str, np.ndarray],
    opset: int = 13,
) -> onnx.ModelProto:
    """A float32 model; output shapes are inferred."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 18 else 10
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    # Give graph outputs their inferred types/shapes (full_check requires shapes).
    vi = {v.name: v for v in model.graph.value_info}
    for out in model.graph.output:
        if out.name in vi:
            out.CopyFrom(vi[out.name])
    onnx.checker.check_model(model, full_check=True)
    return model


def op_count(model: onnx.ModelProto, op_type: str) -> int:
    return sum(1 for n in model.graph.node if n.op_type == op_type)


def load_digits() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray, np.ndarray]:
    model = onnx.load(str(DIGITS / "model.onnx"))
    calib = np.load(DIGITS / "calib.npz")["input"]
    test = np.load(DIGITS / "test.npz")
    return model, calib, test["input"], test["label"]
