"""Each datapath rule of the spec, on hand-computed values, and the exact integer GEMM and
convolution against int64 references (hypothesis)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime_emulator import datapath as dp

F32 = np.float32


def f(h: str) -> np.float32:
    """A float32 from its exact hex notation."""
    return F32(float.fromhex(h))


# --- rounding, scaling, saturation -----------------------------------------------------


def test_ties_round_to_even() -> None:
    # M = 0.25: 10 -> 2.5 -> 2, 14 -> 3.5 -> 4, 6 -> 1.5 -> 2, -10 -> -2, -14 -> -4.
    acc = np.array([10, 14, 6, -10, -14, 2], dtype=np.int32)
    y = dp.requantize(acc, F32(0.25))
    assert y.tolist() == [2, 4, 2, -2, -4, 0]
    # Half away from zero would give 3, 4, 2, -3, -4, 1.
    assert dp.rne(np.array([0.5, 1.5, 2.5, -0.5, -2.5])).tolist() == [0, 2, 2, -0, -2]


def test_multiplier_is_multiply_then_divide_in_float32() -> None:
    sx, sw, sy = f("0x1.2e2f2ep-5"), f("0x1.7790c8p-5"), f("0x1.bcb60cp-1")
    m = dp.requant_multiplier(sx, sw, sy)
    assert m == f("0x1.fe661ap-10")
    # Dividing first, or forming it in float64, gives the neighbouring float32 ...
    assert F32(sx * F32(sw / sy)) == f("0x1.fe6618p-10")
    # ... and the two multipliers round accumulator 49563 differently: 97 versus 96.
    assert dp.requantize(np.int32(49563), m) == 97
    assert dp.requantize(np.int32(49563), f("0x1.fe6618p-10")) == 96


def test_accumulator_above_2_24_is_converted_to_float32_first() -> None:
    # acc = 2**24 + 1 has no float32: it becomes 2**24. With M = 2**-25 the exact
    # product is 0.50000003 (rounds to 1) but the hardware computes 0.5 -> tie -> 0.
    acc = np.array([2**24 + 1, -(2**24) - 1, 2**24 + 3], dtype=np.int32)
    m = F32(2.0**-25)
    assert dp.scale_accumulator(acc, m).tolist() == [0.5, -0.5, 0.5000001192092896]
    assert dp.requantize(acc, m).tolist() == [0, 0, 1]
    assert np.rint((2**24 + 1) * 2.0**-25) == 1  # what an exact computation would give


def test_saturation_and_relu_after_rounding() -> None:
    acc = np.array([1000, -1000, 508, 510, -515, -3], dtype=np.int32)
    assert dp.requantize(acc, F32(0.25)).tolist() == [127, -128, 127, 127, -128, -1]
    assert dp.requantize(acc, F32(0.25), relu=True).tolist() == [127, 0, 127, 127, 0, 0]
    # 507 * 0.25 = 126.75 -> 127; 506 * 0.25 = 126.5 -> 126 (tie to even).
    assert dp.requantize(np.array([507, 506], np.int32), F32(0.25)).tolist() == [127, 126]
    # uint8 with a zero point: sat(rne(v) + zp) into [0, 255].
    y = dp.requantize(np.array([-100, 10, 1000], np.int32), F32(0.5), np.uint8, 100)
    assert y.tolist() == [50, 105, 255]


def test_accumulator_wraps_modulo_2_32() -> None:
    assert dp.wrap32(np.array([2**31, -(2**31) - 1, 2**32 + 5])).tolist() == [
        -(2**31),
        2**31 - 1,
        5,
    ]
    # A 1x1 conv: 1 * 1 + bias (2**31 - 1) wraps to -2**31, which scales to -128
    # (without the wrap it would saturate to +127).
    x = np.ones((1, 1, 1, 1), np.int16)
    w = np.ones((1, 1, 1, 1), np.int16)
    kw = dict(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1)
    acc = dp.conv_accumulate_wrap32(x, w, np.array([2**31 - 1], np.int32), **kw)
    assert acc.dtype == np.int32 and acc.ravel().tolist() == [-(2**31)]
    assert dp.requantize(acc, F32(2.0**-24)).ravel().tolist() == [-128]


def test_quantize_linear_divides() -> None:
    x, s = f("-0x1.4b9c6ep+3"), f("0x1.0ca59ep-2")
    # f32(x / s) is exactly -39.5 -> -40; x * f32(1/s) gives -39.499996 -> -39, and so
    # does a float64 division.
    assert dp.quantize_linear(np.array([x]), s, 0, np.int8).tolist() == [-40]
    assert np.rint(F32(x * F32(F32(1) / s))) == -39
    assert np.rint(np.float64(x) / np.float64(s)) == -39
    # Saturation and zero point: sat(rne(x / s) + zp).
    y = dp.quantize_linear(np.array([1e9, -1e9, np.inf, 0.26], F32), F32(0.1), 3, np.uint8)
    assert y.tolist() == [255, 0, 255, 6]


def test_dequantize_linear() -> None:
    y = dp.dequantize_linear(np.array([0, 3, 255], np.uint8), F32(0.1), np.uint8(3))
    assert y.dtype == np.float32
    assert y.tolist() == [F32(-3) * F32(0.1), 0.0, F32(252) * F32(0.1)]


def test_bias_quantization() -> None:
    q, s = dp.quantize_bias(np.array([0.3, -0.25], F32), F32(0.5), F32(0.25))
    assert s.tolist() == [0.125, 0.125]
    assert q.tolist() == [2, -2]  # 2.4 -> 2, -2.0 -> -2
    with pytest.raises(OverflowError):
        dp.quantize_bias(np.array([1e30], F32), F32(1e-3), F32(1e-3))


# --- pooling -----------------------------------------------------------------------------


def test_pool_padding_counts_as_zero_on_the_accelerator() -> None:
    y = np.array([[[[-5, -3], [-2, -7]]]], dtype=np.int8)
    # kernel 2, stride 2, pad 1: windows are {pad, -5}, {pad, -3}, {pad, -2}, {pad, -7}.
    acc = dp.max_pool(y, [2, 2], [2, 2], [1, 1, 1, 1], pad_value=0)
    onnx_rule = dp.max_pool(y, [2, 2], [2, 2], [1, 1, 1, 1])
    assert acc.ravel().tolist() == [0, 0, 0, 0]
    assert onnx_rule.ravel().tolist() == [-5, -3, -2, -7]
    # Without padding, or with non-negative values, the two rules agree.
    z = np.abs(y)
    assert np.array_equal(
        dp.max_pool(z, [2, 2], [2, 2], [1, 1, 1, 1], pad_value=0),
        dp.max_pool(z, [2, 2], [2, 2], [1, 1, 1, 1]),
    )


def test_pool_ceil_mode_and_dilation() -> None:
    x = np.arange(25, dtype=np.int8).reshape(1, 1, 5, 5)
    # ceil((5 - 2) / 2) + 1 = 3 windows; the last starts at 4, inside the input.
    y = dp.max_pool(x, [2, 2], [2, 2], [0, 0, 0, 0], ceil_mode=True)
    assert y[0, 0].tolist() == [[6, 8, 9], [16, 18, 19], [21, 23, 24]]
    yd = dp.max_pool(x, [2, 2], [1, 1], [0, 0, 0, 0], dilations=[2, 2])
    assert yd[0, 0].tolist() == [[12, 13, 14], [17, 18, 19], [22, 23, 24]]


# --- QLinearAdd ---------------------------------------------------------------------------


def test_qlinear_add_systolic_rescales_and_saturates_each_input() -> None:
    # a: 100 * f32(0.2 / 0.1) = 200 -> 127; b: -50 * 0.5 = -25; 127 - 25 = 102.
    y = dp.qlinear_add_systolic(
        np.array([100], np.int8), F32(0.2), np.array([-50], np.int8), F32(0.05), F32(0.1)
    )
    assert y.tolist() == [102]
    # onnxruntime's rule adds first: 200 - 25 = 175 -> 127.
    ort = dp.qlinear_add_ort(
        np.array([100], np.int8), 0.2, 0, np.array([-50], np.int8), 0.05, 0, 0.1, 0, np.int8
    )
    assert ort.tolist() == [127]
    # Ties on each input: 3 * 0.5 = 1.5 -> 2, 5 * 0.5 = 2.5 -> 2; relu clamps at 0.
    a = np.array([3, -3, -100], np.int8)
    b = np.array([5, -5, 10], np.int8)
    h = F32(0.5)
    assert dp.qlinear_add_systolic(a, h, b, h, F32(1)).tolist() == [4, -4, -45]
    assert dp.qlinear_add_systolic(a, h, b, h, F32(1), relu=True).tolist() == [4, 0, 0]


# --- float32 FMA ------------------------------------------------------------------------------


def _round_f32(v: Fraction) -> np.float32:
    """Correctly rounded (ties to even) float32 of an exact rational."""
    c = F32(float(v))
    cands = [np.nextafter(c, F32(-np.inf)), c, np.nextafter(c, F32(np.inf))]
    return min(cands, key=lambda z: (abs(Fraction(float(z)) - v), int(z.view(np.uint32)) & 1))


finite32 = st.floats(
    width=32, allow_nan=False, allow_infinity=False, min_value=-(2.0**50), max_value=2.0**50
)


@settings(max_examples=300, deadline=None)
@given(finite32, finite32, finite32)
def test_fma_f32_rounds_once(a: float, b: float, c: float) -> None:
    got = dp.fma_f32(np.array([a], F32), np.array([b], F32), np.array([c], F32))[0]
    want = _round_f32(Fraction(a) * Fraction(b) + Fraction(c))
    assert got == want or (got == 0 and want == 0)


# --- exact integer GEMM and convolution ----------------------------------------------------------


def test_gemm_plan_bounds() -> None:
    assert dp.gemm_plan(1024, 128, 128) == (np.dtype(np.float32), 1024)  # 2**24 exactly
    assert dp.gemm_plan(1025, 128, 128) == (np.dtype(np.float32), 1024)  # two chunks
    assert dp.gemm_plan(4096, 128, 128) == (np.dtype(np.float32), 1024)  # four chunks
    assert dp.gemm_plan(16 * 1024 + 1, 128, 128)[0] == np.float64
    assert dp.gemm_plan(2**24, 1, 1) == (np.dtype(np.float32), 2**24)
    assert dp.gemm_plan(2**40, 255, 255)[0] == np.int64


@st.composite
def int_operands(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    m, n = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    k = draw(st.sampled_from([1, 3, 64, 1024, 1025, 2049, 4096]))
    lo, hi = draw(st.sampled_from([(-128, 127), (-255, 255), (0, 127), (-32768, 32767)]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):  # extremes: the largest accumulators
        a = rng.choice([lo, hi], (m, k))
        b = rng.choice([lo, hi], (k, n))
    else:
        a = rng.integers(lo, hi + 1, (m, k))
        b = rng.integers(lo, hi + 1, (k, n))
    return a.astype(np.int32), b.astype(np.int32)


@settings(max_examples=60, deadline=None)
@given(int_operands())
def test_int_matmul_equals_int64_reference(ops: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = ops
    want = dp.int_matmul_reference(a, b)
    assert np.array_equal(dp.int_matmul(a, b), want)
    assert np.array_equal(dp.int_matmul_wrap32(a, b), dp.wrap32(want))


@st.composite
def conv_operands(draw: st.DrawFn):
    # One case in four has more taps than one exact float32 chunk holds (17 x 16 taps of
    # products up to 255 * 255), so float32 alone would lose bits.
    large_kernel = draw(st.integers(0, 3)) == 0
    nsp = 2 if large_kernel else draw(st.sampled_from([1, 2, 2, 3]))
    group = 2 if large_kernel else draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = large_kernel or (draw(st.booleans()) and group > 1)
    cg = 1 if depthwise else draw(st.integers(1, 4))
    mg = draw(st.integers(1, 3))
    if large_kernel:
        kernel, dil = [17, draw(st.integers(16, 17))], [1, 1]
    else:
        kernel = [draw(st.integers(1, 3)) for _ in range(nsp)]
        dil = [draw(st.integers(1, 2)) for _ in range(nsp)]
    strides = [draw(st.integers(1, 3)) for _ in range(nsp)]
    pads = [0 if large_kernel else draw(st.integers(0, 2)) for _ in range(2 * nsp)]
    size = [
        draw(st.integers((k - 1) * d + 1, max(7, k + 1))) for k, d in zip(kernel, dil, strict=True)
    ]
    big = large_kernel or draw(st.booleans())
    extreme = large_kernel or draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lo, hi = (-255, 255) if big else (-128, 127)
    n = draw(st.integers(1, 2))
    xs, ws = (n, cg * group, *size), (mg * group, cg, *kernel)
    if extreme:  # mostly same-sign products: the largest partial sums
        x = np.full(xs, hi, np.int16)
        w = np.full(ws, hi, np.int16)
        x.flat[rng.integers(0, x.size, draw(st.integers(0, x.size // 20)))] = lo
    else:
        x = rng.integers(lo, hi + 1, xs).astype(np.int16)
        w = rng.integers(lo, hi + 1, ws).astype(np.int16)
    bias = rng.integers(-(2**31), 2**31, mg * group).astype(np.int32)
    return x, w, bias, dict(strides=strides, pads=pads, dilations=dil, group=group)


@settings(max_examples=80, deadline=None)
@given(conv_operands())
def test_conv_accumulate_equals_int64_reference(ops) -> None:
    x, w, bias, kw = ops
    want = dp.conv_accumulate_reference(x, w, **kw)
    assert np.array_equal(dp.conv_accumulate(x, w, **kw), want)
    with_bias = want + bias.astype(np.int64).reshape((-1,) + (1,) * (want.ndim - 2))
    assert np.array_equal(dp.conv_accumulate_wrap32(x, w, bias, **kw), dp.wrap32(with_bias))


def test_conv_accumulate_large_k_uses_exact_chunks() -> None:
    rng = np.random.default_rng(0)
    x = np.full((1, 512, 3, 3), -128, np.int16)  # every product is +16384
    w = np.full((2, 512, 3, 3), -128, np.int16)
    x[0, rng.integers(0, 512, 50)] = 127
    kw = dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1)
    want = dp.conv_accumulate_reference(x, w, **kw)
    assert want.max() > 2**25  # K = 4608: far beyond float32's exact range
    assert np.array_equal(dp.conv_accumulate(x, w, **kw), want)


def test_depthwise_with_more_taps_than_a_float32_chunk_is_exact() -> None:
    # 17 x 17 = 289 taps of products up to 255 * 255: beyond one exact float32 chunk
    # (2**24 // 65025 = 258 products).
    rng = np.random.default_rng(0)
    x = rng.choice([-255, 255], (1, 2, 17, 17)).astype(np.int16)
    w = rng.choice([-255, 255], (2, 1, 17, 17)).astype(np.int16)
    x[0, 0] = 255
    w[0, 0] = 255
    x[0, 0, 0, :3] = -255
    kw = dict(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=2)
    want = dp.conv_accumulate_reference(x, w, **kw)
    assert abs(int(want[0, 0, 0, 0])) > 2**24
    assert np.array_equal(dp.conv_accumulate(x, w, **kw), want)


def test_large_batches_run_in_slices_with_identical_results(monkeypatch) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(-255, 256, (5, 3, 9, 9)).astype(np.int16)
    x[3] = 255  # one slice with larger bounds than the others
    w = rng.integers(-255, 256, (4, 3, 3, 3)).astype(np.int16)
    bias = np.full(4, 2**31 - 1, np.int32)
    kw = dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1)
    want = dp.conv_accumulate_reference(x, w, **kw)
    monkeypatch.setattr(dp, "_COLS_LIMIT", 3 * 9 * 81 * 2)  # two samples per slice
    assert np.array_equal(dp.conv_accumulate(x, w, **kw), want)
    got = dp.conv_accumulate_wrap32(x, w, bias, **kw)
    assert np.array_equal(got, dp.wrap32(want + 2**31 - 1))
