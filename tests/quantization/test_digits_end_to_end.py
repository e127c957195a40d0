"""The shipped model quantized by quantize_model in every form, run in stock onnxruntime:
each output passes the full checker, loads, and stays within 1 point of fp32 accuracy."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest
from qtest_helpers import minmax_ranges

from systolic_sdk.quantization import (
    OutputForm,
    QuantConfig,
    QuantType,
    quantize_model,
    tensors_to_calibrate,
)

QOP, QDQ, INT = OutputForm.QOPERATOR, OutputForm.QDQ, OutputForm.INTEGER
S8, U8 = QuantType.QInt8, QuantType.QUInt8

CONFIGS = [
    (form, static, per_channel, act)
    for form in (QOP, QDQ, INT)
    for static in (True, False)
    for per_channel in (False, True)
    for act in (S8, U8)
    if static or (form == INT and act == U8)
]


@pytest.fixture(scope="module")
def digits_ranges(digits_model, digits_calib):
    """Global min/max over the calibration split of every tensor any form may need."""
    names = list(dict.fromkeys(tensors_to_calibrate(digits_model, QuantConfig(form=QOP))))
    return minmax_ranges(digits_model, {"input": digits_calib}, names)


@pytest.fixture(scope="module")
def fp32_accuracy(digits_model, digits_accuracy):
    return 100 * digits_accuracy(digits_model)


@pytest.mark.parametrize(
    ("form", "static", "per_channel", "act"),
    CONFIGS,
    ids=[
        f"{f.value}-{'static' if s else 'dynamic'}-{'channel' if p else 'tensor'}-{a}"
        for f, s, p, a in CONFIGS
    ],
)
def test_digits_every_form(
    form, static, per_channel, act, digits_model, digits_ranges, digits_accuracy, fp32_accuracy
):
    cfg = QuantConfig(form=form, static=static, per_channel=per_channel, activation_type=act)
    needed = tensors_to_calibrate(digits_model, cfg)
    assert set(needed) <= set(digits_ranges)
    ranges = {k: digits_ranges[k] for k in needed}
    q = quantize_model(digits_model, cfg, ranges if static else None)
    onnx.checker.check_model(q, full_check=True)
    ops = Counter(n.op_type for n in q.graph.node)
    if form == QOP:
        assert ops["QLinearConv"] == 4 and ops["QGemm"] == 2 and ops["QLinearAdd"] == 1
        assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1
    elif form == QDQ:
        assert ops["Conv"] == 4 and ops["Gemm"] == 2
        assert ops["DequantizeLinear"] > ops["QuantizeLinear"] > 0
    else:
        assert ops["ConvInteger"] == 4 and ops["MatMulInteger"] == 2
        q_op = "QuantizeLinear" if static else "DynamicQuantizeLinear"
        assert ops[q_op] == 6
    zp_types = {
        t.data_type
        for t in q.graph.initializer
        if t.name in {n.input[2] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    }
    if static:
        assert zp_types == {act.onnx_type}
    accuracy = 100 * digits_accuracy(q)
    assert abs(accuracy - fp32_accuracy) <= 1.0, (accuracy, fp32_accuracy)


def test_digits_with_sdk_calibration(digits_model, digits_calib, digits_accuracy, fp32_accuracy):
    """Ranges from systolic_sdk.calibration.calibrate over exactly the listed tensors."""
    from systolic_sdk.calibration import calibrate
    from systolic_sdk.calibration.reader import ArrayReader

    cfg = QuantConfig(form=QDQ, per_channel=True, activation_type=U8)
    names = tensors_to_calibrate(digits_model, cfg)
    ranges = calibrate(digits_model, ArrayReader({"input": digits_calib}, batch_size=50), names)
    assert set(ranges) == set(names)
    q = quantize_model(digits_model, cfg, ranges)
    assert abs(100 * digits_accuracy(q) - fp32_accuracy) <= 1.0
