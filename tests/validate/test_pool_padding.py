"""The pool-padding rule: an accelerator-path fused max pool counts padding as 0."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime_emulator.validate import POOL_PADDING, UNEXPLAINED, validate


def _scalar(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, np.float32), name)


def _pool_conv_model(rng: np.random.Generator) -> onnx.ModelProto:
    """QLinearConv_nhwc 8x8x2 -> 8x8x3 (3x3, pads 1), fused 2x2/2 max pool, pool pads 1,
    no ReLU and a negative bias: outputs are mostly negative."""
    w = rng.integers(-20, 21, (3, 3, 2, 3), dtype=np.int8)  # HWIO
    b = np.full((3,), -40000, np.int32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             _scalar("sx", 0.02), _scalar("sw", 0.01), _scalar("sy", 0.07)]  # fmt: skip
    node = helper.make_node(
        "QLinearConv_nhwc",
        ["x", "sx", "", "w", "sw", "", "sy", "", "b"],
        ["y"],
        name="conv_pool",
        kernel_shape=[3, 3],
        pads=[1, 1, 1, 1],
        strides=[1, 1],
        maxpool=1,
        pool_kernel_shape=[2, 2],
        pool_strides=[2, 2],
        pool_pads=[1, 1, 1, 1],
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT8, ["n", 8, 8, 2])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, ["n", 5, 5, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    helper.set_model_props(model, {"systolic_sdk.backend": "systolic"})
    return model


def _lower(model: onnx.ModelProto, bias_shift: int = 0) -> onnx.ModelProto:
    """Transposes + QLinearConv + ONNX MaxPool (padding excluded) + transpose."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w = inits["w"].transpose(3, 2, 0, 1)
    b = inits["b"].copy()
    b[1] += bias_shift
    z8 = np.array(0, np.int8)
    new_inits = [
        numpy_helper.from_array(w, "w_oihw"),
        numpy_helper.from_array(b, "b2"),
        numpy_helper.from_array(z8, "zx"),
        numpy_helper.from_array(z8, "zw"),
        numpy_helper.from_array(z8, "zy"),
        *(t for t in model.graph.initializer if t.name in ("sx", "sw", "sy")),
    ]
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "QLinearConv",
            ["x_nchw", "sx", "zx", "w_oihw", "sw", "zw", "sy", "zy", "b2"],
            ["conv"],
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node(
            "MaxPool", ["conv"], ["pool"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1]
        ),  # fmt: skip
        helper.make_node("Transpose", ["pool"], ["y"], perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(
        nodes, "lowered", list(model.graph.input), list(model.graph.output), new_inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_pool_padding_is_a_documented_rule() -> None:
    rng = np.random.default_rng(0)
    model = _pool_conv_model(rng)
    x = rng.integers(-128, 128, (2, 8, 8, 2), dtype=np.int8)
    report = validate(model, None, [{"x": x}], lowering=_lower)
    (out,) = report.outputs
    assert not out.bit_exact and out.n_diff > 0
    assert report.ok
    assert set(report.tensors[0].causes) == {POOL_PADDING}
    first = report.first_divergence
    assert first.node == "conv_pool" and first.cause == POOL_PADDING
    assert first.emulator == 0 and first.lowered < 0
    # Only border windows (touching the pool padding) differ.
    assert first.index[1] in (0, 4) or first.index[2] in (0, 4)
    assert any("pool padding" in note for note in report.notes)


def test_interior_difference_at_a_pool_conv_is_unexplained() -> None:
    rng = np.random.default_rng(1)
    model = _pool_conv_model(rng)
    x = rng.integers(-128, 128, (2, 8, 8, 2), dtype=np.int8)
    report = validate(model, None, [{"x": x}], lowering=lambda m: _lower(m, bias_shift=5000))
    assert not report.ok
    assert UNEXPLAINED in report.tensors[0].causes
