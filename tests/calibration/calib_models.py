"""Small models built with onnx.helper for the calibration tests."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
from onnx import TensorProto, numpy_helper


def conv_model(batch: str | int = "N", channels: int = 1, size: int = 8) -> onnx.ModelProto:
    """x[N,C,H,W] -> Conv(3x3, 4 ch) -> Relu -> GlobalAveragePool -> Flatten -> MatMul."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, channels, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    fc = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "fc")
    nodes = [
        oh.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["conv"], ["relu"]),
        oh.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        oh.make_node("Flatten", ["pool"], ["flat"]),
        oh.make_node("MatMul", ["flat", "fc"], ["y"]),
    ]
    graph = oh.make_graph(
        nodes,
        "conv",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, size, size])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        [w, b, fc],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def two_input_model() -> onnx.ModelProto:
    """a[N,3] + b[N,3] -> Mul by 2 (two float inputs)."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    nodes = [oh.make_node("Add", ["a", "b"], ["s"]), oh.make_node("Mul", ["s", "two"], ["y"])]
    graph = oh.make_graph(
        nodes,
        "two",
        [
            oh.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
            oh.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3]),
        ],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [two],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 9
    return model
