"""Min/Max with a constant on the Systolic backend: int8 on the host, the constant
quantized with the activation's scale, ranges narrowed, NHWC passed through.

Cross-layer equalization turns ReLU6 into Relu then Min with a per-channel bound, so
this is the graph every equalized MobileNet-class model has."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from systolic_helpers import initializers, nodes_of, quantize_systolic, relu_attr

import runtime_emulator
from runtime_emulator import datapath
from runtime_emulator.validate import validate
from systolic_sdk.backends import get_backend
from systolic_sdk.backends.systolic.passes import narrow_ranges

F32 = np.float32
RNG = np.random.default_rng(5)


def _conv_relu_bound(op: str = "Min", bound_shape: tuple = (4, 1, 1)) -> onnx.ModelProto:
    """x -> Conv(3x3, pad 1) -> Relu -> Min/Max(c) -> Conv(1x1) -> y."""
    w1 = RNG.normal(0, 0.5, (4, 3, 3, 3)).astype(F32)
    w2 = RNG.normal(0, 0.5, (2, 4, 1, 1)).astype(F32)
    bound = np.linspace(0.4, 2.5, int(np.prod(bound_shape))).astype(F32).reshape(bound_shape)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node(op, ["r", "bound"], ["m"], name="bound"),
        helper.make_node("Conv", ["m", "w2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2, 8, 8])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (bound, "bound"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return onnx.shape_inference.infer_shapes(model)


def _feeds(n: int = 16) -> dict[str, np.ndarray]:
    return {"x": RNG.normal(0, 1, (n, 3, 8, 8)).astype(F32)}


def _scale_of(model: onnx.ModelProto, node: onnx.NodeProto, index: int) -> float:
    return float(initializers(model)[node.input[index]])


def test_min_becomes_int8_min_with_the_bound_quantized_at_the_input_scale() -> None:
    model = _conv_relu_bound()
    feeds = _feeds()
    q = quantize_systolic(model, feeds)
    (mins,) = [nodes_of(q, "Min")]
    assert len(mins) == 1
    conv1 = next(n for n in nodes_of(q, "QLinearConv") if n.name == "conv1")
    assert relu_attr(conv1) == 1  # the Relu fused: its only consumer chain is the Min
    s = _scale_of(q, conv1, 6)
    bound = initializers(model)["bound"]
    cq = initializers(q)[mins[0].input[1]]
    assert cq.dtype == np.int8
    np.testing.assert_array_equal(cq, datapath.quantize_linear(bound, F32(s), 0, np.int8))
    # the conv's output range is narrowed to the largest bound: scale = max(c) / 127
    assert s == pytest.approx(float(bound.max()) / 127, rel=1e-6)


def test_int8_min_equals_min_of_the_quantized_values() -> None:
    """Q(min(x, c)) == min(Q(x), Q(c)): the Min output equals the fake-quant reference."""
    model = _conv_relu_bound()
    feeds = _feeds()
    q = quantize_systolic(model, feeds)
    (m,) = nodes_of(q, "Min")
    trace = runtime_emulator.run(q, feeds, trace=True)
    x = trace[m.input[0]]
    cq = initializers(q)[m.input[1]]
    assert x.dtype == np.int8
    np.testing.assert_array_equal(trace[m.output[0]], np.minimum(x, cq))
    assert (x > cq).any(), "the bound never clipped: the test would prove nothing"


def test_max_with_constant_narrows_rmin() -> None:
    model = _conv_relu_bound("Max")
    ranges = {"c": (-3.0, 5.0), "r": (0.0, 5.0), "m": (0.0, 5.0)}
    out = narrow_ranges(model, ranges)
    assert out["m"] == (pytest.approx(0.4), 5.0)
    assert out["r"] == (pytest.approx(0.4), 5.0)


def test_min_narrowing_reaches_the_conv_through_the_relu() -> None:
    model = _conv_relu_bound()
    out = narrow_ranges(model, {"c": (-3.0, 5.0), "r": (0.0, 5.0), "m": (0.0, 5.0)})
    assert out["m"] == (0.0, pytest.approx(2.5))
    assert out["r"] == (0.0, pytest.approx(2.5))
    assert out["c"] == (0.0, pytest.approx(2.5))


def test_min_of_two_activations_stays_float() -> None:
    model = _conv_relu_bound()
    model.graph.node[2].input[1] = "c"  # Min(r, c): no constant
    q = quantize_systolic(model, _feeds())
    (m,) = nodes_of(q, "Min")
    assert all(i not in initializers(q) for i in m.input)
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    assert {producers[i] for i in m.input} == {"DequantizeLinear"}


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_bound_graph_is_bit_exact_against_the_lowering(layout: str) -> None:
    model = _conv_relu_bound()
    feeds = _feeds()
    q = quantize_systolic(model, feeds, extra_options={"SystolicLayout": layout})
    report = validate(q, model, [feeds], lowering=get_backend("systolic").lower)
    assert report.bit_exact


def test_nhwc_passes_the_bound_through_with_the_constant_relaid() -> None:
    model = _conv_relu_bound()
    feeds = _feeds()
    q = quantize_systolic(model, feeds, extra_options={"SystolicLayout": "nhwc"})
    (m,) = nodes_of(q, "Min")
    cq = initializers(q)[m.input[1]]
    assert cq.shape == (1, 1, 4)
    # only the graph input and output change layout: no transpose around the Min
    assert len(nodes_of(q, "Transpose")) == 2
    ref = quantize_systolic(model, feeds)
    (m_ref,) = nodes_of(ref, "Min")
    np.testing.assert_array_equal(cq.reshape(-1), initializers(ref)[m_ref.input[1]].reshape(-1))
    a = runtime_emulator.run(q, feeds)["y"]
    b = runtime_emulator.run(ref, feeds)["y"]
    np.testing.assert_array_equal(a, b)


def test_nhwc_keeps_transposes_for_a_bound_it_cannot_relayout() -> None:
    model = _conv_relu_bound(bound_shape=(8,))  # broadcasts over W in NCHW
    feeds = _feeds()
    q = quantize_systolic(model, feeds, extra_options={"SystolicLayout": "nhwc"})
    (m,) = nodes_of(q, "Min")
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    assert producers[m.input[0]] == "Transpose"
    report = validate(q, model, [feeds], lowering=get_backend("systolic").lower)
    assert report.bit_exact
