"""The systolic backend's final check, schemas and refused overrides."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from systolic_helpers import quantize_systolic

from runtime_emulator.kernels import SYSTOLIC_DOMAIN
from systolic_sdk.backends.systolic import check_systolic_graph, params
from systolic_sdk.errors import QuantizationError
from systolic_sdk.quantization.config import TensorOverride
from systolic_sdk.quantization.types import QuantType

F32 = np.float32


def _relu_model(elem_type: int) -> onnx.ModelProto:
    node = helper.make_node("QLinearRelu", ["x"], ["y"], name="relu", domain=SYSTOLIC_DOMAIN)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", elem_type, [2, 3])],
        [helper.make_tensor_value_info("y", elem_type, [2, 3])],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(SYSTOLIC_DOMAIN, 1)],
    )


def test_qlinear_relu_schema_accepts_int8_only() -> None:
    check_systolic_graph(_relu_model(TensorProto.INT8))
    with pytest.raises(QuantizationError, match="onnx.checker"):
        check_systolic_graph(_relu_model(TensorProto.UINT8))


def test_non_zero_zero_point_rejected(make_tiny_model) -> None:
    model = make_tiny_model()
    feeds = {"x": np.random.default_rng(2).normal(0, 1, (8, 1, 4, 4)).astype(F32)}
    q = quantize_systolic(model, feeds)
    check_systolic_graph(q)
    conv = next(n for n in q.graph.node if n.op_type == "QLinearConv")
    for t in q.graph.initializer:
        if t.name == conv.input[5]:
            t.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), t.name))
    with pytest.raises(QuantizationError, match=f"zero point '{conv.input[5]}'"):
        check_systolic_graph(q)


@pytest.mark.parametrize(
    "override,message",
    [
        (TensorOverride(scale=(0.1,), zero_point=(5,)), "zero point 0"),
        (TensorOverride(scale=(0.1, 0.2, 0.3, 0.4), axis=0), "per-tensor"),
        (TensorOverride(scale=(0.1,), quant_type=QuantType.QUInt8), "int8 only"),
    ],
)
def test_overrides_the_array_cannot_honour(make_tiny_model, override, message) -> None:
    with pytest.raises(QuantizationError, match=f"override 'c'.*{message}"):
        quantize_systolic(make_tiny_model(), ranges={}, tensor_overrides={"c": override})


def test_bias_guard_keeps_float64_weight_quantization() -> None:
    w = np.linspace(-1, 1, 12, dtype=F32).reshape(3, 4)
    wp = params.weight_params(w, QuantType.QInt8)
    qb = params.quantize_bias(np.array([3e5, -1.0, 0.5], F32), F32(1e-6), wp)
    assert qb.adjusted and qb.weight_params.scale > wp.scale
    assert isinstance(qb.weight_params, params.WeightParams)
    assert qb.weight_params.exact_scale == float(qb.weight_params.scale)
    q = params.quantize_weight(w, qb.weight_params)
    exact = float(qb.weight_params.scale)
    assert q.reshape(-1).tolist() == [round(float(v) / exact) for v in w.reshape(-1)]
