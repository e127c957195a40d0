"""The shipped model in every format through the public APIs, run in stock onnxruntime."""

from __future__ import annotations

from collections import Counter

import pytest

from systolic_sdk import QuantFormat, QuantType, quantize_dynamic, quantize_static

from .conftest import TOLERANCE, check_written

STATIC = [
    (fmt, per_channel, act)
    for fmt in (QuantFormat.QDQ, QuantFormat.QOperator)
    for per_channel in (False, True)
    for act in (QuantType.QInt8, QuantType.QUInt8)
]


@pytest.mark.parametrize(("fmt", "per_channel", "act"), STATIC, ids=lambda v: str(v))
def test_static(
    fmt, per_channel, act, digits_model_path, calib_reader, tmp_path, score, fp32_accuracy
):
    out = tmp_path / "q.onnx"
    quantize_static(
        digits_model_path,
        out,
        calib_reader(),
        quant_format=fmt,
        per_channel=per_channel,
        activation_type=act,
        weight_type=QuantType.QInt8,
    )
    model = check_written(out)
    ops = Counter(n.op_type for n in model.graph.node)
    if fmt is QuantFormat.QDQ:
        assert ops["QuantizeLinear"] and ops["DequantizeLinear"] and ops["Conv"] == 4
    else:
        assert ops["QLinearConv"] == 4 and "Conv" not in ops
    q_types = {t.data_type for t in model.graph.initializer if t.name.endswith("_zero_point")}
    assert act.onnx_type in q_types
    assert abs(score(out) - fp32_accuracy) <= TOLERANCE


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("weight_type", [QuantType.QInt8, QuantType.QUInt8], ids=str)
def test_dynamic_integer_ops(
    per_channel, weight_type, digits_model_path, tmp_path, score, fp32_accuracy
):
    out = tmp_path / "q.onnx"
    quantize_dynamic(digits_model_path, out, per_channel=per_channel, weight_type=weight_type)
    model = check_written(out)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["DynamicQuantizeLinear"] and (ops["ConvInteger"] or ops["MatMulInteger"])
    assert abs(score(out) - fp32_accuracy) <= TOLERANCE


def test_onnxruntime_reader_and_enums_work_unchanged(
    digits_model_path, digits_calib, ort_reader, tmp_path, score, fp32_accuracy
):
    """A script written for onnxruntime (its reader class and enums) runs after an import swap."""
    from onnxruntime.quantization import QuantFormat, QuantType

    out = tmp_path / "q.onnx"
    quantize_static(
        str(digits_model_path),
        str(out),
        ort_reader({"input": digits_calib}, len(digits_calib) // 8),
        quant_format=QuantFormat.QOperator,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    check_written(out)
    assert abs(score(out) - fp32_accuracy) <= TOLERANCE
