"""Range narrowing of the systolic backend (spec section 7), as a range pass."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from systolic_sdk.backends.systolic.passes import narrow_ranges

F32 = np.float32


def _graph(nodes, outputs, inits=None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v, F32), k) for k, v in (inits or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_relu_then_maxpool() -> None:
    nodes = [
        helper.make_node("Neg", ["x"], ["c"], name="neg"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2]),
    ]
    ranges = {"c": (-3.0, 2.0), "r": (0.0, 2.0), "p": (0.25, 1.5)}
    out = narrow_ranges(_graph(nodes, ["p"]), ranges)
    assert out["r"] == (0.25, 1.5)  # the Relu takes the MaxPool output's range
    assert out["c"] == (0.0, 2.0)  # read only by the Relu: rmin = max(rmin, 0)
    assert out["p"] == (0.25, 1.5)
    assert ranges["c"] == (-3.0, 2.0), "the input mapping is not modified"


def test_shared_or_output_tensors_are_not_narrowed() -> None:
    nodes = [
        helper.make_node("Neg", ["x"], ["c"], name="neg"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Abs", ["c"], ["a"], name="abs"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
    ]
    ranges = {"c": (-3.0, 2.0), "a": (0.0, 3.0), "r": (0.0, 2.0), "r2": (0.0, 3.0)}
    out = narrow_ranges(_graph(nodes, ["r", "a", "r2"]), ranges)
    assert out["c"] == (-3.0, 2.0)  # two readers
    assert out["a"] == (0.0, 3.0)  # a graph output


def test_clip_narrows_its_input_and_output() -> None:
    nodes = [
        helper.make_node("Neg", ["x"], ["c"], name="neg"),
        helper.make_node("Clip", ["c", "lo", "hi"], ["k"], name="clip"),
        helper.make_node("Neg", ["k"], ["y"], name="neg2"),
    ]
    model = _graph(nodes, ["y"], {"lo": 0.0, "hi": 6.0})
    out = narrow_ranges(model, {"c": (-2.0, 9.0), "k": (0.0, 9.0)})
    assert out["c"] == (0.0, 6.0) and out["k"] == (0.0, 6.0)
    out = narrow_ranges(model, {"c": (-2.0, 4.0), "k": (0.0, 4.0)})
    assert out["c"] == (0.0, 4.0) and out["k"] == (0.0, 4.0)
