"""The absolute-sum exactness bound of the float32 GEMM (``datapath.abs_sum_plan``):
sparse, small activations take one float32 GEMM over the whole K; full-range rows fall
back to chunks. Either way the results equal the int64 references (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime_emulator import datapath as dp


def test_abs_sum_plan_takes_one_float32_gemm_up_to_2_24() -> None:
    # 1024 * 128 * 128 = 2**24 exactly: one chunk over any K whose row sums stay there.
    assert dp.abs_sum_plan(4608, 128, 128, 1024 * 128, 4608 * 128) == (np.dtype(np.float32), 4608)
    assert dp.abs_sum_plan(4608, 128, 128, 4608 * 128, 1024 * 128) == (np.dtype(np.float32), 4608)
    # One more unit of either sum and the plan is gemm_plan's (chunks of 1024).
    assert dp.abs_sum_plan(4608, 128, 128, 1024 * 128 + 1, 1024 * 128 + 1) == dp.gemm_plan(
        4608, 128, 128
    )
    assert dp.abs_sum_plan(2**20, 255, 255, 2**40, 2**40)[0] == np.float64


def _operand(rng: np.random.Generator, shape: tuple[int, int], kind: str) -> np.ndarray:
    """Zero-point-corrected 8-bit data: int8 (-128..127) or uint8 minus a zero point."""
    if kind == "relu":  # post-ReLU activations: mostly 0, small positives
        v = rng.integers(0, 128, shape) * (rng.random(shape) < 0.3)
        return (v // rng.integers(1, 16)).astype(np.int16)
    if kind == "int8":
        return rng.integers(-128, 128, shape).astype(np.int16)
    if kind == "uint8":
        return (rng.integers(0, 256, shape) - rng.integers(0, 256)).astype(np.int16)
    # worst case: full-range extremes of one sign, every product at its largest
    return np.full(shape, rng.choice([-128, 127, -255, 255]), dtype=np.int16)


KINDS = st.sampled_from(["relu", "int8", "uint8", "extreme"])


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 5),
    st.sampled_from([1, 7, 1024, 1025, 2304, 4608]),
    st.integers(1, 5),
    KINDS,
    KINDS,
    st.integers(0, 2**32 - 1),
    st.integers(-1, 4),
)
def test_int_matmul_with_abs_sum_bound_equals_reference(
    m: int, k: int, n: int, kind_a: str, kind_b: str, seed: int, extreme_row: int
) -> None:
    rng = np.random.default_rng(seed)
    a = _operand(rng, (m, k), kind_a)
    b = _operand(rng, (k, n), kind_b)
    if 0 <= extreme_row < m:  # one worst-case full-range row among small ones
        a[extreme_row] = rng.choice([-128, 127, 255, -255])
    want = dp.int_matmul_reference(a, b)
    got = dp.int_matmul(a, b)
    assert got.dtype == np.int64
    assert np.array_equal(got, want)
    assert np.array_equal(dp.int_matmul_wrap32(a, b), dp.wrap32(want))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 2),
    st.sampled_from([1, 3, 64, 300]),
    st.sampled_from([1, 3]),
    st.sampled_from([1, 2]),
    KINDS,
    KINDS,
    st.integers(0, 2**32 - 1),
)
def test_conv_with_abs_sum_bound_equals_reference(
    n: int, c: int, k: int, stride: int, kind_x: str, kind_w: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    x = _operand(rng, (n * c, 36), kind_x).reshape(n, c, 6, 6)
    w = _operand(rng, (4, c * k * k), kind_w).reshape(4, c, k, k)
    if kind_x != "extreme" and rng.random() < 0.5:  # one worst-case pixel
        x[0, :, rng.integers(6), rng.integers(6)] = rng.choice([-255, 255, 127])
    pads = [k // 2] * 4
    kw = {"strides": [stride] * 2, "pads": pads, "dilations": [1, 1], "group": 1}
    want = dp.conv_accumulate_reference(x, w, **kw)
    assert np.array_equal(dp.conv_accumulate(x, w, **kw), want)
    bias = rng.integers(-(2**31), 2**31, 4).astype(np.int32)
    got = dp.conv_accumulate_wrap32(x, w, bias, **kw)
    assert np.array_equal(got, dp.wrap32(want + bias.reshape(4, 1, 1).astype(np.int64)))


def test_sparse_activations_with_large_k_take_one_float32_gemm() -> None:
    rng = np.random.default_rng(3)
    x = (rng.integers(0, 128, (2, 512, 7, 7)) * (rng.random((2, 512, 7, 7)) < 0.2)) // 8
    w = rng.integers(-128, 128, (8, 512, 3, 3))
    plan = dp._conv_plan(x, w, [1, 1], [1] * 4, [1, 1], [7, 7])
    assert plan == (np.dtype(np.float32), 512 * 9)
    kw = {"strides": [1, 1], "pads": [1] * 4, "dilations": [1, 1], "group": 1}
    assert np.array_equal(dp.conv_accumulate(x, w, **kw), dp.conv_accumulate_reference(x, w, **kw))


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([3, 64]),
    KINDS,
    KINDS,
    st.sampled_from([0, 2**10, 2**24 - 1, 2**24, 2**24 + 1, 2**31 - 1]),
    st.integers(0, 2**32 - 1),
)
def test_conv_accumulate_f32_is_float32_of_the_wrapped_accumulator(
    c: int, kind_x: str, kind_w: str, bias_max: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    x = _operand(rng, (2 * c, 25), kind_x).reshape(2, c, 5, 5)
    w = _operand(rng, (3, c * 9), kind_w).reshape(3, c, 3, 3)
    bias = rng.integers(-bias_max, bias_max + 1, 3).astype(np.int32)
    bias[0] = rng.choice([-bias_max, bias_max])
    kw = {"strides": [1, 1], "pads": [1] * 4, "dilations": [1, 1], "group": 1}
    exact = dp.conv_accumulate_reference(x, w, **kw) + bias.reshape(3, 1, 1).astype(np.int64)
    got = dp.conv_accumulate_f32(x, w, bias, **kw)
    assert got.dtype == np.float32
    assert np.array_equal(got, dp.wrap32(exact).astype(np.float32))
    mult = np.float32(rng.uniform(1e-6, 1e-2))
    y = dp.requantize_f32(got, mult, np.int8, 3, relu=True)
    assert np.array_equal(y, dp.requantize(dp.wrap32(exact), mult, np.int8, 3, relu=True))
