"""The original quantize() API in all six modes on the shipped model, run in onnxruntime."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from runtime_emulator.datapath import rne, saturate
from systolic_sdk import QuantizationMode, quantize

from .conftest import TOLERANCE


def _ranges(model: onnx.ModelProto, names: list[str], x: np.ndarray) -> dict[str, tuple]:
    """Min/max of the named tensors over the calibration split (one fp32 pass)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(
        zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x}), strict=True)
    )
    return {n: (float(values[n].min()), float(values[n].max())) for n in names}


def _uint8_params(lo: float, hi: float) -> list:
    """[zero_point, scale] for uint8 covering [min(lo, 0), max(hi, 0)]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = np.float32((hi - lo) / 255) if hi > lo else np.float32(1.0)
    zp = saturate(rne(np.float32(-lo) / scale), np.uint8)
    return [np.uint8(zp), scale]


@pytest.fixture(scope="module")
def legacy_params(digits_model, digits_calib):
    convs = [n for n in digits_model.graph.node if n.op_type in ("Conv", "MatMul")]
    ins = [n.input[0] for n in convs]
    outs = [n.output[0] for n in convs]
    ranges = _ranges(digits_model, ins + outs, digits_calib)
    return (
        {n: _uint8_params(*ranges[n]) for n in ins},
        {n: _uint8_params(*ranges[n]) for n in outs},
    )


CASES = [
    (QuantizationMode.IntegerOps, False, "ConvInteger", True),
    (QuantizationMode.IntegerOps, True, "ConvInteger", False),
    (QuantizationMode.QLinearOps, True, "QLinearConv", False),
    (QuantizationMode.IntegerOps_Static, False, "ConvInteger", False),
    (QuantizationMode.IntegerOps_Dynamic, False, "ConvInteger", True),
    (QuantizationMode.QLinearOps_Static, False, "QLinearConv", False),
    (QuantizationMode.QLinearOps_Dynamic, False, "QLinearConv", True),
]


@pytest.mark.parametrize(("mode", "static", "op", "dynamic"), CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("asymmetric", [False, True], ids=["uint8-weights", "int8-weights"])
def test_legacy_mode(
    mode, static, op, dynamic, asymmetric, digits_model, legacy_params, score, fp32_accuracy
):
    in_params, out_params = legacy_params
    before = digits_model.SerializeToString()
    q = quantize(
        digits_model,
        quantization_mode=mode,
        static=static,
        asymmetric_input_types=asymmetric,
        input_quantization_params=in_params,
        output_quantization_params=out_params,
    )
    assert digits_model.SerializeToString() == before
    onnx.checker.check_model(q, full_check=True)
    ops = Counter(n.op_type for n in q.graph.node)
    if op is not None:
        assert ops[op] == 4
    assert bool(ops["DynamicQuantizeLinear"]) is dynamic
    assert "Gemm" in ops  # only Conv and MatMul are quantized by this API
    assert abs(score(q) - fp32_accuracy) <= TOLERANCE


def test_legacy_on_an_old_opset(make_tiny_model, tiny_calib):
    """Models of the original API's era (opset < 10) are upgraded before QLinear ops."""
    model = make_tiny_model(opset=9)
    ranges = {}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in ("c", "f"))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    y, c, f = sess.run(None, {"x": tiny_calib})
    for name, v in (("x", tiny_calib), ("c", c), ("f", f), ("y", y)):
        ranges[name] = _uint8_params(float(v.min()), float(v.max()))
    q = quantize(
        model,
        quantization_mode=QuantizationMode.QLinearOps_Static,
        input_quantization_params={k: ranges[k] for k in ("x", "f")},
        output_quantization_params={k: ranges[k] for k in ("c", "y")},
    )
    assert max(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) >= 10
    ops = Counter(n.op_type for n in q.graph.node)
    assert ops["QLinearConv"] == 1 and ops["QLinearMatMul"] == 1
    got = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    out = got.run(None, {"x": tiny_calib})[0]
    scale = float(ranges["y"][1])
    assert np.abs(out - y).max() <= 3 * scale  # measured: 1.6 output steps


def test_qlinear_dynamic_bias_is_computed_from_the_run_time_scale(
    digits_model, legacy_params, digits_test
):
    """QLinearOps_Dynamic: DynamicQuantizeLinear feeds QLinearConv, whose int32 bias is
    Round(b / (s_x * s_w)) in the graph; onnxruntime and the emulator agree bit for bit."""
    import runtime_emulator

    _, out_params = legacy_params
    q = quantize(
        digits_model,
        quantization_mode=QuantizationMode.QLinearOps_Dynamic,
        output_quantization_params=out_params,
    )
    conv = next(n for n in q.graph.node if n.op_type == "QLinearConv" and len(n.input) == 9)
    producers = {o: n for n in q.graph.node for o in n.output}
    assert producers[conv.input[0]].op_type == "DynamicQuantizeLinear"
    assert producers[conv.input[8]].op_type == "Cast"
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    bias_float = inits[producers[producers[producers[conv.input[8]].input[0]].input[0]].input[0]]
    qlinear = [n.output[0] for n in q.graph.node if n.op_type.startswith("QLinear")]
    m = onnx.ModelProto()
    m.CopyFrom(q)
    extra = [conv.input[1], conv.input[8], *qlinear]
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in extra)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = digits_test[0][:16]
    _, s_x, b_q, *ints = sess.run(None, {"input": x})
    s_w = inits[conv.input[4]]
    want = rne(np.float32(bias_float) / (np.float32(s_x) * s_w)).astype(np.int32)
    np.testing.assert_array_equal(b_q, want)
    trace = runtime_emulator.run(q, {"input": x}, trace=True)
    for name, value in zip(qlinear, ints, strict=True):  # the integer layers, bit for bit
        assert value.dtype == np.uint8
        np.testing.assert_array_equal(trace[name], value, err_msg=name)
