"""Differential test against onnxruntime's own quantizer (MinMax, QDQ) on the shipped
model: the same activation parameters, weights, weight scales and int32 biases."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

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


ACTIVATIONS = [("QUInt8", False), ("QInt8", False), ("QInt8", True)]


@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
@pytest.mark.parametrize(("act", "symmetric"), ACTIVATIONS, ids=["u8", "s8", "s8-symmetric"])
def test_same_parameters_as_onnxruntime(
    per_channel, act, symmetric, digits_model, digits_calib, tmp_path
):
    src = tmp_path / "m.onnx"
    onnx.save(digits_model, str(src))
    ortq.quantize_static(
        str(src),
        str(tmp_path / "ort.onnx"),
        _Reader(digits_calib),
        quant_format=ortq.QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=getattr(ortq.QuantType, act),
        weight_type=ortq.QuantType.QInt8,
        calibrate_method=ortq.CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": symmetric},
    )
    theirs = onnx.load(str(tmp_path / "ort.onnx"))
    cfg = QuantConfig(
        form=OutputForm.QDQ,
        per_channel=per_channel,
        activation_type=getattr(QuantType, act),
        extra_options={"ActivationSymmetric": symmetric},
    )
    # onnxruntime's own MinMax calibrator on the same data: identical input ranges
    from onnxruntime.quantization.calibrate import create_calibrator

    calibrator = create_calibrator(str(src), None, augmented_model_path=str(tmp_path / "aug.onnx"))
    calibrator.collect_data(_Reader(digits_calib))
    data = calibrator.compute_data().data
    ranges = {
        k: (
            float(np.asarray(v.range_value[0]).reshape(-1)[0]),
            float(np.asarray(v.range_value[1]).reshape(-1)[0]),
        )
        for k, v in data.items()
        if k in tensors_to_calibrate(digits_model, cfg)
    }
    ours = quantize_model(digits_model, cfg, ranges)
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
        if q.dtype == np.int32:
            # bias scale s_x * s_w: within one float32 step of onnxruntime's
            np.testing.assert_allclose(
                oi[base + "_scale"].reshape(-1) * np.ones(q.shape[0], np.float32),
                ti[node.input[1]].reshape(-1) * np.ones(q.shape[0], np.float32),
                rtol=2e-7,
            )
            biases += 1
        else:
            np.testing.assert_array_equal(
                oi[base + "_scale"].reshape(-1), ti[node.input[1]].reshape(-1)
            )
            weights += 1
    assert weights == 6 and biases == 6
