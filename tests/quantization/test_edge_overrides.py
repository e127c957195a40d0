"""Tensor overrides on the outputs of pass-through ops (Relu, MaxPool) are honoured:
the quantized edge of the tensor carries exactly the override's scale and zero point."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from qtest_helpers import run

import systolic_sdk
from systolic_sdk.calibration import ArrayReader
from systolic_sdk.quantization import QuantType

SCALE, ZERO_POINT = np.float32(0.0625), np.int8(-100)


def _edges_with(model: onnx.ModelProto, scale: np.float32, zp: np.int8) -> list[str]:
    """Run-time tensors that nodes read or write quantized with exactly (scale, zp)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    def is_pair(s: str, z: str) -> bool:
        a, b = inits.get(s), inits.get(z)
        return (
            a is not None
            and b is not None
            and a.dtype == np.float32
            and b.dtype == zp.dtype
            and a.shape == ()
            and a == scale
            and b == zp
        )

    found = []
    for n in model.graph.node:
        ins = list(n.input)
        if n.op_type == "QuantizeLinear" and len(ins) == 3 and is_pair(ins[1], ins[2]):
            found.append(n.output[0])
        elif (
            n.op_type == "DequantizeLinear"
            or n.op_type.startswith("QLinear")
            or (n.op_type == "QGemm")
        ):
            found += [
                ins[i - 1]
                for i in range(1, len(ins) - 1)
                if ins[i - 1] and ins[i - 1] not in inits and is_pair(ins[i], ins[i + 1])
            ]
    return list(dict.fromkeys(found))


def _quantize(model, calib, form: str, overrides=None) -> onnx.ModelProto:
    return systolic_sdk.quantize_static(
        model,
        None,
        ArrayReader({"input": calib}, batch_size=50),
        quant_format=form,
        activation_type=QuantType.QInt8,
        extra_options={"TensorQuantOverrides": overrides or {}},
    )


@pytest.fixture(scope="module")
def reference(digits_model, digits_calib, digits_test):
    """Top-1 classes of the model quantized without overrides, per form."""
    return {
        form: run(_quantize(digits_model, digits_calib, form), {"input": digits_test[0]})[0].argmax(
            1
        )
        for form in ("QDQ", "QOperator")
    }


@pytest.mark.parametrize("form", ["QDQ", "QOperator"])
@pytest.mark.parametrize(
    "tensor", ["/Relu_3_output_0", "/pool1/MaxPool_output_0", "/Relu_output_0", "/Relu_1_output_0"]
)
def test_override_on_pass_through_output_is_honoured(
    digits_model, digits_calib, digits_test, reference, form: str, tensor: str
) -> None:
    overrides = {tensor: [{"scale": SCALE, "zero_point": ZERO_POINT}]}
    q = _quantize(digits_model, digits_calib, form, overrides)
    assert _edges_with(q, SCALE, ZERO_POINT), f"no tensor of {form} output has the override"
    # the override's edge holds the op's output: non-negative reals, so int8 >= zp
    probe = onnx.ModelProto()
    probe.CopyFrom(q)
    edges = _edges_with(q, SCALE, ZERO_POINT)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(e) for e in edges)
    values = run(probe, {"input": digits_test[0][:64]})[-len(edges) :]
    assert all(v.dtype == np.int8 for v in values)
    assert any(v.min() >= ZERO_POINT and v.max() > ZERO_POINT for v in values)
    top1 = run(q, {"input": digits_test[0]})[0].argmax(axis=1)
    assert np.mean(top1 == reference[form]) >= 0.97
