"""Spec section 7 parameters of the systolic backend, checked against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper
from systolic_helpers import initializers, nodes_of, quantize_systolic

from systolic_sdk.backends.systolic import params
from systolic_sdk.quantization.types import QuantType

F32 = np.float32


def hand_activation_scale(rmin: float, rmax: float) -> np.float32:
    m = max(abs(min(rmin, 0.0)), abs(max(rmax, 0.0)))
    if m <= 1e-8:
        return F32(1.0)
    return F32(F32(m) / F32(127))


@pytest.mark.parametrize(
    "rmin,rmax",
    [(-1.0, 1.0), (-3.7, 0.2), (0.5, 6.0), (0.0, 0.0), (-1e-9, 5e-9), (2.0, 3.0), (-0.1, -0.05)],
)
def test_activation_scale_formula(rmin: float, rmax: float) -> None:
    p = params.activation_params(rmin, rmax, QuantType.QInt8)
    assert p.scale.dtype == np.float32 and p.scale.shape == ()
    assert p.scale == hand_activation_scale(rmin, rmax)
    assert p.zero_point.dtype == np.int8 and p.zero_point == 0


def test_weight_scale_and_values_in_float64() -> None:
    # Values near (k + 0.5) * scale: the float64 quotient and the float32 one round apart
    # for some of them, so this only passes with the float64 rule of spec section 7.
    absmax = 1.0
    s64 = 2 * absmax / 254
    w = np.array([absmax] + [F32((k + 0.5) * s64) for k in range(-120, 120)], dtype=F32)
    p = params.weight_params(w, QuantType.QInt8)
    assert p.scale.dtype == np.float32 and p.scale == F32(2 * float(np.abs(w).max()) / 254)
    q = params.quantize_weight(w, p)
    assert q.dtype == np.int8
    exact = 2 * float(np.abs(w.astype(np.float64)).max()) / 254
    hand = [max(-128, min(127, round(float(v) / exact))) for v in w]
    assert q.tolist() == hand
    f32_path = [round(float(F32(v) / F32(exact))) for v in w]
    assert f32_path != hand, "the sample must tell float64 from float32 quantization"


def test_zero_weights_get_unit_scale() -> None:
    p = params.weight_params(np.zeros((2, 3), F32), QuantType.QInt8)
    assert p.scale == F32(1.0)
    assert params.quantize_weight(np.zeros((2, 3), F32), p).tolist() == [[0] * 3] * 2


def test_bias_formula() -> None:
    rng = np.random.default_rng(3)
    b = rng.normal(0, 2, 64).astype(F32)
    w = rng.normal(0, 0.3, (64, 8)).astype(F32)
    wp = params.weight_params(w, QuantType.QInt8)
    s_x = F32(0.0123)
    qb = params.quantize_bias(b, s_x, wp)
    s = F32(s_x * wp.scale)
    hand = [round(float(F32(v / s))) for v in b]
    assert qb.values.dtype == np.int32 and qb.values.tolist() == hand
    assert qb.scale.dtype == np.float32 and np.all(qb.scale == s)


def test_small_graph_parameters_by_hand(tiny_model) -> None:
    """Conv -> Relu -> Flatten -> MatMul (tests/conftest.py's tiny model), scales by hand."""
    model = tiny_model
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w, b, w2 = weights["w"], weights["b"], weights["w2"]
    ranges = {"x": (-0.8, 1.3), "c": (-7.0, 5.0), "r": (0.0, 5.0), "f": (0.0, 5.0), "y": (-2, 9)}
    q = quantize_systolic(model, ranges=ranges)
    inits = initializers(q)
    (conv,) = nodes_of(q, "QLinearConv")
    (mm,) = nodes_of(q, "QLinearMatMul")
    assert inits[conv.input[1]] == hand_activation_scale(-0.8, 1.3)
    # "c" is read only by the Relu: rmin is narrowed to 0, so the scale is 5/127, not 7/127.
    assert inits[conv.input[6]] == hand_activation_scale(0.0, 5.0)
    s_w = 2 * float(np.abs(w.astype(np.float64)).max()) / 254
    assert inits[conv.input[4]] == F32(s_w)
    wq = inits[conv.input[3]]
    assert wq.dtype == np.int8
    assert wq.reshape(-1).tolist() == [round(float(v) / s_w) for v in w.reshape(-1)]
    s_b = F32(inits[conv.input[1]] * inits[conv.input[4]])
    assert inits[conv.input[8]].tolist() == [round(float(F32(v / s_b))) for v in b]
    assert inits[mm.input[1]] == hand_activation_scale(0.0, 5.0)  # Flatten keeps the scale
    assert inits[mm.input[6]] == hand_activation_scale(-2, 9)
    s_w2 = 2 * float(np.abs(w2.astype(np.float64)).max()) / 254
    assert inits[mm.input[4]] == F32(s_w2)
