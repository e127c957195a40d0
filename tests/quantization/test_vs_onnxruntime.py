"""Differential tests against onnxruntime's own quantizer (MinMax) on the shipped model.

Given the ranges of onnxruntime's MinMax calibrator, this quantizer chooses the same
activation parameters, weights, weight scales and int32 biases, and its QOperator and
QDQ models give bit-identical logits on the 1,000 test samples."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from qtest_helpers import run

from systolic_sdk.quantization import (
    OutputForm,
    QuantConfig,
    QuantType,
    quantize_model,
    tensors_to_calibrate,
)

ortq = pytest.importorskip("onnxruntime.quantization")


class _Reader(ortq.CalibrationDataReader):
    def __init__(self, data: np.ndarray) -> None:
        self._feeds = iter([{"input": data}])

    def get_next(self):
        return next(self._feeds, None)


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture(scope="module")
def ort_setup(digits_model, digits_calib, tmp_path_factory):
    """The model on disk and onnxruntime's MinMax ranges for every tensor."""
    from onnxruntime.quantization.calibrate import create_calibrator

    folder = tmp_path_factory.mktemp("ortq")
    src = folder / "m.onnx"
    onnx.save(digits_model, str(src))
    calibrator = create_calibrator(str(src), None, augmented_model_path=str(folder / "aug.onnx"))
    calibrator.collect_data(_Reader(digits_calib))
    ranges = {
        k: tuple(float(np.asarray(b).reshape(-1)[0]) for b in v.range_value)
        for k, v in calibrator.compute_data().data.items()
    }
    return folder, src, ranges


def _both(ort_setup, digits_model, digits_calib, form, per_channel, act, symmetric=False):
    folder, src, all_ranges = ort_setup
    out = folder / f"ort_{form.value}_{per_channel}_{act}_{symmetric}.onnx"
    ortq.quantize_static(
        str(src),
        str(out),
        _Reader(digits_calib),
        quant_format=ortq.QuantFormat.QDQ if form == OutputForm.QDQ else ortq.QuantFormat.QOperator,
        per_channel=per_channel,
        activation_type=getattr(ortq.QuantType, act),
        weight_type=ortq.QuantType.QInt8,
        calibrate_method=ortq.CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": symmetric},
    )
    cfg = QuantConfig(
        form=form,
        per_channel=per_channel,
        activation_type=getattr(QuantType, act),
        extra_options={"ActivationSymmetric": symmetric},
    )
    names = tensors_to_calibrate(digits_model, cfg)
    ours = quantize_model(digits_model, cfg, {k: all_ranges[k] for k in names})
    return onnx.load(str(out)), ours


ACTIVATIONS = [("QUInt8", False), ("QInt8", False), ("QInt8", True)]


@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
@pytest.mark.parametrize(("act", "symmetric"), ACTIVATIONS, ids=["u8", "s8", "s8-symmetric"])
def test_same_parameters_as_onnxruntime(
    per_channel, act, symmetric, ort_setup, digits_model, digits_calib
):
    theirs, ours = _both(
        ort_setup, digits_model, digits_calib, OutputForm.QDQ, per_channel, act, symmetric
    )
    ti, oi = _initializers(theirs), _initializers(ours)

    def activation_params(model, inits):
        return {
            (float(inits[n.input[1]]), int(inits[n.input[2]]), inits[n.input[2]].dtype.name)
            for n in model.graph.node
            if n.op_type == "QuantizeLinear"
        }

    # onnxruntime puts the Q after each removed Relu, this quantizer names the params
    # after the producer the Relu was absorbed into: compare the sets of parameters.
    theirs_act = activation_params(theirs, ti)
    assert activation_params(ours, oi) == theirs_act
    assert len(theirs_act) == 8

    weights = biases = 0
    for node in theirs.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in ti:
            continue
        base = node.input[0].removesuffix("_quantized")
        q = oi[base + "_quantized"]
        np.testing.assert_array_equal(q, ti[node.input[0]], err_msg=base)
        assert q.dtype == ti[node.input[0]].dtype
        ones = np.ones(q.shape[0], np.float32)
        if q.dtype == np.int32:
            # bias scale f32(s_x * s_w) from the stored float32 scales: within one
            # float32 step of onnxruntime's (which multiplies before rounding s_x)
            np.testing.assert_allclose(
                oi[base + "_scale"].reshape(-1) * ones,
                ti[node.input[1]].reshape(-1) * ones,
                rtol=2e-7,
            )
            biases += 1
        else:
            np.testing.assert_array_equal(
                oi[base + "_scale"].reshape(-1), ti[node.input[1]].reshape(-1)
            )
            weights += 1
    assert weights == 6 and biases == 6


@pytest.mark.parametrize("form", [OutputForm.QOPERATOR, OutputForm.QDQ], ids=["qop", "qdq"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
@pytest.mark.parametrize("act", ["QUInt8", "QInt8"])
def test_bit_identical_logits(
    form, per_channel, act, ort_setup, digits_model, digits_calib, digits_test
):
    theirs, ours = _both(ort_setup, digits_model, digits_calib, form, per_channel, act)
    x, _ = digits_test
    np.testing.assert_array_equal(run(ours, {"input": x})[0], run(theirs, {"input": x})[0])


def test_dynamic_integer_ops_bit_identical(ort_setup, digits_model, digits_test):
    """quantize_dynamic's default (per-tensor int8 weights) and this quantizer's dynamic
    integer form give the same logits (DynamicQuantizeLinear, ConvInteger, MatMulInteger)."""
    folder, src, _ = ort_setup
    out = folder / "ort_dynamic.onnx"
    ortq.quantize_dynamic(str(src), str(out), weight_type=ortq.QuantType.QInt8)
    cfg = QuantConfig(form=OutputForm.INTEGER, static=False, weight_type=QuantType.QInt8)
    ours = quantize_model(digits_model, cfg)
    x, _ = digits_test
    np.testing.assert_array_equal(
        run(ours, {"input": x})[0], run(onnx.load(str(out)), {"input": x})[0]
    )


@pytest.mark.parametrize("method", ["naive", "minmax"])
def test_min_max_calibration_is_onnxruntime_minmax_bit_for_bit(
    method, ort_setup, digits_model, digits_calib
):
    """The min/max calibrators run the graph as onnxruntime's own calibrator does
    (unoptimized): every range it computes is ours, float for float."""
    from systolic_sdk.calibration import ArrayReader, calibrate

    _, _, theirs = ort_setup
    assert len(theirs) >= 10
    ours = calibrate(digits_model, ArrayReader({"input": digits_calib}), method=method)
    assert set(theirs) <= set(ours)
    assert {k: ours[k] for k in theirs} == theirs
