"""Options: op types / nodes to quantize or exclude, tensor overrides, reduce_range,
extra_options, strict mode."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from qtest_graphs import chain_conv_relu_conv, conv, feeds_for
from qtest_graphs import quantize_minmax as quantize
from qtest_helpers import make_model, minmax_ranges, op_count, run

from systolic_sdk.errors import QuantizationError
from systolic_sdk.quantization import (
    OutputForm,
    QuantConfig,
    QuantizationWarning,
    QuantType,
    TensorOverride,
    quantize_model,
    tensors_to_calibrate,
)

QOP, QDQ, INT = OutputForm.QOPERATOR, OutputForm.QDQ, OutputForm.INTEGER


def inits(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def conv_matmul_model():
    init: dict = {"w": (np.random.default_rng(3).standard_normal((4, 5)) * 0.3).astype("f4")}
    nodes = [
        conv("c1", "x", "a", 3, 4, init),
        helper.make_node("Transpose", ["a"], ["t"], name="tr", perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["t", "w"], ["m"], name="mm"),
        helper.make_node("Relu", ["m"], ["y"], name="relu"),
    ]
    return make_model(nodes, [("x", [1, 3, 5, 5])], ["y"], init)


def test_op_types_to_quantize():
    q = quantize(conv_matmul_model(), form=QOP, op_types_to_quantize=frozenset({"MatMul"}))
    assert op_count(q, "Conv") == 1 and op_count(q, "QLinearMatMul") == 1
    assert op_count(q, "QLinearConv") == 0


def test_nodes_to_exclude():
    q = quantize(conv_matmul_model(), form=QOP, nodes_to_exclude=frozenset({"c1"}))
    assert op_count(q, "Conv") == 1 and op_count(q, "QLinearMatMul") == 1
    # the Transpose is not rewritten: its input is float (conv excluded)
    tr = next(n for n in q.graph.node if n.name == "tr")
    assert tr.input[0] == "a"


def test_nodes_to_quantize():
    q = quantize(conv_matmul_model(), form=QOP, nodes_to_quantize=frozenset({"c1", "tr"}))
    assert op_count(q, "QLinearConv") == 1 and op_count(q, "MatMul") == 1
    tr = next(n for n in q.graph.node if n.name == "tr")
    assert tr.output[0] != "t"  # runs on the integer tensor; a DQ restores 't'
    assert any(n.op_type == "DequantizeLinear" and n.output[0] == "t" for n in q.graph.node)


def test_tensor_override_used_verbatim():
    model = chain_conv_relu_conv()
    ov = {"a": TensorOverride(scale=(0.03125,), zero_point=(3,))}
    q = quantize(model, form=QOP, activation_type=QuantType.QUInt8, tensor_overrides=ov)
    init = inits(q)
    assert init["a_scale"] == np.float32(0.03125)
    assert int(init["a_zero_point"]) == 3 and init["a_zero_point"].dtype == np.uint8


def test_tensor_override_gives_missing_range_and_type():
    model = chain_conv_relu_conv()
    cfg = QuantConfig(
        form=QDQ,
        tensor_overrides={
            "y": TensorOverride(scale=(0.05,), quant_type=QuantType.QInt16),
        },
    )
    feeds = feeds_for(model)
    ranges = minmax_ranges(model, feeds, [n for n in tensors_to_calibrate(model, cfg) if n != "y"])
    q = quantize_model(model, cfg, ranges)
    init = inits(q)
    assert init["y_zero_point"].dtype == np.int16 and int(init["y_zero_point"]) == 0
    np.testing.assert_allclose(run(q, feeds)[0], run(model, feeds)[0], atol=0.1)


def test_tensor_override_per_channel_weights():
    model = chain_conv_relu_conv()
    scales = (0.01, 0.02, 0.03, 0.04)
    ov = {"c1_w": TensorOverride(scale=scales, zero_point=(0, 0, 0, 0), axis=0)}
    q = quantize(model, form=QDQ, tensor_overrides=ov)
    np.testing.assert_array_equal(inits(q)["c1_w_scale"], np.array(scales, np.float32))
    w = inits(model)["c1_w"]
    wq = inits(q)["c1_w_quantized"]
    expected = np.clip(np.rint(w / np.array(scales, np.float32).reshape(4, 1, 1, 1)), -128, 127)
    np.testing.assert_array_equal(wq, expected.astype(np.int8))


def test_reduce_range_applies_to_weights():
    q = quantize(chain_conv_relu_conv(), form=QOP, reduce_range=True)
    w = inits(q)["c1_w_quantized"]
    assert w.min() >= -64 and w.max() <= 64 and np.abs(w).max() == 64


def test_matmul_const_b_only():
    inits_: dict = {}
    nodes = [
        conv("c1", "x", "a", 3, 2, inits_),
        helper.make_node("MatMul", ["a", "a"], ["y"], name="mm"),
    ]
    model = make_model(nodes, [("x", [1, 3, 4, 4])], ["y"], inits_)
    assert op_count(quantize(model, form=QOP), "QLinearMatMul") == 1
    q = quantize(model, form=QOP, extra_options={"MatMulConstBOnly": True})
    assert op_count(q, "QLinearMatMul") == 0 and op_count(q, "MatMul") == 1


def test_weight_symmetric_option():
    q = quantize(
        chain_conv_relu_conv(),
        form=QOP,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QUInt8,
        extra_options={"WeightSymmetric": True},
    )
    assert int(inits(q)["c1_w_zero_point"]) == 128


def test_int8_activations_with_uint8_weights_adapted_for_qoperator():
    with pytest.warns(QuantizationWarning, match="QInt8 weights"):
        q = quantize(chain_conv_relu_conv(), form=QOP, weight_type=QuantType.QUInt8)
    assert inits(q)["c1_w_quantized"].dtype == np.int8


def test_unknown_extra_option_warns():
    with pytest.warns(QuantizationWarning, match="NoSuchOption"):
        quantize(chain_conv_relu_conv(), form=QOP, extra_options={"NoSuchOption": 1})


def test_strict_refuses_what_the_backend_cannot_do():
    model = chain_conv_relu_conv()
    with pytest.raises(QuantizationError, match="QInt16.*strict"):
        quantize(model, form=QOP, activation_type=QuantType.QInt16, strict=True)
    with pytest.warns(QuantizationWarning, match="QInt16"):
        q = quantize(model, form=QOP, activation_type=QuantType.QInt16)
    assert op_count(q, "QLinearConv") == 2


def test_16bit_qdq_upgrades_to_opset_21():
    model = chain_conv_relu_conv()
    q = quantize(model, form=QDQ, activation_type=QuantType.QUInt16, weight_type=QuantType.QInt16)
    assert next(o.version for o in q.opset_import if o.domain == "") >= 21
    assert inits(q)["c1_w_quantized"].dtype == np.int16
    feeds = feeds_for(model)
    np.testing.assert_allclose(run(q, feeds)[0], run(model, feeds)[0], atol=2e-3)


def test_dynamic_non_integer_form_is_adapted():
    with pytest.warns(QuantizationWarning, match="form=integer"):
        q = quantize(chain_conv_relu_conv(), form=QDQ, static=False)
    assert op_count(q, "ConvInteger") == 2
    with pytest.raises(QuantizationError, match="strict"):
        quantize(chain_conv_relu_conv(), form=QDQ, static=False, strict=True)


def test_unknown_backend_lists_available():
    from systolic_sdk.errors import SdkError

    with pytest.raises(SdkError, match=r"unknown backend 'nope' \(available: .*cpu"):
        quantize(chain_conv_relu_conv(), backend="nope")


def test_output_always_checked():
    q = quantize(conv_matmul_model(), form=QOP)
    onnx.checker.check_model(q, full_check=True)


def test_minimum_real_range_widens_tiny_ranges():
    model = chain_conv_relu_conv()
    cfg = QuantConfig(form=QOP, activation_type=QuantType.QUInt8)
    names = tensors_to_calibrate(model, cfg)
    ranges = {n: (0.0, 1e-6) for n in names}
    with pytest.warns(QuantizationWarning, match=r"2 bias\(es\) would overflow int32.*'c1_b'"):
        base = inits(quantize_model(model, cfg, ranges))  # the int32 guard acts
    cfg.extra_options = {"MinimumRealRange": 0.51}
    wide = inits(quantize_model(model, cfg, ranges))
    assert base["x_scale"] == np.float32(1e-6) / np.float32(255)
    assert wide["x_scale"] == np.float32(0.51) / np.float32(255)


def test_qdq_keep_removable_activations():
    model = chain_conv_relu_conv()
    assert op_count(quantize(model, form=QDQ), "Relu") == 0
    q = quantize(model, form=QDQ, extra_options={"QDQKeepRemovableActivations": True})
    assert op_count(q, "Relu") == 1
    relu = next(n for n in q.graph.node if n.op_type == "Relu")
    producer = {o: n for n in q.graph.node for o in n.output}[relu.input[0]]
    assert producer.op_type == "DequantizeLinear"


def test_selection_options_that_select_nothing_warn():
    model = conv_matmul_model()
    with pytest.warns(QuantizationWarning, match="no node named 'nope'"):
        quantize(model, form=QOP, nodes_to_exclude=frozenset({"nope"}))
    with pytest.warns(QuantizationWarning, match="no rule for 'Softmax'"):
        quantize(model, form=QOP, op_types_to_quantize=frozenset({"Softmax", "Conv"}))


def test_per_channel_override_in_qdq_upgrades_opset():
    inits_: dict = {}
    model = make_model(
        [conv("c1", "x", "y", 3, 2, inits_)], [("x", [1, 3, 4, 4])], ["y"], inits_, opset=11
    )
    ov = {"c1_w": TensorOverride(scale=(0.01, 0.02), zero_point=(0, 0), axis=0)}
    q = quantize(model, form=QDQ, tensor_overrides=ov)
    assert next(o.version for o in q.opset_import if o.domain == "") == 13


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (TensorOverride(scale=(0.0,)), "tensor 'a': invalid override: scale must be"),
        (TensorOverride(scale=(0.1,), zero_point=(300,)), "tensor 'a': invalid override"),
        (TensorOverride(scale=(0.1, 0.2)), "tensor 'a': invalid override: per-channel"),
    ],
)
def test_invalid_activation_override_is_refused(override, message):
    with pytest.raises(QuantizationError, match=message):
        quantize(
            chain_conv_relu_conv(),
            form=QOP,
            activation_type=QuantType.QUInt8,
            tensor_overrides={"a": override},
        )


def test_weight_override_channel_count_checked():
    ov = {"c1_w": TensorOverride(scale=(0.1, 0.2), zero_point=(0, 0), axis=0)}
    with pytest.raises(QuantizationError, match="'c1_w': override has 2 scales but axis 0 has 4"):
        quantize(chain_conv_relu_conv(), form=QDQ, tensor_overrides=ov)


def test_weight_override_without_zero_point_is_symmetric():
    ov = {"c1_w": TensorOverride(scale=(0.01,))}
    q = quantize(chain_conv_relu_conv(), form=QOP, weight_type=QuantType.QInt8, tensor_overrides=ov)
    assert int(inits(q)["c1_w_zero_point"]) == 0


def test_op_types_to_exclude_output_quantization_in_qdq():
    model = chain_conv_relu_conv()
    q = quantize(model, form=QDQ, extra_options={"OpTypesToExcludeOutputQuantization": ["Conv"]})
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    readers = {i for n in q.graph.node for i in n.input}
    consumers_of = {
        c.output[0]: [n.op_type for n in q.graph.node if c.output[0] in n.input] for c in convs
    }
    # the conv outputs stay float: no QuantizeLinear after them
    assert all("QuantizeLinear" not in ops for ops in consumers_of.values())
    assert convs[-1].output[0] == "y" and "y" not in readers
    feeds = feeds_for(model)
    np.testing.assert_allclose(run(q, feeds)[0], run(model, feeds)[0], atol=0.1)
