"""Faster forms of datapath steps against their general forms, bit for bit:
QuantizeLinear per tensor (float32, in place) against the per-axis form, and the GEMM
with a prepared constant operand against ``int_matmul_wrap32`` (both its float32 plan and
the fallbacks, accumulators past 2**24, the int32 wrap)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime_emulator import datapath as dp


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([np.int8, np.uint8, np.int16, np.uint16]),
    st.sampled_from([1.0, 0.25, 1 / 3, 1e-6, 1e6, 0.0]),
    st.integers(0, 2**32 - 1),
)
def test_per_tensor_quantize_equals_the_per_axis_form(dtype, scale, seed) -> None:
    rng = np.random.default_rng(seed)
    lo, hi = dp.qrange(dtype)
    x = (rng.standard_normal((2, 3, 40)) * rng.choice([1, 100, 1e5, 1e30])).astype(np.float32)
    x[0, 0, :8] = [np.nan, np.inf, -np.inf, 0.5, -0.5, 2.5, -1e38, 3e38]
    x[1, 1] = (np.arange(40) - 20) * np.float32(scale) / 2  # ties
    zp = int(rng.integers(lo, hi + 1))
    s = np.float32(scale)
    got = dp.quantize_linear(x, s, np.array(zp, dtype), dtype)
    general = dp.quantize_linear(x, np.full(3, s, np.float32), np.full(3, zp, dtype), dtype, axis=1)
    assert got.dtype == np.dtype(dtype)
    assert np.array_equal(got, general)


def test_per_tensor_quantize_of_a_scalar() -> None:
    assert int(dp.quantize_linear(np.float32(2.5), np.float32(1), 0, np.int8)) == 2
    assert int(dp.quantize_linear(np.float32(np.nan), np.float32(1), 3, np.uint8)) == 0


def _ints(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    if kind == "small":
        return (rng.integers(0, 128, shape) * (rng.random(shape) < 0.3)).astype(np.int16)
    if kind == "full":
        return rng.integers(-128, 128, shape).astype(np.int16)
    return np.full(shape, rng.choice([-128, 127, -255, 255]), dtype=np.int16)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4),
    st.sampled_from([1, 9, 512, 1100, 4608]),
    st.integers(1, 6),
    st.sampled_from(["small", "full", "extreme"]),
    st.sampled_from(["small", "full", "extreme"]),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_prepared_operand_gemm_equals_int_matmul_wrap32(m, k, n, kind_a, kind_b, batched, seed):
    rng = np.random.default_rng(seed)
    a = _ints(rng, ((2,) if batched else ()) + (m, k), kind_a)
    b = _ints(rng, (k, n), kind_b)
    prepared = dp.prepare_matmul_operand(b)
    want = dp.wrap32(dp.int_matmul_reference(a, b))
    got = dp.int_matmul_wrap32_prepared(a, prepared)
    assert got.dtype == np.int32
    assert np.array_equal(got, want)
    assert np.array_equal(dp.int_matmul_wrap32(a, b), want)


def test_prepared_operand_past_2_24_wraps_like_the_hardware() -> None:
    # K = 2**17 products of 128 * 128: 2**31 exactly, one past int32's maximum.
    a = np.full((1, 2**17), -128, dtype=np.int16)
    b = np.full((2**17, 2), -128, dtype=np.int16)
    b[:, 1] = 127
    got = dp.int_matmul_wrap32_prepared(a, dp.prepare_matmul_operand(b))
    assert got.tolist() == [[-(2**31), -(2**17) * 128 * 127]]


@pytest.mark.parametrize("shape", [(0, 3), (3, 0)])
def test_prepared_operand_of_empty_shapes(shape) -> None:
    a = np.zeros((2, shape[0]), np.int16)
    b = np.zeros(shape, np.int16)
    got = dp.int_matmul_wrap32_prepared(a, dp.prepare_matmul_operand(b))
    assert got.shape == (2, shape[1]) and not got.any()


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize(
    "scales", [(0.5, 1.5, 1.0), (0.02, 0.03, 0.025), (1.0, 1.0, 2**-7), (3.0, 1e-9, 0.5)]
)
def test_qlinear_add_in_float32_equals_the_int8_steps(relu: bool, scales) -> None:
    """Every int8 pair: the float32 form equals rescale_saturate twice, an int16 add and
    the clamp (ratios 1/2 and 3/2 put many values on ties)."""
    a, b = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128))
    a, b = a.astype(np.int8), b.astype(np.int8)
    s_a, s_b, s_c = (np.float32(s) for s in scales)
    want = dp.rescale_saturate(a, s_a, s_c).astype(np.int16) + dp.rescale_saturate(b, s_b, s_c)
    want = np.clip(want, 0 if relu else -128, 127).astype(np.int8)
    assert np.array_equal(dp.qlinear_add_systolic(a, s_a, b, s_b, s_c, relu), want)


def test_qlinear_add_rounding_goes_through_datapath_rne(monkeypatch: pytest.MonkeyPatch) -> None:
    a = np.arange(-128, 128, dtype=np.int8)
    h = np.float32(0.5)
    right = dp.qlinear_add_systolic(a, h, a, h, np.float32(1))
    monkeypatch.setattr(dp, "rne", lambda v: np.floor(np.asarray(v) + 0.5))
    wrong = dp.qlinear_add_systolic(a, h, a, h, np.float32(1))
    assert not np.array_equal(right, wrong)
