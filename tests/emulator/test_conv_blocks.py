"""The blocked QLinearConv datapath (``runtime_emulator.conv_blocks``): every path gives
the bits of the int64 reference, ``requantize(wrap32(bias + conv))``.

Paths: the blocked float32 GEMM (taken when a bound proves one float32 GEMM exact: from
the weights alone, from ``max |x|``, or from the window sums) and the general path
(chunked float32, float64 or int64 accumulation, then ``requantize_f32``), each with the
blocks run serially or on worker threads. Spies record which path ran.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime_emulator import conv_blocks as cb
from runtime_emulator import datapath as dp
from runtime_emulator import threads


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records "blocked" or "general" for every conv_requantize call."""
    taken: list[str] = []
    blocked, general = cb._blocked, dp.conv_accumulate_f32

    def spy_blocked(*a, **k):
        taken.append("blocked")
        return blocked(*a, **k)

    def spy_general(*a, **k):
        taken.append("general")
        return general(*a, **k)

    monkeypatch.setattr(cb, "_blocked", spy_blocked)
    monkeypatch.setattr(dp, "conv_accumulate_f32", spy_general)
    yield taken


@pytest.fixture(params=[1, 2], ids=["serial", "two-workers"])
def workers(request: pytest.FixtureRequest) -> Iterator[int]:
    threads.set_workers(request.param)
    yield request.param
    threads.set_workers(None)


def _reference(x, w, bias, mult, dtype, zp, relu, **kw) -> np.ndarray:
    acc = dp.conv_accumulate_reference(x, w, **kw)
    if bias is not None:
        acc = acc + bias.reshape((-1,) + (1,) * (acc.ndim - 2)).astype(np.int64)
    m = np.asarray(mult, np.float32)
    m = m.reshape((-1,) + (1,) * (acc.ndim - 2)) if m.size > 1 else m.reshape(())
    return dp.requantize(dp.wrap32(acc), m, dtype, zp, relu=relu)


def _general(x, w, bias, mult, dtype, zp, relu, **kw) -> np.ndarray:
    acc = dp.conv_accumulate_f32(x, w, bias, **kw)
    m = np.asarray(mult, np.float32)
    m = m.reshape((-1,) + (1,) * (acc.ndim - 2)) if m.size > 1 else m.reshape(())
    return dp.requantize_f32(acc, m, dtype, zp, relu)


def _check(x, w, bias, mult, dtype=np.int8, zp=0, relu=False, **kw) -> np.ndarray:
    """conv_requantize, with and without prepared weights, equals the reference and the
    general path bit for bit; returns the result."""
    want = _reference(x, w, bias, mult, dtype, zp, relu, **kw)
    got = cb.conv_requantize(x, w, bias, mult, dtype, zp, relu, **kw)
    prepared = cb.prepare_conv_weights(w)
    again = cb.conv_requantize(x, w, bias, mult, dtype, zp, relu, weights=prepared, **kw)
    assert got.dtype == np.dtype(dtype) and got.shape == want.shape
    assert np.array_equal(got, want)
    assert np.array_equal(again, want)
    assert np.array_equal(_general(x, w, bias, mult, dtype, zp, relu, **kw), want)
    return got


def _geometry(k: int, stride: int, pad: int, dilation: int = 1, nsp: int = 2) -> dict:
    return {
        "strides": [stride] * nsp,
        "pads": [pad] * (2 * nsp),
        "dilations": [dilation] * nsp,
        "group": 1,
    }


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 5),  # batch
    st.sampled_from([1, 3, 16, 70]),  # input channels
    st.sampled_from([1, 2, 3]),  # kernel
    st.sampled_from([1, 2, 3]),  # stride
    st.sampled_from([0, 1, 2]),  # pad
    st.sampled_from([1, 2]),  # dilation
    st.sampled_from(["relu", "int8", "uint8"]),
    st.sampled_from([np.int8, np.uint8]),
    st.booleans(),  # relu
    st.booleans(),  # per-channel multiplier
    st.integers(0, 2**32 - 1),
)
def test_blocked_path_equals_reference(
    n, c, k, stride, pad, dilation, kind, dtype, relu, per_channel, seed
) -> None:
    rng = np.random.default_rng(seed)
    size = 9
    if (size + 2 * pad - (k - 1) * dilation - 1) < 0:
        return
    if kind == "relu":  # post-ReLU int8 activations: mostly 0
        x = rng.integers(0, 128, (n, c, size, size)) * (rng.random((n, c, size, size)) < 0.4)
        x = x.astype(np.int8)
    elif kind == "int8":
        x = rng.integers(-128, 128, (n, c, size, size)).astype(np.int8)
    else:  # uint8 minus a zero point, as the kernel hands it over (int16)
        x = (rng.integers(0, 256, (n, c, size, size)) - rng.integers(0, 256)).astype(np.int16)
    w = rng.integers(-128, 128, (5, c, k, k)).astype(np.int8)
    bias = rng.integers(-(2**20), 2**20, 5).astype(np.int32)
    mult = rng.uniform(1e-5, 1e-2, 5 if per_channel else 1).astype(np.float32)
    zp = int(rng.integers(0, 256)) if dtype == np.uint8 else int(rng.integers(-128, 128))
    _check(x, w, bias, mult, dtype, zp, relu, **_geometry(k, stride, pad, dilation))


def test_weights_bound_takes_the_blocked_path(paths: list[str], workers: int) -> None:
    """ResNet-like layer: sum |w| * 128 <= 2**24 for every output channel, no activation
    pass needed; serial and threaded blocks give the reference's bits."""
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (6, 64, 10, 10)).astype(np.int8)
    w = rng.integers(-40, 41, (32, 64, 3, 3)).astype(np.int8)
    prepared = cb.prepare_conv_weights(w)
    assert prepared.row_abs_sum * 128 <= dp.F32_EXACT
    bias = rng.integers(-5000, 5000, 32).astype(np.int32)
    kw = _geometry(3, 1, 1)
    paths.clear()
    got = cb.conv_requantize(x, w, bias, np.float32(1 / 512), np.int8, 0, True, **kw)
    assert paths == ["blocked"]
    assert np.array_equal(got, _reference(x, w, bias, 1 / 512, np.int8, 0, True, **kw))


def test_activation_bounds_take_the_blocked_path(paths: list[str]) -> None:
    """Weights too large for the weights-only bound: small activations (max |x|), then
    sparse ones (window sums) still prove one float32 GEMM exact."""
    rng = np.random.default_rng(1)
    w = np.full((4, 512, 3, 3), -128, dtype=np.int8)  # sum |w| = 589,824 per channel
    kw = _geometry(3, 1, 1)
    small = rng.integers(-20, 21, (2, 512, 6, 6)).astype(np.int8)  # 589,824 * 20 < 2**24
    sparse = np.zeros((2, 512, 6, 6), dtype=np.int8)
    sparse[:, :40, 2, 3] = 127  # one hot pixel: window sum 40 * 127
    for x in (small, sparse):
        paths.clear()
        _check(x, w, None, np.float32(2**-14), **kw)
        assert paths[0] == "blocked"


@pytest.mark.parametrize("bias_max", [0, 2**24, 2**24 + 1, 2**31 - 1])
def test_accumulators_past_2_24_and_the_int32_wrap(paths: list[str], bias_max: int) -> None:
    """Full-range operands over K = 4608: accumulators up to 75,497,472 (float32 drops low
    bits, as the hardware's int32-to-float32 conversion does); int32 biases wrap. The
    general path runs and gives the reference's bits."""
    rng = np.random.default_rng(2)
    x = np.where(rng.random((2, 512, 3, 3)) < 0.9, -128, 127).astype(np.int8)
    w = np.full((4, 512, 3, 3), -128, dtype=np.int8)
    w[1] = 127
    bias = np.array([bias_max, -bias_max, bias_max // 3, -1], dtype=np.int32)
    kw = _geometry(3, 1, 1)
    acc = dp.conv_accumulate_reference(x, w, **kw)
    assert np.abs(acc).max() > 2**24
    paths.clear()
    # M = 2**-19 and 2**-20 put many results on exact .5 ties.
    for mult in (np.float32(2**-19), np.array([2**-20, 2**-19, 1e-6, 2**-25], np.float32)):
        _check(x, w, bias, mult, np.int8, 0, False, **kw)
    assert paths[0] == "general"
    wrapped = dp.wrap32(acc + bias.reshape(4, 1, 1).astype(np.int64))
    if bias_max == 2**31 - 1:
        assert not np.array_equal(wrapped, acc + bias.reshape(4, 1, 1))


def test_bias_beyond_2_24_takes_the_general_path(paths: list[str]) -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 20, (2, 8, 5, 5)).astype(np.int8)
    w = rng.integers(-128, 128, (3, 8, 3, 3)).astype(np.int8)
    kw = _geometry(3, 1, 1)
    for bias_max, path in ((2**24, "blocked"), (2**24 + 1, "general")):
        bias = np.array([bias_max, -7, 5], dtype=np.int32)
        paths.clear()
        _check(x, w, bias, np.float32(2**-10), **kw)
        assert paths[0] == path


def test_nonfinite_multiplier_and_groups_take_the_general_path(paths: list[str]) -> None:
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, (2, 4, 5, 5)).astype(np.int8)
    w = rng.integers(-128, 128, (4, 4, 3, 3)).astype(np.int8)
    kw = _geometry(3, 1, 1)
    paths.clear()
    mult = np.array([np.inf, 1.0, np.nan, 0.5], np.float32)
    with np.errstate(invalid="ignore"):
        _check(x, w, None, mult, **kw)
    assert paths[0] == "general"
    paths.clear()
    wg = rng.integers(-128, 128, (4, 2, 3, 3)).astype(np.int8)
    got = cb.conv_requantize(x, wg, None, np.float32(0.01), **{**kw, "group": 2})
    assert paths == ["general"]
    want = dp.requantize(
        dp.wrap32(dp.conv_accumulate_reference(x, wg, **{**kw, "group": 2})), np.float32(0.01)
    )
    assert np.array_equal(got, want)


def test_one_and_three_spatial_axes() -> None:
    rng = np.random.default_rng(5)
    x1 = rng.integers(-128, 128, (3, 6, 17)).astype(np.int8)
    w1 = rng.integers(-128, 128, (4, 6, 3)).astype(np.int8)
    _check(x1, w1, None, np.float32(1 / 64), **_geometry(3, 2, 1, nsp=1))
    x3 = rng.integers(-128, 128, (2, 3, 5, 6, 7)).astype(np.int8)
    w3 = rng.integers(-128, 128, (4, 3, 2, 3, 2)).astype(np.int8)
    _check(x3, w3, None, np.float32(1 / 64), relu=True, **_geometry(2, 1, 1, nsp=3))


def test_large_batch_runs_in_several_blocks(monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    monkeypatch.setattr(cb, "MIN_BLOCK_COLUMNS", 256)
    rng = np.random.default_rng(6)
    x = rng.integers(0, 100, (9, 16, 12, 12)).astype(np.int8)
    w = rng.integers(-60, 60, (8, 16, 1, 1)).astype(np.int8)
    assert len(cb._sample_blocks(9, 144, 16)) > 1
    for kw in (_geometry(1, 1, 0), _geometry(1, 2, 0)):
        _check(x, w, None, np.float32(0.003), np.int8, -3, True, **kw)


def _half_away(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v)
    return np.where(np.abs(v - np.trunc(v)) == 0.5, np.trunc(v) + np.sign(v), np.rint(v))


@pytest.mark.parametrize("big_bias", [False, True], ids=["blocked", "general"])
def test_rounding_goes_through_datapath_rne(
    monkeypatch: pytest.MonkeyPatch, paths: list[str], big_bias: bool
) -> None:
    """Substituting ``datapath.rne`` changes both paths' results (ties at M = 1/4; a bias
    beyond 2**24 in the first channel sends the call to the general path)."""
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, (2, 8, 6, 6)).astype(np.int8)
    w = rng.integers(-4, 5, (3, 8, 3, 3)).astype(np.int8)
    bias = np.array([2**24 + 1 if big_bias else 2, -3, 1], np.int32)
    mult = np.float32(0.25)
    kw = _geometry(3, 1, 1)
    right = cb.conv_requantize(x, w, bias, mult, **kw)
    monkeypatch.setattr(dp, "rne", _half_away)
    paths.clear()
    wrong = cb.conv_requantize(x, w, bias, mult, **kw)
    assert paths[0] == ("general" if big_bias else "blocked")
    assert not np.array_equal(right, wrong)
    assert np.array_equal(wrong, _reference(x, w, bias, mult, np.int8, 0, False, **kw))


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([2**10, 2**24, 2**31 - 1]),
    st.sampled_from([0.25, 2**-20, 1e-3, 3.0, 1e30]),
    st.sampled_from([np.int8, np.uint8]),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_requantize_f32_into_equals_requantize_f32(amax, mult, dtype, relu, seed) -> None:
    rng = np.random.default_rng(seed)
    acc = rng.integers(-amax, amax + 1, (3, 50)).astype(np.int64)
    acc[0, :4] = [-amax, amax, 0, 1]
    acc_f = dp.wrap32(acc).astype(np.float32)
    zp = int(rng.integers(*dp.qrange(dtype)))
    m = np.float32(mult)
    want = dp.requantize_f32(acc_f.copy(), m, dtype, zp, relu)
    out = np.empty((50, 3), dtype=dtype).T  # a strided destination, as the blocks write
    dp.requantize_f32_into(acc_f.copy(), m, out, zp, relu)
    assert np.array_equal(out, want)
    per_row = np.array([[m], [np.float32(0.5)], [np.float32(2**-7)]], np.float32)
    want = dp.requantize_f32(acc_f.copy(), per_row, dtype, zp, relu)
    dp.requantize_f32_into(acc_f.copy(), per_row, out, zp, relu)
    assert np.array_equal(out, want)


@pytest.mark.parametrize("shift", [True, False], ids=["row-shift", "im2col"])
@pytest.mark.parametrize(
    "kernel,strides,dilations,pads",
    [
        ((3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
        ((3, 1), (1, 1), (1, 1), (2, 0, 1, 0)),
        ((5, 3), (1, 2), (1, 1), (2, 1, 2, 0)),
        ((2, 2), (1, 1), (2, 1), (0, 1, 1, 0)),
        ((3, 3), (1, 3), (1, 2), (1, 2, 0, 1)),
    ],
)
def test_row_shift_and_im2col_give_the_same_bits(
    monkeypatch: pytest.MonkeyPatch, workers: int, shift, kernel, strides, dilations, pads
) -> None:
    """The same inputs through both block forms (the choice forced), with a layer whose
    bound is exactly 2**24 (sum |w| * 128)."""
    used: list[bool] = []

    def forced(kernel, strides, padded, outs) -> bool:
        ok = shift and kernel[0] > 1 and strides[0] == 1
        used.append(ok)
        return ok

    monkeypatch.setattr(cb, "_row_shift_ok", forced)
    rng = np.random.default_rng(8)
    c = 16
    x = rng.integers(-128, 128, (3, c, 11, 13)).astype(np.int8)
    x[0, :, 5, :] = -128
    w = rng.integers(-128, 128, (6, c, *kernel)).astype(np.int8)
    taps = kernel[0] * kernel[1]
    w[2] = -128 if c * taps * 128 * 128 <= 2**24 else w[2]  # a worst-case channel
    bias = rng.integers(-(2**20), 2**20, 6).astype(np.int32)
    kw = {"strides": list(strides), "pads": list(pads), "dilations": list(dilations), "group": 1}
    _check(x, w, bias, np.float32(2**-9), np.int8, 0, True, **kw)
    assert used and used[0] == (shift and kernel[0] > 1)


def test_row_shift_is_chosen_for_large_maps(paths: list[str]) -> None:
    assert cb._row_shift_ok([3, 3], [1, 1], [58, 58], [56, 56])
    assert not cb._row_shift_ok([3, 3], [1, 1], [16, 16], [14, 14])
    assert not cb._row_shift_ok([3, 3], [2, 2], [58, 58], [28, 28])
    assert not cb._row_shift_ok([1, 1], [1, 1], [56, 56], [56, 56])


@pytest.mark.parametrize("n", [1, 3])
def test_small_batches_split_the_gemm_by_output_channels(workers: int, n: int) -> None:
    """Fewer sample blocks than workers: the GEMM and epilogue run per channel range
    (per-channel multipliers and biases sliced with them)."""
    rng = np.random.default_rng(9)
    x = rng.integers(-128, 128, (n, 8, 30, 30)).astype(np.int8)
    w = rng.integers(-128, 128, (7, 8, 3, 3)).astype(np.int8)
    bias = rng.integers(-(2**16), 2**16, 7).astype(np.int32)
    mult = rng.uniform(1e-5, 1e-3, 7).astype(np.float32)
    assert len(cb._sample_blocks(n, 900, 72)) < 2 or n == 3
    for kw in (_geometry(3, 1, 1), _geometry(3, 2, 0)):
        _check(x, w, bias, mult, np.uint8, 7, True, **kw)


@pytest.fixture
def winograd_runs(monkeypatch: pytest.MonkeyPatch) -> list[bool | None]:
    """Winograd for every channel count; records each block that ran it (True: float64
    output sums; None: its bound checked on the transformed input)."""
    monkeypatch.setattr(cb, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(cb, "WINOGRAD_MAX_TILE_RATIO", 2.0)
    plans: list[bool | None] = []
    real = cb._winograd

    def spy(xb, plan, pads, outs):
        got = real(xb, plan, pads, outs)
        if got is not None:
            plans.append(plan[1])
        return got

    monkeypatch.setattr(cb, "_winograd", spy)
    return plans


@pytest.mark.parametrize(
    "size,pads",
    [((8, 8), (1, 1, 1, 1)), ((7, 9), (1, 1, 1, 1)), ((6, 7), (0, 0, 0, 0)),
     ((9, 6), (0, 1, 2, 0)), ((5, 5), (2, 2, 2, 2))],
)  # fmt: skip
@pytest.mark.parametrize("kind", ["int8", "relu", "uint8"])
def test_winograd_equals_reference(
    winograd_runs: list[bool], workers: int, size, pads, kind: str
) -> None:
    """Winograd F(2x2, 3x3) against the reference and the other block forms (odd and
    even output sizes, asymmetric pads, 8-bit inputs of each kind)."""
    rng = np.random.default_rng(10)
    shape = (3, 6, *size)
    if kind == "int8":
        x = rng.integers(-128, 128, shape).astype(np.int8)
    elif kind == "relu":
        x = (rng.integers(0, 128, shape) * (rng.random(shape) < 0.5)).astype(np.int8)
    else:
        x = (rng.integers(0, 256, shape) - 77).astype(np.int16)
    w = rng.integers(-128, 128, (5, 6, 3, 3)).astype(np.int8)
    bias = rng.integers(-(2**20), 2**20, 5).astype(np.int32)
    mult = rng.uniform(1e-5, 1e-3, 5).astype(np.float32)
    kw = {"strides": [1, 1], "pads": list(pads), "dilations": [1, 1], "group": 1}
    _check(x, w, bias, mult, np.int8, 0, True, **kw)
    assert winograd_runs


def test_winograd_bounds_choose_the_output_sums_and_the_fallback(
    winograd_runs: list[bool | None], paths: list[str]
) -> None:
    """Constant -128 weights: 16 channels keep every GEMM within 2**24 but not the sums
    of nine (float64 output transform); 32 channels exceed 2**24 per GEMM at max |x| =
    128 but not at max |x| = 20; at 128 each block checks its transformed input: random
    data passes, a constant -128 input does not (the other block forms run)."""
    rng = np.random.default_rng(11)
    kw = {"strides": [1, 1], "pads": [1] * 4, "dilations": [1, 1], "group": 1}
    x16 = rng.integers(-128, 128, (2, 16, 6, 6)).astype(np.int8)
    w16 = np.full((3, 16, 3, 3), -128, dtype=np.int8)
    _check(x16, w16, None, np.float32(2**-12), **kw)
    assert winograd_runs and all(winograd_runs)  # float64 sums
    w32 = np.full((3, 32, 3, 3), -128, dtype=np.int8)
    small = rng.integers(-20, 21, (2, 32, 6, 6)).astype(np.int8)
    winograd_runs.clear()
    _check(small, w32, None, np.float32(2**-12), **kw)
    assert winograd_runs and not any(winograd_runs)
    x32 = rng.integers(-128, 128, (2, 32, 6, 6)).astype(np.int8)
    x32[0, :, 2, 2] = -128
    winograd_runs.clear()
    _check(x32, w32, None, np.float32(2**-12), **kw)
    assert winograd_runs and set(winograd_runs) == {None}
    winograd_runs.clear()
    paths.clear()
    _check(np.full((2, 32, 6, 6), -128, np.int8), w32, None, np.float32(2**-12), **kw)
    assert not winograd_runs and paths[0] == "blocked"


def test_winograd_is_chosen_for_3x3_stride_1_with_many_channels_on_even_maps() -> None:
    ok = cb._winograd_ok
    assert ok([3, 3], [1, 1], [1, 1], 128, [28, 28]) and ok([3, 3], [1, 1], [1, 1], 256, [14, 14])
    assert not ok([3, 3], [1, 1], [1, 1], 512, [7, 7])  # 8x8 of tiles for 7x7
    assert not ok([3, 3], [1, 1], [1, 1], 64, [56, 56])
    assert not ok([3, 3], [2, 2], [1, 1], 128, [28, 28])
    assert not ok([3, 3], [1, 1], [2, 2], 128, [28, 28])
    assert not ok([5, 5], [1, 1], [1, 1], 128, [28, 28])
