"""Each op rule in each output form, on small graphs run in onnxruntime against fp32."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from qtest_graphs import feeds_for, quantize_minmax, single_op
from qtest_helpers import op_count, run

from systolic_sdk.quantization import (
    OutputForm,
    QuantType,
)

QOP, QDQ, INT = OutputForm.QOPERATOR, OutputForm.QDQ, OutputForm.INTEGER

# kind -> (node names under test, {form: op types that must appear})
CASES = {
    "conv": (["c"], {QOP: ["QLinearConv"], INT: ["ConvInteger"]}),
    "conv_depthwise": (["dw"], {QOP: ["QLinearConv"], INT: ["ConvInteger"]}),
    "matmul_const": (["mm"], {QOP: ["QLinearMatMul"], INT: ["MatMulInteger"]}),
    "matmul_act": (["mm"], {QOP: ["QLinearMatMul"], INT: ["MatMulInteger"]}),
    "gemm": (["gemm"], {QOP: ["QGemm"], INT: ["MatMulInteger"]}),
    "gemm_transb": (["gemm"], {QOP: ["QGemm"], INT: ["MatMulInteger"]}),
    "relu": (["act"], {QOP: ["Clip"]}),
    "clip": (["act"], {QOP: ["Clip"]}),
    "maxpool": (["p"], {QOP: ["MaxPool"]}),
    "averagepool": (["p"], {QOP: ["QLinearAveragePool"]}),
    "globalaveragepool": (["p"], {QOP: ["QLinearGlobalAveragePool"]}),
    "add": (["bin", "bin_const"], {QOP: ["QLinearAdd"]}),
    "mul": (["bin", "bin_const"], {QOP: ["QLinearMul"]}),
    "concat": (["cat"], {QOP: ["QLinearConcat"]}),
    "reshape": (["op"], {QOP: ["Reshape"]}),
    "flatten": (["op"], {QOP: ["Flatten"]}),
    "transpose": (["op"], {QOP: ["Transpose"]}),
    "squeeze": (["op"], {QOP: ["Squeeze"]}),
    "unsqueeze": (["op"], {QOP: ["Unsqueeze"]}),
}

INTEGER_KINDS = {"conv", "conv_depthwise", "matmul_const", "matmul_act", "gemm", "gemm_transb"}


def _quantize(model, form, static=True, per_channel=False, act=QuantType.QUInt8, **kw):
    q = quantize_minmax(
        model, form=form, static=static, per_channel=per_channel, activation_type=act, **kw
    )
    return q, feeds_for(model)


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _max_activation_step(qmodel) -> float:
    """The largest per-tensor scale in the model (the coarsest activation step)."""
    from onnx import numpy_helper

    steps = [
        float(numpy_helper.to_array(t))
        for t in qmodel.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and not t.dims and t.name.endswith("_scale")
    ]
    return max(steps, default=0.0)


def _check_close(model, qmodel, feeds):
    """Within 4% of the output's range plus 1.5 steps of the coarsest activation scale."""
    ref = run(model, feeds)
    got = run(qmodel, feeds)
    step = _max_activation_step(qmodel)
    for r, g in zip(ref, got, strict=True):
        assert g.shape == r.shape and g.dtype == np.float32
        span = float(r.max() - r.min()) or 1.0
        err = float(np.abs(g - r).max())
        assert err <= 0.04 * span + 1.5 * step, f"max error {err} vs range {span}, step {step}"


def _check_rewritten(qmodel, names, form, expected):
    ops = {n.op_type for n in qmodel.graph.node}
    for op in expected.get(form, []):
        assert op in ops, f"{op} missing in {sorted(ops)}"
    produced = {o: n for n in qmodel.graph.node for o in n.output}
    readers = {}
    for n in qmodel.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    if form == QDQ:
        for name in names:
            node = _node(qmodel, name)
            assert produced[node.input[0]].op_type == "DequantizeLinear", name
            assert all(r.op_type == "QuantizeLinear" for r in readers[node.output[0]]), name
    if form == QOP:
        for name in names:
            node = _node(qmodel, name)
            sources = [produced[i].op_type for i in node.input if i in produced]
            assert "DequantizeLinear" not in sources, name


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("form", [QOP, QDQ], ids=["qoperator", "qdq"])
@pytest.mark.parametrize("act", [QuantType.QUInt8, QuantType.QInt8], ids=["u8", "s8"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
def test_rule_linear_forms(kind, form, act, per_channel):
    model = single_op(kind)
    names, expected = CASES[kind]
    qmodel, feeds = _quantize(model, form, act=act, per_channel=per_channel)
    onnx.checker.check_model(qmodel, full_check=True)
    _check_rewritten(qmodel, names, form, expected)
    _check_close(model, qmodel, feeds)


@pytest.mark.parametrize("kind", sorted(INTEGER_KINDS))
@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
def test_rule_integer_form(kind, static, per_channel):
    model = single_op(kind)
    names, expected = CASES[kind]
    qmodel, feeds = _quantize(model, INT, static=static, per_channel=per_channel)
    onnx.checker.check_model(qmodel, full_check=True)
    _check_rewritten(qmodel, names, INT, expected)
    q_op = "QuantizeLinear" if static else "DynamicQuantizeLinear"
    assert op_count(qmodel, q_op) >= 1
    assert op_count(qmodel, "DynamicQuantizeLinear" if static else "QuantizeLinear") == 0
    _check_close(model, qmodel, feeds)


def test_integer_form_leaves_other_ops_float():
    model = single_op("maxpool")
    qmodel, _ = _quantize(model, INT, static=False)
    assert op_count(qmodel, "MaxPool") == 1
    assert op_count(qmodel, "ConvInteger") == 1
    # the MaxPool reads the float conv output: no DequantizeLinear is needed
    assert op_count(qmodel, "DequantizeLinear") == 0


@pytest.mark.parametrize("kind", ["conv", "matmul_const", "gemm_transb"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
def test_qdq_is_fused_by_onnxruntime(tmp_path, kind, per_channel):
    model = single_op(kind)
    qmodel, _ = _quantize(model, QDQ, act=QuantType.QUInt8, per_channel=per_channel)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(qmodel.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    fused = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    expected = {"conv": "QLinearConv", "matmul_const": "QLinearMatMul", "gemm_transb": "QGemm"}
    assert expected[kind] in fused, sorted(fused)
    assert {"Conv", "MatMul", "Gemm"}.isdisjoint(fused)


def test_qdq_per_channel_weights_have_axis():
    model = single_op("gemm")  # transB = 0: B is [K, N], channels on axis 1
    qmodel, _ = _quantize(model, QDQ, per_channel=True)
    init = {t.name: t for t in qmodel.graph.initializer}
    dqs = [n for n in qmodel.graph.node if n.op_type == "DequantizeLinear"]
    w_dq = next(n for n in dqs if n.input[0].startswith("w_"))
    assert onnx.helper.get_attribute_value(w_dq.attribute[0]) == 1
    assert list(init[w_dq.input[1]].dims) == [5]
    b_dq = next(n for n in dqs if n.input[0].startswith("b_"))
    assert init[b_dq.input[0]].data_type == onnx.TensorProto.INT32
    # bias scale = s_x * s_w per channel, in float32
    from onnx import numpy_helper

    a_dq = next(n for n in dqs if n.input[0].startswith("x2"))
    s_x = numpy_helper.to_array(init[a_dq.input[1]])
    s_w = numpy_helper.to_array(init[w_dq.input[1]])
    s_b = numpy_helper.to_array(init[b_dq.input[1]])
    np.testing.assert_array_equal(s_b, np.multiply(s_x, s_w, dtype=np.float32))


def test_quantize_bias_false_keeps_float_bias_in_qdq():
    model = single_op("conv")
    qmodel, feeds = _quantize(model, QDQ, quantize_bias=False)
    conv = _node(qmodel, "c")
    assert conv.input[2] == "c_b"
    assert not any(t.data_type == onnx.TensorProto.INT32 for t in qmodel.graph.initializer)
    _check_close(model, qmodel, feeds)


def test_conv_integer_asymmetric_per_channel_falls_back_to_one_zero_point():
    """onnxruntime's ConvInteger takes one weight zero point: uint8 asymmetric weights
    with per-channel zero points are quantized per tensor for that conv instead."""
    model = single_op("conv")
    qmodel, feeds = _quantize(
        model, INT, static=False, per_channel=True, weight_type=QuantType.QUInt8
    )
    conv = _node(qmodel, "c")
    init = {t.name: t for t in qmodel.graph.initializer}
    assert list(init[conv.input[3]].dims) == []
    _check_close(model, qmodel, feeds)
    # MatMulInteger keeps per-column zero points
    model = single_op("matmul_const")
    mm, feeds = _quantize(model, INT, static=False, per_channel=True, weight_type=QuantType.QUInt8)
    node = _node(mm, "mm")
    assert list({t.name: t for t in mm.graph.initializer}[node.input[3]].dims) == [5]
    _check_close(model, mm, feeds)
