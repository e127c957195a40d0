"""The rewrite walk: Q only where float enters a quantized op, DQ only at float
consumers and graph outputs; input untouched; errors name the tensor or node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from qtest_graphs import chain_conv_relu_conv, conv, feeds_for
from qtest_graphs import quantize_minmax as quantize
from qtest_helpers import make_model, minmax_ranges, op_count, run

import systolic_sdk
from systolic_sdk.errors import QuantizationError, SdkError
from systolic_sdk.quantization import (
    OutputForm,
    QuantConfig,
    QuantType,
    prepare_model,
    quantize_model,
    tensors_to_calibrate,
)

QOP, QDQ, INT = OutputForm.QOPERATOR, OutputForm.QDQ, OutputForm.INTEGER


def test_chain_qoperator_counts():
    model = chain_conv_relu_conv()
    q = quantize(model, form=QOP, activation_type=QuantType.QUInt8)
    # Q at the graph input, DQ at the graph output; the Relu is absorbed (its range
    # narrowed the first conv's output, whose zero point is then 0 = uint8 minimum).
    assert op_count(q, "QuantizeLinear") == 1
    assert op_count(q, "DequantizeLinear") == 1
    assert op_count(q, "QLinearConv") == 2
    assert op_count(q, "Relu") == 0 and op_count(q, "Clip") == 0
    feeds = feeds_for(model)
    np.testing.assert_allclose(run(q, feeds)[0], run(model, feeds)[0], atol=0.1)


def test_chain_symmetric_relu_becomes_integer_clip():
    model = chain_conv_relu_conv()
    q = quantize(
        model,
        form=QOP,
        activation_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True},
    )
    # zero point 0 is not int8's minimum: an exact integer Clip(q, 0, 127) stays
    assert op_count(q, "Clip") == 1 and op_count(q, "Relu") == 0
    clip = next(n for n in q.graph.node if n.op_type == "Clip")
    init = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    assert int(init[clip.input[1]]) == 0 and int(init[clip.input[2]]) == 127
    assert op_count(q, "QuantizeLinear") == 1 and op_count(q, "DequantizeLinear") == 1


def test_chain_qdq_counts():
    model = chain_conv_relu_conv()
    q = quantize(model, form=QDQ)
    # Q: graph input, conv1 output, conv2 output. DQ: those three plus 2 weights, 2 biases.
    assert op_count(q, "QuantizeLinear") == 3
    assert op_count(q, "DequantizeLinear") == 7
    assert op_count(q, "Conv") == 2


def test_chain_integer_counts():
    model = chain_conv_relu_conv()
    q = quantize(model, form=INT, static=False)
    assert op_count(q, "DynamicQuantizeLinear") == 2
    assert op_count(q, "ConvInteger") == 2
    assert op_count(q, "Relu") == 1  # stays float between the two
    assert op_count(q, "DequantizeLinear") == 0


def _conv_then(op_nodes, outputs):
    inits: dict = {}
    nodes = [conv("c1", "x", "a", 3, 4, inits)] + op_nodes
    return make_model(nodes, [("x", [1, 3, 5, 5])], outputs, inits)


def test_float_consumers_share_one_dequantize():
    model = _conv_then(
        [
            helper.make_node("Softmax", ["a"], ["s"], name="sm", axis=1),
            helper.make_node("Sigmoid", ["a"], ["g"], name="sig"),
        ],
        ["s", "g"],
    )
    q = quantize(model, form=QOP)
    assert op_count(q, "DequantizeLinear") == 1
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear")
    assert dq.output[0] == "a"  # restores the original tensor name for float readers
    assert op_count(q, "QuantizeLinear") == 1


def test_graph_output_also_read_by_quantized_op():
    inits: dict = {}
    nodes = [conv("c1", "x", "a", 3, 4, inits), conv("c2", "a", "y", 4, 2, inits)]
    model = make_model(nodes, [("x", [1, 3, 5, 5])], ["a", "y"], inits)
    q = quantize(model, form=QOP)
    assert op_count(q, "QLinearConv") == 2
    assert op_count(q, "DequantizeLinear") == 2  # one per graph output
    assert [o.name for o in q.graph.output] == ["a", "y"]
    feeds = feeds_for(model)
    for got, ref in zip(run(q, feeds), run(model, feeds), strict=True):
        np.testing.assert_allclose(got, ref, atol=0.1)


def test_input_read_by_two_quantized_ops_gets_one_quantize():
    inits: dict = {}
    nodes = [
        conv("c1", "x", "a", 3, 2, inits),
        conv("c2", "x", "b", 3, 2, inits),
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    model = make_model(nodes, [("x", [1, 3, 5, 5])], ["y"], inits)
    q = quantize(model, form=QOP)
    assert op_count(q, "QuantizeLinear") == 1
    assert op_count(q, "QLinearAdd") == 1
    assert op_count(q, "DequantizeLinear") == 1


def test_lone_relu_stays_float():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="r")], [("x", [2, 3])], ["y"], {}
    )
    q = quantize(model, form=QOP)
    assert [n.op_type for n in q.graph.node] == ["Relu"]


def test_relu_forced_with_force_quantize_no_input_check():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="r")], [("x", [2, 3])], ["y"], {}
    )
    q = quantize(model, form=QOP, extra_options={"ForceQuantizeNoInputCheck": True})
    assert op_count(q, "QuantizeLinear") == 1 and op_count(q, "DequantizeLinear") == 1


def test_input_model_not_mutated_and_metadata():
    model = chain_conv_relu_conv()
    before = model.SerializeToString()
    q = quantize(model, form=QDQ)
    assert model.SerializeToString() == before
    props = {p.key: p.value for p in q.metadata_props}
    assert props["systolic_sdk.backend"] == "cpu"
    assert props["systolic_sdk.version"] == systolic_sdk.__version__


def test_missing_range_names_the_tensor():
    model = chain_conv_relu_conv()
    cfg = QuantConfig(form=QOP)
    feeds = feeds_for(model)
    names = tensors_to_calibrate(model, cfg)
    ranges = minmax_ranges(model, feeds, names)
    del ranges["y"]
    with pytest.raises(QuantizationError, match="'y'"):
        quantize_model(model, cfg, ranges)


def test_tensors_to_calibrate_lists_inputs_and_outputs():
    model = chain_conv_relu_conv()
    assert tensors_to_calibrate(model, QuantConfig(form=QOP)) == ["x", "a", "r", "y"]
    assert tensors_to_calibrate(model, QuantConfig(form=INT)) == ["x", "r"]
    assert tensors_to_calibrate(model, QuantConfig(form=INT, static=False)) == []


def test_graph_not_in_topological_order_is_refused():
    model = chain_conv_relu_conv()
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend([nodes[1], nodes[0], nodes[2]])
    with pytest.raises(SdkError, match="node 'relu' reads tensor 'a'.*topological"):
        prepare_model(model, QuantConfig())


def test_prepare_names_nodes_and_lifts_constants():
    inits = {"w": np.ones((2, 3), np.float32)}
    nodes = [
        helper.make_node(
            "Constant",
            [],
            ["k"],
            value=onnx.numpy_helper.from_array(np.full((3, 2), 0.5, np.float32)),
        ),
        helper.make_node("MatMul", ["x", "k"], ["m"]),
        helper.make_node("MatMul", ["m", "w"], ["y"]),
    ]
    model = make_model(nodes, [("x", [4, 3])], ["y"], inits)
    prepared = prepare_model(model, QuantConfig())
    names = [n.name for n in prepared.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert "k" in {t.name for t in prepared.graph.initializer}
    assert op_count(prepared, "Constant") == 0
    q = quantize(model, form=QOP)
    assert op_count(q, "QLinearMatMul") == 2


def test_ranges_accept_numpy_values_and_outputs_get_shapes():
    model = chain_conv_relu_conv()
    model.graph.output[0].type.tensor_type.ClearField("shape")
    cfg = QuantConfig(form=QOP)
    feeds = feeds_for(model)
    names = tensors_to_calibrate(model, cfg)
    ranges = {
        k: (np.array([lo], np.float32), np.float32(hi))
        for k, (lo, hi) in minmax_ranges(model, feeds, names).items()
    }
    q = quantize_model(model, cfg, ranges)
    assert q.graph.output[0].type.tensor_type.HasField("shape")
    np.testing.assert_allclose(run(q, feeds)[0], run(model, feeds)[0], atol=0.1)
