"""Overrides without a scale (quant_type, rmin/rmax, symmetric, reduce_range, axis) give the
parameters onnxruntime's quantize_static gives for the same overrides, on the shipped model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
from onnxruntime.quantization import quantize_static as ort_quantize_static

from systolic_sdk import api
from systolic_sdk.calibration.reader import ArrayReader
from systolic_sdk.errors import QuantizationError, SdkError

WEIGHT = "conv1.weight"


class _Reader(CalibrationDataReader):
    def __init__(self, x: np.ndarray) -> None:
        self.x, self.i = x, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        self.i += 8
        return {"input": self.x[self.i - 8 : self.i]}


def _params(model: onnx.ModelProto, tensor: str) -> tuple[list, list, str]:
    """(scale, zero point, zero-point dtype) of the Q/DQ node reading ``tensor``."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    node = next(
        n
        for n in model.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[0].startswith(tensor)
    )
    zp = inits[node.input[2]]
    return inits[node.input[1]].tolist(), zp.tolist(), str(zp.dtype)


def _ours(path, calib, overrides, per_channel):
    plain = {
        k: [{kk: (vv.name if isinstance(vv, QuantType) else vv) for kk, vv in e.items()} for e in v]
        for k, v in overrides.items()
    }
    return api.quantize_static(
        str(path), None, ArrayReader({"input": calib}, 8), per_channel=per_channel,
        extra_options={"TensorQuantOverrides": plain},
    )  # fmt: skip


def _theirs(path, calib, overrides, per_channel, tmp_path):
    out = tmp_path / "ort.onnx"
    ort_quantize_static(
        str(path), str(out), _Reader(calib), quant_format=QuantFormat.QDQ,
        per_channel=per_channel, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        extra_options={"TensorQuantOverrides": overrides},
    )  # fmt: skip
    return onnx.load(out)


CASES = [
    ("input", {"quant_type": QuantType.QUInt8}),
    ("input", {"symmetric": False}),
    ("input", {"symmetric": True, "quant_type": QuantType.QUInt8}),
    ("input", {"rmin": np.float32(-1.0)}),
    ("input", {"rmax": np.float32(0.5), "symmetric": False}),
    (WEIGHT, {"reduce_range": True}),
    (WEIGHT, {"symmetric": False}),
    (WEIGHT, {"quant_type": QuantType.QUInt8}),
    (WEIGHT, {"axis": 0}),
    (WEIGHT, {"axis": 0, "symmetric": False}),
    (WEIGHT, {"axis": 0, "reduce_range": True}),
]


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize(("tensor", "entry"), CASES)
def test_same_parameters_as_onnxruntime(
    digits_model_path, digits_calib, tmp_path, tensor, entry, per_channel
):
    calib = digits_calib[:32]
    # onnxruntime writes the parameters it chose into the overrides it is given: copies
    ours = _params(_ours(digits_model_path, calib, {tensor: [dict(entry)]}, per_channel), tensor)
    theirs = _params(
        _theirs(digits_model_path, calib, {tensor: [dict(entry)]}, per_channel, tmp_path), tensor
    )
    assert ours == theirs


def test_activation_reduce_range_uses_seven_bits(digits_model_path, digits_calib):
    """onnxruntime refuses reduce_range on activations; here it means the 7-bit range."""
    calib = digits_calib[:32]
    q = _ours(digits_model_path, calib, {"input": [{"reduce_range": True}]}, False)
    scale, zp, dtype = _params(q, "input")
    hi = float(calib.max())
    assert dtype == "int8" and zp == -64 and scale == pytest.approx(hi / 128, rel=1e-6)


def test_one_sided_range_without_calibration_is_refused(digits_model_path):
    model = onnx.load(digits_model_path)
    with pytest.raises(SdkError, match="tensor 'input' needs a range"):
        api.quantize_static(
            model, None, None, extra_options={"TensorQuantOverrides": {"input": [{"rmin": -1.0}]}}
        )


@pytest.mark.parametrize(
    "entry", [{"symmetric": False}, {"reduce_range": True}, {"axis": 0}], ids=str
)
def test_systolic_refuses_what_it_cannot_run(digits_model_path, digits_calib, entry):
    with pytest.raises(QuantizationError, match=f"tensor override '{WEIGHT}': backend 'systolic'"):
        api.quantize_static(
            str(digits_model_path), None, ArrayReader({"input": digits_calib[:8]}),
            quant_format="QOperator", backend="systolic",
            extra_options={"TensorQuantOverrides": {WEIGHT: [entry]}},
        )  # fmt: skip
