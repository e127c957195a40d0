"""The shipped digits model quantized for the systolic backend and run in the emulator."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from systolic_helpers import initializers, nodes_of, quantize_systolic, relu_attr, run_ort

from systolic_sdk.backends import get_backend

FP32_ACCURACY = 0.984


@pytest.fixture(scope="module")
def quantized(digits_model, digits_calib) -> onnx.ModelProto:
    return quantize_systolic(digits_model, {"input": digits_calib})


@pytest.fixture(scope="module")
def emulated(quantized, digits_test) -> np.ndarray:
    x, _ = digits_test
    (y,) = get_backend("systolic").run(quantized, {"input": x})
    return y


def test_accuracy_close_to_fp32(digits_model, digits_test, emulated) -> None:
    x, labels = digits_test
    (ref,) = run_ort(digits_model, {"input": x})
    fp32 = float((ref.argmax(1) == labels).mean())
    assert fp32 == pytest.approx(FP32_ACCURACY, abs=0.002)
    acc = float((emulated.argmax(1) == labels).mean())
    assert acc >= fp32 - 0.01
    assert float((emulated.argmax(1) == ref.argmax(1)).mean()) >= 0.98


def test_graph_form(quantized) -> None:
    types = [n.op_type for n in quantized.graph.node]
    assert types.count("QLinearConv") == 6  # 4 convs + 2 Gemms as 1x1 convs
    assert "QLinearAdd" in types and "QLinearRelu" not in types and "Clip" not in types
    assert [relu_attr(n) for n in nodes_of(quantized, "QLinearConv")] == [1, 1, 1, 1, 1, 0]
    assert types.count("QuantizeLinear") == 1 and types.count("DequantizeLinear") == 1
    meta = {p.key: p.value for p in quantized.metadata_props}
    assert meta["systolic_sdk.backend"] == "systolic"
    for name, arr in initializers(quantized).items():
        if "zero_point" in name:
            assert arr.dtype == np.int8 and arr.shape == () and arr == 0, name
        elif name.endswith("_scale"):
            assert arr.dtype == np.float32 and arr.shape == (), name


def test_emulator_equals_onnxruntime_on_the_lowering(quantized, digits_test, emulated) -> None:
    lowered = get_backend("systolic").lower(quantized)
    assert not any(a.name == "relu" for n in lowered.graph.node for a in n.attribute)
    assert not any(n.domain for n in lowered.graph.node)
    onnx.checker.check_model(lowered, full_check=True)
    x, _ = digits_test
    (y,) = run_ort(lowered, {"input": x})
    assert y.dtype == emulated.dtype and np.array_equal(y, emulated)
