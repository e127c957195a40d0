"""Scale/zero-point math against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime_emulator import datapath
from systolic_sdk.quantization.params import (
    QuantParams,
    activation_params,
    quant_range,
    quantize_bias,
    quantize_weight,
    weight_params,
)
from systolic_sdk.quantization.types import QuantType

F32 = np.float32
I8, U8, I16, U16 = QuantType.QInt8, QuantType.QUInt8, QuantType.QInt16, QuantType.QUInt16


def f32(v: float) -> np.float32:
    return np.float32(v)


@pytest.mark.parametrize(
    ("rmin", "rmax", "qtype", "sym", "scale", "zp"),
    [
        # uint8 asymmetric: scale 4/255, zp = rne(0 + 1/(4/255)) = rne(63.75) = 64
        (-1.0, 3.0, U8, False, f32(4) / f32(255), 64),
        # int8 asymmetric: zp = rne(-128 + 63.75) = rne(-64.25) = -64
        (-1.0, 3.0, I8, False, f32(4) / f32(255), -64),
        # int8 symmetric: [-127, 127], scale 2*3/254
        (-1.0, 3.0, I8, True, f32(6) / f32(254), 0),
        # uint8 symmetric: scale 6/255, zp = rne(127.5) = 128 (ties to even)
        (-1.0, 3.0, U8, True, f32(6) / f32(255), 128),
        # range widened to include 0
        (0.5, 2.0, U8, False, f32(2) / f32(255), 0),
        (-2.0, -0.5, U8, False, f32(2) / f32(255), 255),
        # 16-bit
        (-1.0, 3.0, I16, False, f32(4) / f32(65535), -16384),  # rne(-16384.25)
        (-2.0, 2.0, U16, True, f32(4) / f32(65535), 32768),  # rne(32767.5)
        (-2.0, 2.0, I16, True, f32(4) / f32(65534), 0),
        # degenerate range
        (0.0, 0.0, I8, False, f32(1), 0),
        (0.0, 0.0, U8, True, f32(1), 0),
    ],
)
def test_activation_params_hand_computed(rmin, rmax, qtype, sym, scale, zp):
    p = activation_params(rmin, rmax, qtype, symmetric=sym)
    assert p.scale.dtype == np.float32
    assert p.scale == scale
    assert p.zero_point.dtype == qtype.np_dtype
    assert int(p.zero_point) == zp
    assert p.axis is None


def test_quant_range_reduce_range_and_symmetric():
    assert quant_range(I8) == (-128, 127)
    assert quant_range(I8, symmetric=True) == (-127, 127)
    assert quant_range(I8, reduce_range=True) == (-64, 64)
    assert quant_range(U8, reduce_range=True) == (0, 127)
    assert quant_range(I16, reduce_range=True) == (-32768, 32767)  # 8-bit only
    assert quant_range(U16, symmetric=True) == (0, 65535)


def test_reduce_range_weights():
    w = np.array([[1.0, -0.5], [0.25, 0.0]], F32)
    p = weight_params(w, I8, symmetric=True, reduce_range=True)
    assert p.scale == f32(2) / f32(128)  # [-64, 64]
    assert int(p.zero_point) == 0
    pu = weight_params(np.array([0.0, 1.27], F32), U8, symmetric=False, reduce_range=True)
    assert pu.scale == f32(1.27) / f32(127)
    assert int(pu.zero_point) == 0


def test_per_channel_weight_params_axis0_and_axis1():
    w = np.array([[1.0, -2.0, 0.5], [0.1, 0.2, -0.4]], F32)
    p = weight_params(w, I8, per_channel=True, axis=0, symmetric=True)
    assert p.axis == 0
    np.testing.assert_array_equal(p.scale, [f32(4) / f32(254), (f32(0.4) * 2) / f32(254)])
    np.testing.assert_array_equal(p.zero_point, [0, 0])
    p1 = weight_params(w, U8, per_channel=True, axis=1, symmetric=False)
    assert p1.axis == 1 and p1.scale.shape == (3,)
    # column 0: [0, 1] -> scale 1/255, zp 0; column 1: [-2, 0.2] -> scale 2.2/255
    assert p1.scale[0] == f32(1) / f32(255)
    assert p1.scale[1] == np.subtract(f32(0.2), f32(-2.0), dtype=F32) / f32(255)
    assert int(p1.zero_point[0]) == 0
    assert int(p1.zero_point[1]) == int(np.rint(f32(2.0) / p1.scale[1]))


def test_weights_round_half_to_even():
    # absmax 127 with symmetric int8 gives scale exactly 1.0: every .5 is a tie
    w = np.array([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5], F32)
    p = weight_params(w, I8, symmetric=True)
    assert p.scale == f32(1.0)
    np.testing.assert_array_equal(quantize_weight(w, p), [127, 0, 2, 2, 0, -2, -2, 4])


def test_per_channel_quantize_weight_uses_axis():
    w = np.array([[127.0, 2.5], [31.75, -0.375]], F32)  # row scales exactly 1 and 0.25
    p = weight_params(w, I8, per_channel=True, axis=0, symmetric=True)
    np.testing.assert_array_equal(p.scale, [1.0, 0.25])
    q = quantize_weight(w, p)
    np.testing.assert_array_equal(q, [[127, 2], [127, -2]])  # 2.5 -> 2, -1.5 -> -2


@settings(max_examples=200, deadline=None)
@given(
    st.floats(-1e4, 0, allow_nan=False, width=32),
    st.floats(0, 1e4, allow_nan=False, width=32),
    st.sampled_from([I8, U8, I16, U16]),
    st.booleans(),
)
def test_zero_is_exactly_representable(rmin, rmax, qtype, sym):
    p = activation_params(rmin, rmax, qtype, symmetric=sym)
    lo, hi = datapath.qrange(qtype.np_dtype)
    assert lo <= int(p.zero_point) <= hi
    q0 = datapath.quantize_linear(np.float32(0), p.scale, p.zero_point, qtype.np_dtype)
    assert int(q0) == int(p.zero_point)
    assert datapath.dequantize_linear(q0, p.scale, p.zero_point) == 0.0
    # the calibrated range is covered up to one step
    for v in (rmin, rmax):
        q = datapath.quantize_linear(np.float32(v), p.scale, p.zero_point, qtype.np_dtype)
        back = datapath.dequantize_linear(q, p.scale, p.zero_point)
        assert abs(float(back) - v) <= float(p.scale) * 1.0001 + 1e-6 * abs(v)


def test_bias_int32_scale_product_and_ties():
    wp = QuantParams(np.float32(0.25), np.int8(0), I8)
    b = np.array([1.0, -0.3125, 0.0625, 0.1875], F32)  # /0.125: 8, -2.5, 0.5, 1.5
    qb = quantize_bias(b, np.float32(0.5), wp)
    assert qb.values.dtype == np.int32
    np.testing.assert_array_equal(qb.values, [8, -2, 0, 2])
    assert qb.scale == f32(0.125)
    assert not qb.adjusted and qb.weight_params is wp


def test_bias_per_channel_scale():
    wp = QuantParams(np.array([0.5, 0.25], F32), np.zeros(2, np.int8), I8, axis=0)
    qb = quantize_bias(np.array([1.0, 1.0], F32), np.float32(0.5), wp)
    np.testing.assert_array_equal(qb.scale, [0.25, 0.125])
    np.testing.assert_array_equal(qb.values, [4, 8])


def test_bias_overflow_guard_enlarges_only_offending_channel():
    s_x = np.float32(1e-6)
    wp = QuantParams(np.array([1e-6, 1e-3], F32), np.zeros(2, np.int8), I8, axis=0)
    b = np.array([1.0, 1.0], F32)  # channel 0: 1 / 1e-12 overflows int32
    qb = quantize_bias(b, s_x, wp, name="b")
    assert qb.adjusted
    new = qb.weight_params.scale
    assert new[1] == wp.scale[1]  # untouched channel
    assert new[0] > wp.scale[0]
    assert np.all(np.abs(qb.values.astype(np.int64)) <= 2**31 - 1)
    # just enough: within a relative 1e-5 of |b| / (s_x * (2**31 - 129))
    assert new[0] <= 1.0 / (1e-6 * (2**31 - 129)) * (1 + 1e-5)
    np.testing.assert_array_equal(qb.scale, np.multiply(s_x, new, dtype=F32))
    # the bias still dequantizes to about its value
    np.testing.assert_allclose(qb.values * qb.scale.astype(np.float64), b, rtol=1e-6)


def test_bias_overflow_guard_per_tensor():
    wp = QuantParams(np.float32(1e-7), np.int8(0), I8)
    qb = quantize_bias(np.array([0.5, -4.0], F32), np.float32(1e-6), wp, name="b")
    assert qb.adjusted
    assert qb.weight_params.scale.shape == ()
    assert abs(int(qb.values[1])) <= 2**31 - 1
    assert qb.values[1] < 0


def test_params_validation():
    with pytest.raises(ValueError):
        QuantParams(np.float32(0.0), np.int8(0), I8)
    with pytest.raises(ValueError):
        QuantParams(np.float32(1.0), np.int64(300), U8)
    with pytest.raises(ValueError):
        activation_params(float("nan"), 1.0, U8)
