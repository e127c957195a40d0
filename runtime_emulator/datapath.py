"""The Systolic datapath's arithmetic: the only place rounding and saturation are written.

Every kernel of the emulator and every quantization step of the SDK (weights, bias,
activations) calls these functions, so the quantizer and the emulator cannot disagree
on a rounding rule. See ``shared/spec/systolic-datapath.md`` for the contract:

- ``rne``: round to nearest, ties to even (C ``rint``; NumPy ``np.rint``).
- every float step is one IEEE-754 single-precision operation (``f32``).
- int32 accumulators wrap modulo 2**32.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32

INT_RANGES: dict[np.dtype, tuple[int, int]] = {
    np.dtype(np.int8): (-128, 127),
    np.dtype(np.uint8): (0, 255),
    np.dtype(np.int16): (-32768, 32767),
    np.dtype(np.uint16): (0, 65535),
    np.dtype(np.int32): (-(2**31), 2**31 - 1),
}


def qrange(dtype: np.dtype | type) -> tuple[int, int]:
    """The representable [min, max] of an integer element type."""
    return INT_RANGES[np.dtype(dtype)]


def rne(x: np.ndarray | float) -> np.ndarray:
    """Round to the nearest integer, ties to even, keeping the float dtype."""
    return np.rint(x)


def saturate(x: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """Clamp integral values (float or int array) to ``dtype``'s range and cast."""
    lo, hi = qrange(dtype)
    return np.clip(x, lo, hi).astype(dtype)


def sat8(x: np.ndarray) -> np.ndarray:
    """Clamp to [-128, 127] and cast to int8."""
    return saturate(x, np.int8)


def wrap32(acc: np.ndarray) -> np.ndarray:
    """Reduce integers modulo 2**32 into int32 (the hardware adder wraps)."""
    return np.asarray(acc, dtype=np.int64).astype(np.uint32).astype(np.int32)


def _broadcast_param(p: np.ndarray | float, ndim: int, axis: int | None) -> np.ndarray:
    """Reshape a per-axis parameter so it broadcasts against an ``ndim`` tensor."""
    arr = np.asarray(p)
    if arr.ndim == 0 or axis is None or ndim == 0:
        return arr
    shape = [1] * ndim
    shape[axis % ndim] = arr.size
    return arr.reshape(shape)


def quantize_linear(
    x: np.ndarray,
    scale: np.ndarray | float,
    zero_point: np.ndarray | int,
    dtype: np.dtype | type,
    axis: int | None = None,
) -> np.ndarray:
    """QuantizeLinear: ``sat(rne(f32(x / s)) + zp)``, a float32 division (not x * 1/s)."""
    x = np.asarray(x, dtype=F32)
    s = _broadcast_param(np.asarray(scale, dtype=F32), x.ndim, axis)
    zp = _broadcast_param(np.asarray(zero_point).astype(np.int64), x.ndim, axis)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = rne(np.divide(x, s, dtype=F32))
    # Saturate in float first so huge values and infinities do not overflow int64.
    lo, hi = qrange(dtype)
    q = np.clip(q, lo - 2.0**31, hi + 2.0**31)
    q = np.nan_to_num(q, nan=0.0).astype(np.int64) + zp
    return saturate(q, dtype)


def dequantize_linear(
    q: np.ndarray,
    scale: np.ndarray | float,
    zero_point: np.ndarray | int = 0,
    axis: int | None = None,
) -> np.ndarray:
    """DequantizeLinear: ``f32(f32(q - zp) * s)``."""
    q = np.asarray(q)
    s = _broadcast_param(np.asarray(scale, dtype=F32), q.ndim, axis)
    zp = _broadcast_param(np.asarray(zero_point).astype(np.int64), q.ndim, axis)
    diff = (q.astype(np.int64) - zp).astype(F32)
    return np.multiply(diff, s, dtype=F32)


def requant_multiplier(
    s_x: np.ndarray | float, s_w: np.ndarray | float, s_y: np.ndarray | float
) -> np.ndarray:
    """The accumulator multiplier ``M = f32(f32(s_x * s_w) / s_y)``: multiply, then divide."""
    prod = np.multiply(np.asarray(s_x, dtype=F32), np.asarray(s_w, dtype=F32), dtype=F32)
    return np.divide(prod, np.asarray(s_y, dtype=F32), dtype=F32)


def scale_accumulator(acc: np.ndarray, multiplier: np.ndarray | float) -> np.ndarray:
    """``f32(f32(acc) * M)``: int32 to float32 (dropping low bits past 2**24), one multiply."""
    acc_f = np.asarray(acc, dtype=np.int32).astype(F32)
    return np.multiply(acc_f, np.asarray(multiplier, dtype=F32), dtype=F32)


def requantize(
    acc: np.ndarray,
    multiplier: np.ndarray | float,
    dtype: np.dtype | type = np.int8,
    zero_point: np.ndarray | int = 0,
    relu: bool = False,
) -> np.ndarray:
    """Accumulator to output: ``sat(rne(f32(f32(acc) * M)) + zp)``, then fused ReLU."""
    v = rne(scale_accumulator(acc, multiplier)).astype(np.int64) + np.asarray(zero_point, np.int64)
    y = saturate(v, dtype)
    if relu:
        y = np.maximum(y, np.asarray(zero_point).astype(y.dtype))
    return y


def quantize_bias(
    bias: np.ndarray, s_x: np.ndarray | float, s_w: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """Bias to int32 with scale ``f32(s_x * s_w)``: ``rne(f32(b / scale))``.

    Returns ``(bias_q, bias_scale)``. Raises ``OverflowError`` when a value does not
    fit in int32 (the caller names the tensor).
    """
    b = np.asarray(bias, dtype=F32)
    bias_scale = np.multiply(np.asarray(s_x, dtype=F32), np.asarray(s_w, dtype=F32), dtype=F32)
    safe = np.where(bias_scale == 0, F32(1), bias_scale).astype(F32)
    with np.errstate(over="ignore"):
        v = rne(np.divide(b, safe, dtype=F32))
    lo, hi = qrange(np.int32)
    if not np.all(np.isfinite(v)) or v.min(initial=0) < lo or v.max(initial=0) > hi:
        raise OverflowError("quantized bias does not fit in int32")
    return v.astype(np.int32), np.broadcast_to(bias_scale, b.shape).astype(F32)
