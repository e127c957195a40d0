"""QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear against onnxruntime (and
onnx.reference for blocked quantization); refusal of unsupported element types."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from runtime_emulator.errors import EmulatorError, UnsupportedError

from .conftest import run_kernel, run_ort_node

F32 = np.float32
QTYPES = [np.uint8, np.int8, np.uint16, np.int16]


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    same_kind = a.dtype == b.dtype and a.shape == b.shape
    return same_kind and np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))


@st.composite
def quantize_cases(draw: st.DrawFn):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from(QTYPES))
    info = np.iinfo(dtype)
    shape = (2, 3, 5)
    per_axis = draw(st.booleans())
    axis = draw(st.sampled_from([0, 1, 2, -1]))
    n = shape[axis] if per_axis else 1
    scale = rng.uniform(0.001, 2.0, n).astype(F32)
    zp = rng.integers(info.min, info.max + 1, n).astype(dtype)
    # Values on and next to exact ties (k + 0.5) * s, plus wide values that saturate.
    k = rng.integers(-300, 300, shape).astype(np.float64) + 0.5
    bscale = scale.reshape([-1 if i == axis % 3 else 1 for i in range(3)]) if per_axis else scale
    x = (k * bscale).astype(F32)
    nudge = rng.integers(-1, 2, shape)
    x = np.where(nudge > 0, np.nextafter(x, F32(np.inf)), x)
    x = np.where(nudge < 0, np.nextafter(x, F32(-np.inf)), x)
    x.ravel()[:3] = [1e30, -np.inf, 3.0e5]
    if not per_axis:
        scale, zp = scale.reshape(()), zp.reshape(())
    return x, scale, zp, ({"axis": axis} if per_axis else {})


@settings(max_examples=80, deadline=None)
@given(quantize_cases())
def test_quantizelinear_matches_onnxruntime(case) -> None:
    x, scale, zp, attrs = case
    ins = [("x", x), ("y_scale", scale), ("y_zero_point", zp)]
    want = run_ort_node("QuantizeLinear", ins, attrs, feeds=("x",))[0]
    got = run_kernel("QuantizeLinear", [x, scale, zp], attrs)[0]
    assert _bits_equal(got, want)


def test_quantizelinear_divides_like_onnxruntime() -> None:
    x = np.array([float.fromhex("-0x1.4b9c6ep+3")], F32)
    s = np.array(float.fromhex("0x1.0ca59ep-2"), F32)
    z = np.array(0, np.int8)
    want = run_ort_node("QuantizeLinear", [("x", x), ("s", s), ("z", z)], feeds=("x",))[0]
    assert run_kernel("QuantizeLinear", [x, s, z])[0].tolist() == want.tolist() == [-40]


def test_quantizelinear_nan_saturates_to_the_minimum_like_onnxruntime() -> None:
    x = np.array([np.nan, 1.0, np.nan], F32)
    for dt in (np.uint8, np.int8):
        z = np.array(3, dt)
        ins = [("x", x), ("s", np.array(0.1, F32)), ("z", z)]
        want = run_ort_node("QuantizeLinear", ins, feeds=("x",))[0]
        assert np.array_equal(run_kernel("QuantizeLinear", [x, np.array(0.1, F32), z])[0], want)


def test_quantizelinear_without_zero_point_and_output_dtype() -> None:
    x = np.array([-1.0, 0.26, 300.0], F32)
    s = np.array(0.1, F32)
    assert run_kernel("QuantizeLinear", [x, s])[0].tolist() == [0, 3, 255]  # uint8
    y = run_kernel("QuantizeLinear", [x, s], {"output_dtype": TensorProto.INT16})[0]
    assert y.dtype == np.int16 and y.tolist() == [-10, 3, 3000]
    with pytest.raises(EmulatorError, match="output_dtype"):
        run_kernel("QuantizeLinear", [x, s, np.array(0, np.int8)], {"output_dtype": 2})


@pytest.mark.parametrize("block", [2, 3])
def test_blocked_quantization_matches_onnx_reference(block: int) -> None:
    rng = np.random.default_rng(block)
    x = rng.uniform(-10, 10, (3, 7)).astype(F32)
    nb = -(-7 // block)
    s = rng.uniform(0.01, 0.2, (3, nb)).astype(F32)
    z = rng.integers(0, 256, (3, nb)).astype(np.uint8)
    attrs = {"axis": 1, "block_size": block}
    q = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], **attrs)
    want = ReferenceEvaluator(q).run(None, {"x": x, "s": s, "z": z})[0]
    got = run_kernel("QuantizeLinear", [x, s, z], attrs)[0]
    assert _bits_equal(got, want)
    dq = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)
    want_dq = ReferenceEvaluator(dq).run(None, {"q": got, "s": s, "z": z})[0]
    assert _bits_equal(run_kernel("DequantizeLinear", [got, s, z], attrs)[0], want_dq)
    with pytest.raises(EmulatorError, match="blocked scale"):
        run_kernel("QuantizeLinear", [x, s[:, :1], z[:, :1]], attrs)


@pytest.mark.parametrize(
    "code",
    [TensorProto.INT4, TensorProto.UINT4, TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT4E2M1,
     TensorProto.INT2],
)  # fmt: skip
def test_unsupported_output_types_are_refused(code: int) -> None:
    x = np.zeros(4, F32)
    with pytest.raises(UnsupportedError, match="not supported by the emulator"):
        run_kernel("QuantizeLinear", [x, np.array(1, F32)], {"output_dtype": code})


def test_unsupported_input_types_are_refused() -> None:
    import ml_dtypes

    q = np.zeros(4, ml_dtypes.float8_e4m3fn)
    with pytest.raises(UnsupportedError, match="float8_e4m3fn is not supported"):
        run_kernel("DequantizeLinear", [q, np.array(1, F32)])
    with pytest.raises(UnsupportedError, match="int4"):
        run_kernel("QuantizeLinear", [np.zeros(4, F32), np.array(1, F32),
                                      np.zeros((), ml_dtypes.int4)])  # fmt: skip


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(QTYPES + [np.int32]), st.booleans())
def test_dequantizelinear_matches_onnxruntime_bits(seed: int, dtype, per_axis: bool) -> None:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    lo, hi = (info.min, info.max) if dtype != np.int32 else (-(2**30), 2**30)
    q = rng.integers(lo, hi + 1, (3, 4, 2)).astype(dtype)
    n = 4 if per_axis else 1
    s = rng.uniform(1e-4, 3.0, n).astype(F32)
    z = (rng.integers(lo, hi + 1, n) if dtype != np.int32 else np.zeros(n)).astype(dtype)
    if not per_axis:
        s, z = s.reshape(()), z.reshape(())
    ins = [("x", q), ("x_scale", s), ("x_zero_point", z)]
    want = run_ort_node("DequantizeLinear", ins, {"axis": 1} if per_axis else {}, feeds=("x",))[0]
    got = run_kernel("DequantizeLinear", [q, s, z], {"axis": 1} if per_axis else {})[0]
    assert _bits_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["mixed", "positive", "negative", "zero"]))
def test_dynamicquantizelinear_matches_onnxruntime(seed: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, rng.uniform(0.01, 100), (3, 17)).astype(F32)
    if kind == "positive":
        x = np.abs(x)
    elif kind == "negative":
        x = -np.abs(x)
    elif kind == "zero":
        x = np.zeros_like(x)
    want = run_ort_node("DynamicQuantizeLinear", [("x", x)], feeds=("x",), n_outputs=3)
    got = run_kernel("DynamicQuantizeLinear", [x])
    for g, w in zip(got, want, strict=True):
        assert _bits_equal(np.asarray(g), np.asarray(w))


def test_float16_quantizelinear_divides_in_float16_as_onnx_specifies() -> None:
    """ONNX: the scale's type sets the division's precision (onnx.reference agrees);
    onnxruntime widens both to float32 and divides in float32. They differ where the
    float16 quotient rounds across a .5."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 50, 256).astype(np.float16)
    s = np.array(0.37, np.float16)
    z = np.array(3, np.uint8)
    got = run_kernel("QuantizeLinear", [x, s, z])[0]
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
    assert np.array_equal(got, ReferenceEvaluator(node).run(None, {"x": x, "s": s, "z": z})[0])
    ort = run_ort_node("QuantizeLinear", [("x", x), ("s", s), ("z", z)], feeds=("x",))[0]
    widened = run_kernel("QuantizeLinear", [x.astype(F32), s.astype(F32), z])[0]
    assert np.array_equal(ort, widened)  # onnxruntime's rule, exactly
    assert np.count_nonzero(ort != got) > 0  # and the two rules do differ here
