"""The Systolic datapath's arithmetic: the only place rounding and saturation are written.

Every kernel of the emulator and every quantization step of the SDK (weights, bias,
activations) calls these functions, so the quantizer and the emulator cannot disagree
on a rounding rule. See ``shared/spec/systolic-datapath.md`` for the contract:

- ``rne``: round to nearest, ties to even (C ``rint``; NumPy ``np.rint``).
- every float step is one IEEE-754 single-precision operation (``f32``).
- int32 accumulators wrap modulo 2**32.

It also holds the exact integer GEMM and convolution accumulators (float BLAS where the
result is provably exact, int64 otherwise), max pooling with both padding rules, and the
two meanings of com.microsoft QLinearAdd (the accelerator's and onnxruntime's).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

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


def clamp(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Clamp integral values to [lo, hi] (a narrowed range, e.g. 7-bit or symmetric)."""
    return np.clip(x, lo, hi)


def sat8(x: np.ndarray) -> np.ndarray:
    """Clamp to [-128, 127] and cast to int8."""
    return saturate(x, np.int8)


def wrap32(acc: np.ndarray) -> np.ndarray:
    """Reduce integers modulo 2**32 into int32 (the hardware adder wraps)."""
    return np.asarray(acc, dtype=np.int64).astype(np.uint32).astype(np.int32)


def _broadcast_param(
    p: np.ndarray | float,
    ndim: int,
    axis: int | None,
    shape: tuple[int, ...] | None = None,
    block_size: int = 0,
) -> np.ndarray:
    """Reshape a per-axis (or blocked) parameter so it broadcasts against an ``ndim`` tensor.

    A one-element parameter is per tensor. With ``block_size`` > 0 the parameter has the
    tensor's shape except along ``axis``, where each entry covers ``block_size`` elements.
    """
    arr = np.asarray(p)
    if arr.ndim == 0 or axis is None or ndim == 0:
        return arr
    if arr.size == 1 and not block_size:
        return arr.reshape(())
    if block_size:
        assert shape is not None
        ax = axis % ndim
        rep = np.repeat(arr, block_size, axis=ax)
        return np.take(rep, np.arange(shape[ax]), axis=ax)
    shape1 = [1] * ndim
    shape1[axis % ndim] = arr.size
    return arr.reshape(shape1)


def quantize_linear(
    x: np.ndarray,
    scale: np.ndarray | float,
    zero_point: np.ndarray | int,
    dtype: np.dtype | type,
    axis: int | None = None,
    *,
    block_size: int = 0,
    compute_dtype: np.dtype | type = F32,
) -> np.ndarray:
    """QuantizeLinear: ``sat(rne(f32(x / s)) + zp)``, a float32 division (not x * 1/s).

    ``compute_dtype`` is the precision of the one division (float32 on the hardware; ONNX
    lets a float16 scale make it a float16 division). ``block_size`` > 0 is blocked
    quantization along ``axis``.
    """
    cd = np.dtype(compute_dtype)
    x = np.asarray(x).astype(cd, copy=False)
    small = max(abs(v) for v in qrange(dtype)) <= 2**16  # float32-exact bounds
    if cd == F32 and small and np.size(scale) == 1 and np.size(zero_point) == 1 and not block_size:
        return _quantize_linear_per_tensor(x, scale, zero_point, dtype)
    s = _broadcast_param(np.asarray(scale).astype(cd), x.ndim, axis, x.shape, block_size)
    zp = np.asarray(zero_point).astype(np.int64)
    zp = _broadcast_param(zp, x.ndim, axis, x.shape, block_size)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = rne(np.divide(x, s, dtype=cd)).astype(np.float64)
    # Saturate in float first so huge values and infinities do not overflow int64; NaN
    # saturates to the type's minimum (as onnxruntime's MINPS/MAXPS clamp and onnx's
    # reference do).
    lo, hi = qrange(dtype)
    q = np.clip(q, lo - 2.0**31, hi + 2.0**31)
    q = np.nan_to_num(q, nan=lo - 2.0**31).astype(np.int64) + zp
    return saturate(q, dtype)


def _quantize_linear_per_tensor(
    x: np.ndarray, scale: np.ndarray | float, zero_point: np.ndarray | int, dtype: np.dtype | type
) -> np.ndarray:
    """:func:`quantize_linear` of float32 ``x`` with one scale and zero point, in float32
    and in place: ``r = rne(f32(x / s))``, then ``clip(r, lo - zp, hi - zp) + zp`` (equal
    to ``sat(r + zp)`` for integers; the clip goes first so the add is exact), with
    ``fmax``/``fmin`` sending NaN to the type's minimum, as the general form does."""
    lo, hi = qrange(dtype)
    zp = int(np.asarray(zero_point).reshape(()))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = np.divide(x, np.asarray(scale).astype(F32).reshape(()), dtype=F32)
    q = np.asarray(rne(q), dtype=F32)
    np.fmax(q, F32(lo - zp), out=q)
    np.fmin(q, F32(hi - zp), out=q)
    if zp:
        np.add(q, F32(zp), out=q)
    return q.astype(dtype)


def dequantize_linear(
    q: np.ndarray,
    scale: np.ndarray | float,
    zero_point: np.ndarray | int = 0,
    axis: int | None = None,
    *,
    block_size: int = 0,
) -> np.ndarray:
    """DequantizeLinear: ``f32(f32(q - zp) * s)`` (a float16 scale is widened exactly)."""
    q = np.asarray(q)
    s = _broadcast_param(np.asarray(scale).astype(F32), q.ndim, axis, q.shape, block_size)
    zp = np.asarray(zero_point).astype(np.int64)
    zp = _broadcast_param(zp, q.ndim, axis, q.shape, block_size)
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
    with np.errstate(over="ignore"):
        return np.multiply(acc_f, np.asarray(multiplier, dtype=F32), dtype=F32)


def requantize(
    acc: np.ndarray,
    multiplier: np.ndarray | float,
    dtype: np.dtype | type = np.int8,
    zero_point: np.ndarray | int = 0,
    relu: bool = False,
) -> np.ndarray:
    """Accumulator to output: ``sat(rne(f32(f32(acc) * M)) + zp)``, then fused ReLU.

    (Adding the zero point to the rounded float is exact below 2**24; above, the value
    saturates either way.)
    """
    acc_f = np.asarray(acc, dtype=np.int32).astype(F32)
    return requantize_f32(acc_f, multiplier, dtype, zero_point, relu)


def requantize_f32(
    acc_f: np.ndarray,
    multiplier: np.ndarray | float,
    dtype: np.dtype | type = np.int8,
    zero_point: np.ndarray | int = 0,
    relu: bool = False,
) -> np.ndarray:
    """:func:`requantize` from the accumulator already converted to float32, ``f32(acc)``
    (as :func:`conv_accumulate_f32` returns it). ``acc_f`` is overwritten."""
    lo, hi = qrange(dtype)
    m = np.asarray(multiplier, dtype=F32)
    zp = np.asarray(zero_point)
    acc_f = np.asarray(acc_f, dtype=F32)
    in_place = np.broadcast_shapes(acc_f.shape, m.shape) == acc_f.shape
    with np.errstate(over="ignore"):
        v = np.multiply(acc_f, m, out=acc_f if in_place else None, dtype=F32)
    if not np.all(np.isfinite(m)):
        # NaN or infinite multipliers: saturate in float, map NaN to 0 before the cast.
        with np.errstate(invalid="ignore"):
            v = np.nan_to_num(np.clip(rne(v), lo - 2.0**32, hi + 2.0**32), nan=0.0)
        y = saturate(v.astype(np.int64) + zp.astype(np.int64), dtype)
    else:
        v = np.asarray(rne(v), dtype=F32)
        if np.any(zp != 0):
            v = np.add(v, zp.astype(F32), dtype=F32)
        np.clip(v, lo, hi, out=v)
        y = v.astype(dtype)
    if relu:
        y = np.maximum(y, zp.astype(y.dtype))
    return y


def requantize_f32_into(
    acc_f: np.ndarray,
    multiplier: np.ndarray | float,
    out: np.ndarray,
    zero_point: int = 0,
    relu: bool = False,
) -> None:
    """:func:`requantize_f32` written into ``out`` (an integer array or view with
    ``acc_f``'s shape, whose dtype is the output type), for a finite ``multiplier`` and a
    per-tensor zero point. ``acc_f`` is overwritten.

    Same steps: ``f32(acc_f * M)``, :func:`rne`, ``+ zp`` (exact: the rounded value is
    clipped first when large), saturation, and the fused ReLU as a lower bound of the
    clip (``max(sat(r + zp), zp) == clip(r + zp, max(lo, zp), hi)`` for integers ``r``).
    """
    lo, hi = qrange(out.dtype)
    zp = int(zero_point)
    with np.errstate(over="ignore"):
        np.multiply(acc_f, np.asarray(multiplier, dtype=F32), out=acc_f, dtype=F32)
    v = np.asarray(rne(acc_f), dtype=F32)
    if zp:
        # |v| may exceed 2**24 where adding zp would round: clip it first (either way the
        # result saturates), then add exactly.
        np.clip(v, lo - zp - 1, hi - zp + 1, out=v)
        np.add(v, F32(zp), out=v)
    np.clip(v, max(lo, zp) if relu else lo, hi, out=v)
    np.copyto(out, v, casting="unsafe")


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


# --- float32 fused multiply-add -------------------------------------------------------


def fma_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``fma(a, b, c)`` in float32: ``a * b + c`` computed exactly, rounded once (RNE).

    The product of two float32 values is exact in float64; the sum is rounded to odd in
    float64 (exact error by TwoSum, then the last bit forced to 1 when inexact), and a
    round-to-odd result with 53 bits rounds correctly to float32's 24 bits.
    """
    p = np.multiply(np.asarray(a, F32), np.asarray(b, F32), dtype=np.float64)
    c64 = np.asarray(c, F32).astype(np.float64)
    p, c64 = np.broadcast_arrays(p, c64)
    with np.errstate(invalid="ignore", over="ignore"):
        s = p + c64
        bb = s - p
        err = (p - (s - bb)) + (c64 - bb)
        even = (s.view(np.int64) & 1) == 0
        fix = (err != 0) & even & np.isfinite(s)
        s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(F32)


# --- exact integer GEMM -----------------------------------------------------------------

#: Integers up to 2**24 (float32) and 2**53 (float64) are exact, and so is every partial
#: sum of integer products whose absolute values add up to at most that bound.
F32_EXACT = 2**24
F64_EXACT = 2**53
#: float32 chunks per GEMM; their exact results (each <= 2**24) are summed in int32.
MAX_F32_CHUNKS = 16
#: Output elements per cache block of the depthwise tap loop.
_DW_BLOCK = 1 << 16
#: Largest im2col buffer (elements) built at once; larger batches run in slices.
_COLS_LIMIT = 1 << 25


_SCRATCH = threading.local()


def _scratch(slot: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """An uninitialized work array reused across calls (one buffer per slot and thread).

    Fresh allocations of tens of MB are page-faulted in on every call; reusing the memory
    of the im2col matrix and the GEMM result avoids that. Never return one to a caller.
    """
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dt.itemsize
    bufs: dict[str, np.ndarray] = _SCRATCH.__dict__.setdefault("bufs", {})
    buf = bufs.get(slot)
    if buf is None or buf.nbytes < nbytes:
        buf = bufs[slot] = np.empty(nbytes, dtype=np.uint8)
    return buf[:nbytes].view(dt).reshape(shape)


def _absmax(a: np.ndarray) -> int:
    if a.size == 0:
        return 0
    return max(abs(int(a.min())), abs(int(a.max())))


def gemm_plan(k: int, a_absmax: int, b_absmax: int) -> tuple[np.dtype, int]:
    """How to sum ``k`` products of integers bounded by the two maxima exactly.

    Returns ``(dtype, chunk)``: the compute dtype (float32, float64 or int64) and the
    number of products per chunk, such that every partial sum any BLAS summation order
    can form, ``<= chunk * a_absmax * b_absmax``, is an exactly representable integer.
    float32 BLAS (about twice as fast as float64) is used when at most
    :data:`MAX_F32_CHUNKS` chunks cover ``k`` (their int32 sum cannot overflow), else
    float64 when one chunk does, else int64 (always exact).
    """
    p = max(a_absmax * b_absmax, 1)
    k = max(k, 1)
    chunk32 = F32_EXACT // p
    if chunk32 >= 1 and -(-k // chunk32) <= MAX_F32_CHUNKS:
        return np.dtype(np.float32), min(chunk32, k)
    if k * p <= F64_EXACT:
        return np.dtype(np.float64), k
    return np.dtype(np.int64), k


def abs_sum_plan(
    k: int, a_absmax: int, b_absmax: int, a_row_abs_sum: int, b_col_abs_sum: int
) -> tuple[np.dtype, int]:
    """:func:`gemm_plan` with a tighter bound from the operands' absolute sums.

    Every partial sum of row ``i`` of ``a`` times column ``j`` of ``b``, in any order and
    with or without fused multiply-adds, is at most ``sum_k |a_ik| * |b_kj|``, which is at
    most ``a_row_abs_sum * b_absmax`` and at most ``a_absmax * b_col_abs_sum`` (the
    largest absolute row sum of ``a`` and column sum of ``b``, or any upper bounds of
    them). When the smaller of the two is at most 2**24, one float32 GEMM over the whole
    of ``k`` is exact; otherwise this is :func:`gemm_plan`.
    """
    bound = min(a_row_abs_sum * b_absmax, a_absmax * b_col_abs_sum)
    if bound <= F32_EXACT:
        return np.dtype(np.float32), max(k, 1)
    return gemm_plan(k, a_absmax, b_absmax)


def _abs_sum_max(a: np.ndarray, axis: int) -> int:
    """The largest sum of absolute values along ``axis`` of an integer array (exact)."""
    if a.size == 0:
        return 0
    return int(np.abs(a.astype(np.int64, copy=False)).sum(axis=axis).max())


def _matmul_plan(a: np.ndarray, b: np.ndarray) -> tuple[np.dtype, int]:
    a_max, b_max = _absmax(a), _absmax(b)
    if a.size == 0 or b.size == 0:
        return gemm_plan(a.shape[-1], a_max, b_max)
    return abs_sum_plan(a.shape[-1], a_max, b_max, _abs_sum_max(a, -1), _abs_sum_max(b, -2))


def int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact ``a @ b`` of integer arrays (NumPy matmul broadcasting) as int64.

    Uses float BLAS with K chunked so every partial sum is exact (see :func:`gemm_plan`);
    the chunks are added as integers. Identical to :func:`int_matmul_reference`.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    dtype, chunk = _matmul_plan(a, b)
    acc = _chunked_matmul(a.astype(dtype, copy=False), b.astype(dtype, copy=False), chunk)
    return acc.astype(np.int64, copy=False)


def _chunked_matmul(a: np.ndarray, b: np.ndarray, chunk: int) -> np.ndarray:
    """``a @ b`` with K split in chunks of exact partial sums.

    float32 results (at most 16 chunks of at most 2**24 each) come back as int32, which
    cannot overflow; float64 and int64 results as int64.
    """
    k = a.shape[-1]
    small = a.dtype == np.float32
    out_t = np.int32 if small else np.int64
    if k <= chunk:
        return np.matmul(a, b).astype(out_t)
    out = None
    for k0 in range(0, k, chunk):
        part = np.matmul(a[..., k0 : k0 + chunk], b[..., k0 : k0 + chunk, :]).astype(out_t)
        out = part if out is None else out + part
    return out


def int_matmul_wrap32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact ``a @ b`` reduced modulo 2**32 into int32 (the hardware accumulator)."""
    a = np.asarray(a)
    b = np.asarray(b)
    dtype, chunk = _matmul_plan(a, b)
    acc = _chunked_matmul(a.astype(dtype, copy=False), b.astype(dtype, copy=False), chunk)
    return acc if acc.dtype == np.int32 else wrap32(acc)


@dataclass(frozen=True)
class MatmulOperand:
    """A constant right-hand GEMM operand ``b`` (..., K, N) of 8/16-bit integers, prepared
    once: ``f32`` its float32 copy (exact), ``absmax`` ``max |b|``, ``col_abs_sum`` the
    largest ``sum_k |b_kj|`` (exact integers)."""

    source: np.ndarray
    f32: np.ndarray
    absmax: int
    col_abs_sum: int


def prepare_matmul_operand(b: np.ndarray) -> MatmulOperand:
    """:class:`MatmulOperand` of integer ``b``; ``b`` is kept by reference."""
    b = np.asarray(b)
    col = _abs_sum_max(b, -2) if b.ndim >= 2 and b.size else 0
    return MatmulOperand(b, b.astype(F32), _absmax(b), col)


def int_matmul_wrap32_prepared(a: np.ndarray, b: MatmulOperand) -> np.ndarray:
    """:func:`int_matmul_wrap32` of ``a`` and a prepared ``b``: identical results, without
    the passes over ``b`` (conversion, bound) on every call."""
    a = np.asarray(a)
    if a.size == 0 or b.source.size == 0:
        return int_matmul_wrap32(a, b.source)
    dtype, chunk = abs_sum_plan(
        a.shape[-1], _absmax(a), b.absmax, _abs_sum_max(a, -1), b.col_abs_sum
    )
    if dtype != np.float32:
        return int_matmul_wrap32(a, b.source)
    return _chunked_matmul(a.astype(F32), b.f32, chunk)


def int_matmul_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` in int64 arithmetic only: the slow, obviously exact reference."""
    return np.matmul(np.asarray(a, np.int64), np.asarray(b, np.int64))


# --- convolution ------------------------------------------------------------------------


def conv_output_size(size: int, kernel: int, stride: int, dilation: int, pads: int) -> int:
    """Output length of one spatial axis: ``(size + pads - ((k-1)*d+1)) // stride + 1``."""
    return (size + pads - ((kernel - 1) * dilation + 1)) // stride + 1


def resolve_pads(
    auto_pad: str,
    in_shape: tuple[int, ...] | list[int],
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    pads: list[int] | None,
    *,
    allow_negative: bool = False,
) -> list[int]:
    """Explicit pads ``[b1, b2, ..., e1, e2, ...]`` for a conv or pool (ONNX auto_pad rules).

    SAME_*: ``out = ceil(in / stride)``, ``total = (out - 1) * stride + (k - 1) * d + 1 - in``
    split as C integer division does (UPPER: ``total / 2`` before, the rest after; LOWER:
    ``(total + 1) / 2`` before). Convs clamp ``total`` at 0; pools keep a negative total
    (a window smaller than the stride crops the input, as onnxruntime and onnx.reference
    do) when ``allow_negative``.
    """
    n = len(in_shape)
    if auto_pad in ("", "NOTSET"):
        return list(pads) if pads else [0] * (2 * n)
    if auto_pad == "VALID":
        return [0] * (2 * n)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"unknown auto_pad {auto_pad!r}")
    begin, end = [0] * n, [0] * n
    for i in range(n):
        out = -(-in_shape[i] // strides[i])
        total = (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_shape[i]
        if not allow_negative:
            total = max(0, total)
        head = int(total / 2) if auto_pad == "SAME_UPPER" else int((total + 1) / 2)
        begin[i], end[i] = head, total - head
    return begin + end


def _pad_spatial(x: np.ndarray, pads: list[int], value: float | int) -> np.ndarray:
    n = x.ndim - 2
    if not any(pads):
        return x
    width = [(0, 0), (0, 0)] + [(pads[i], pads[i + n]) for i in range(n)]
    return np.pad(x, width, mode="constant", constant_values=value)


def _windows(
    xp: np.ndarray, kernel: list[int], strides: list[int], dilations: list[int]
) -> np.ndarray:
    """Strided view ``(N, C, *out, *kernel)`` of a padded NC... tensor (no copy)."""
    n = xp.ndim - 2
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    v = np.lib.stride_tricks.sliding_window_view(xp, eff, axis=tuple(range(2, 2 + n)))
    sl = (slice(None), slice(None))
    sl += tuple(slice(None, None, s) for s in strides)
    sl += tuple(slice(None, None, d) for d in dilations)
    return v[sl]


def _conv_plan(
    x: np.ndarray,
    w: np.ndarray,
    strides: list[int],
    pads: list[int],
    dilations: list[int],
    outs: list[int],
) -> tuple[np.dtype, int]:
    """The exact-GEMM plan of a convolution (see :func:`abs_sum_plan`).

    Row sums: ``sum |w|`` per output channel. Column sums: for every output pixel, the
    sum over its window of the per-pixel sums of ``|x|`` over all input channels (an upper
    bound of the column sum of the im2col matrix; padding adds 0).
    """
    k = int(np.prod(w.shape[1:])) if w.ndim > 1 else 1
    x_max, w_max = _absmax(x), _absmax(w)
    if x.size == 0 or w.size == 0 or max(x_max, w_max) > 2**16:
        return gemm_plan(k, x_max, w_max)
    win = np.add.reduce(np.abs(x, dtype=np.int32), axis=1, dtype=np.int64)  # (N, *sizes)
    win = _pad_spatial(win[:, None], pads, 0)[:, 0]
    # Sum over each window's whole span (a superset of its taps when dilated), one axis
    # at a time, from prefix sums.
    for i, o in enumerate(outs):
        ax = 1 + i
        span = (w.shape[2 + i] - 1) * dilations[i] + 1
        shape = list(win.shape)
        shape[ax] += 1
        cs = np.zeros(shape, dtype=np.int64)
        np.cumsum(win, axis=ax, out=cs[(slice(None),) * ax + (slice(1, None),)])
        starts = np.arange(o) * strides[i]
        win = np.take(cs, starts + span, axis=ax) - np.take(cs, starts, axis=ax)
    col = int(win.max())
    if w_max * col <= F32_EXACT:  # the row sums are not needed
        return abs_sum_plan(k, w_max, x_max, w_max * k, col)
    w_row = int(np.abs(w.reshape(w.shape[0], -1), dtype=np.int32).sum(axis=1).max())
    return abs_sum_plan(k, w_max, x_max, w_row, col)


def _conv_core(
    x: np.ndarray,
    w: np.ndarray,
    strides: list[int],
    pads: list[int],
    dilations: list[int],
    group: int,
) -> np.ndarray:
    """Exact convolution sums as float32 (integers of magnitude at most 2**24, from one
    float32 GEMM), int32 (bounded, from float32 BLAS chunks) or int64."""
    n_batch, c = x.shape[:2]
    m = w.shape[0]
    kernel = list(w.shape[2:])
    nsp = len(kernel)
    cg, mg = c // group, m // group
    taps = int(np.prod(kernel)) if kernel else 1
    sizes = list(x.shape[2:])
    outs = [
        conv_output_size(sizes[i], kernel[i], strides[i], dilations[i], pads[i] + pads[i + nsp])
        for i in range(nsp)
    ]
    npix = int(np.prod(outs)) if outs else 1
    cols_size = c * taps * npix * n_batch
    if n_batch > 1 and cols_size > _COLS_LIMIT:
        # Bound the im2col buffer: run the batch in slices (results are identical).
        step = max(1, _COLS_LIMIT // (c * taps * npix))
        parts = [
            _conv_core(x[i : i + step], w, strides, pads, dilations, group)
            for i in range(0, n_batch, step)
        ]
        if len({p.dtype for p in parts}) > 1:  # slices may differ in their exact plan
            parts = [p.astype(np.int64) for p in parts]
        return np.concatenate(parts)
    dtype, chunk = _conv_plan(x, w, strides, pads, dilations, outs)
    tap_list = list(np.ndindex(*kernel))

    def tap_slices(t: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(
            slice(t[i] * dilations[i], t[i] * dilations[i] + strides[i] * (outs[i] - 1) + 1,
                  strides[i])
            for i in range(nsp)
        )  # fmt: skip

    if cg == 1 and dtype != np.int64:
        # Depthwise-like (one input channel per group): a loop over the kernel taps,
        # each a vectorized multiply-add over every output. The running sum holds all
        # taps at once, so float32 only when one chunk covers them.
        if dtype == np.float32 and chunk < taps:
            dtype = np.dtype(np.float64)
        xp = np.zeros([n_batch, c] + [sizes[i] + pads[i] + pads[i + nsp] for i in range(nsp)],
                      dtype=dtype)  # fmt: skip
        xp[
            (slice(None), slice(None))
            + tuple(slice(pads[i], pads[i] + sizes[i]) for i in range(nsp))
        ] = x
        wf = w.astype(dtype).reshape(group, mg, taps)
        acc = np.zeros((n_batch, group, mg, *outs), dtype=dtype)
        # Cache blocking: one sample and a block of channels at a time, so the block's
        # accumulator stays in cache across the taps.
        block = max(1, _DW_BLOCK // max(npix, 1))
        tmp = np.empty((min(block, group), *outs), dtype=dtype)
        bshape = (-1,) + (1,) * nsp
        for nb in range(n_batch):
            for g0 in range(0, group, block):
                g1 = min(group, g0 + block)
                t_blk = tmp[: g1 - g0]
                for ti, t in enumerate(tap_list):
                    xs = xp[(nb, slice(g0, g1)) + tap_slices(t)]
                    for j in range(mg):
                        np.multiply(xs, wf[g0:g1, j, ti].reshape(bshape), out=t_blk)
                        acc[nb, g0:g1, j] += t_blk
        acc = acc.reshape(n_batch, m, *outs)
        return acc.astype(np.int32 if dtype == np.float32 else np.int64)
    # im2col as cols[(channel, tap), (n, pixel)] built from one strided copy per tap,
    # then acc[oc, (n, pixel)] = w[oc, (channel, tap)] @ cols, all groups in one batched
    # GEMM: (G, Mg, K) @ (G, K, N*P) with K = Cg * taps.
    xp_shape = [c, n_batch] + [sizes[i] + pads[i] + pads[i + nsp] for i in range(nsp)]
    xp = _scratch("xp", tuple(xp_shape), dtype)
    if any(pads):
        xp.fill(0)
    interior = (slice(None), slice(None))
    interior += tuple(slice(pads[i], pads[i] + sizes[i]) for i in range(nsp))
    xp[interior] = np.moveaxis(x, 1, 0)
    if taps == 1 and not any(pads) and all(st == 1 for st in strides):
        cols = xp.reshape(c, n_batch * npix)  # 1x1, stride 1: no copy
    else:
        cols = _scratch("cols", (c, taps, n_batch, *outs), dtype)
        if taps > 1 and any(st > 1 for st in strides):
            # Strided convs: split the padded input into its stride phases once, so that
            # every tap is a unit-stride window of one phase (faster copies).
            phases: dict[tuple[int, ...], np.ndarray] = {}
            for ti, t in enumerate(tap_list):
                off = [t[i] * dilations[i] for i in range(nsp)]
                ph = tuple(off[i] % strides[i] for i in range(nsp))
                if ph not in phases:
                    sl = tuple(slice(ph[i], None, strides[i]) for i in range(nsp))
                    phases[ph] = np.ascontiguousarray(xp[(slice(None), slice(None)) + sl])
                q = [off[i] // strides[i] for i in range(nsp)]
                sl = tuple(slice(q[i], q[i] + outs[i]) for i in range(nsp))
                cols[:, ti] = phases[ph][(slice(None), slice(None)) + sl]
        else:
            for ti, t in enumerate(tap_list):
                cols[:, ti] = xp[(slice(None), slice(None)) + tap_slices(t)]
    cols = cols.reshape(group, cg * taps, n_batch * npix)
    wmat = w.reshape(group, mg, cg * taps).astype(dtype)
    if dtype == np.float32 and chunk >= cg * taps:
        # One exact float32 GEMM: keep its float32 result (integers of magnitude at most
        # 2**24) for conv_accumulate_f32.
        if group == 1:
            part = np.matmul(wmat[0], cols[0], out=_scratch("gemm", (m, n_batch * npix), dtype))
        else:
            part = np.matmul(wmat, cols, out=_scratch("gemm", (group, mg, n_batch * npix), dtype))
    elif group == 1:
        part = _chunked_matmul(wmat[0], cols[0], chunk)
    else:
        part = _chunked_matmul(wmat, cols, chunk)
    # (M, N, P) -> (N, M, P), always into a new array (part may be a scratch buffer)
    acc = np.empty((n_batch, m, npix), dtype=part.dtype)
    acc[...] = part.reshape(m, n_batch, npix).transpose(1, 0, 2)
    return acc.reshape(n_batch, m, *outs)


def conv_accumulate(
    x: np.ndarray,
    w: np.ndarray,
    *,
    strides: list[int],
    pads: list[int],
    dilations: list[int],
    group: int,
) -> np.ndarray:
    """Exact integer N-D convolution (NC... input, OI... weights) as int64, no bias.

    ``x`` and ``w`` hold zero-point-corrected integers; padding contributes 0. Runs as
    im2col plus an exact GEMM per group (float BLAS with K chunked, see
    :func:`gemm_plan`), or, for depthwise-like convs (one input channel per group), as a
    loop over the kernel taps. Identical to :func:`conv_accumulate_reference`.
    """
    return _conv_core(x, w, strides, pads, dilations, group).astype(np.int64, copy=False)


def conv_accumulate_wrap32(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: list[int],
    pads: list[int],
    dilations: list[int],
    group: int,
) -> np.ndarray:
    """``wrap32(bias[oc] + conv(x, w))``: the int32 accumulator of the hardware."""
    return _add_bias_wrap32(_conv_core(x, w, strides, pads, dilations, group), bias)


def _add_bias_wrap32(acc: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``wrap32(bias[oc] + acc)`` for an exact accumulator (float32, int32 or int64)."""
    if acc.dtype == F32:  # exact integers of magnitude at most 2**24
        acc = acc.astype(np.int32)
    if acc.dtype != np.int32:
        return wrap32(acc if bias is None else acc + _bias_shape(bias, acc).astype(np.int64))
    if bias is not None:
        # int32 + int32 in NumPy wraps modulo 2**32, as the hardware adder does.
        with np.errstate(over="ignore"):
            acc = np.add(acc, _bias_shape(bias, acc).astype(np.int32), dtype=np.int32)
    return acc


def conv_accumulate_f32(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: list[int],
    pads: list[int],
    dilations: list[int],
    group: int,
) -> np.ndarray:
    """``f32(wrap32(bias[oc] + conv(x, w)))``: the hardware accumulator converted to
    float32, the first step of :func:`requantize` (see :func:`requantize_f32`).

    When one float32 GEMM gave the exact sums (magnitude at most 2**24) and every
    ``|bias|`` is at most 2**24, both addends are exact float32 values and their sum
    cannot wrap, so one float32 addition rounds the exact sum as the int32-to-float32
    conversion would. Otherwise the int32 accumulator is formed and converted.
    """
    acc = _conv_core(x, w, strides, pads, dilations, group)
    if acc.dtype == F32 and (bias is None or _absmax(np.asarray(bias)) <= F32_EXACT):
        if bias is not None:
            np.add(acc, _bias_shape(bias, acc).astype(F32), out=acc)
        return acc
    return _add_bias_wrap32(acc, bias).astype(F32)


def _bias_shape(bias: np.ndarray, acc: np.ndarray) -> np.ndarray:
    return np.asarray(bias).reshape((acc.shape[1],) + (1,) * (acc.ndim - 2))


def conv_accumulate_reference(
    x: np.ndarray,
    w: np.ndarray,
    *,
    strides: list[int],
    pads: list[int],
    dilations: list[int],
    group: int,
) -> np.ndarray:
    """The same convolution with int64 arithmetic only (slow, obviously exact)."""
    n_batch, c = x.shape[:2]
    m = w.shape[0]
    kernel = list(w.shape[2:])
    cg, mg = c // group, m // group
    win = _windows(_pad_spatial(np.asarray(x, np.int64), pads, 0), kernel, strides, dilations)
    out_sp = list(win.shape[2 : 2 + len(kernel)])
    out = np.zeros((n_batch, m, *out_sp), dtype=np.int64)
    w64 = np.asarray(w, np.int64)
    axes = tuple(range(-len(kernel), 0))
    for g in range(group):
        xs = win[:, g * cg : (g + 1) * cg]  # (N, Cg, *O, *K)
        for j in range(mg):
            oc = g * mg + j
            wk = w64[oc].reshape(cg, *([1] * len(kernel)), *kernel)
            out[:, oc] = (xs * wk[None]).sum(axis=axes).sum(axis=1)
    return out


# --- max pooling -------------------------------------------------------------------------


def pool_output_size(
    size: int, kernel: int, stride: int, dilation: int, pad_begin: int, pad_end: int, ceil: bool
) -> int:
    """ONNX MaxPool output length; with ceil_mode the last window must start in the input
    or its leading padding."""
    eff = (kernel - 1) * dilation + 1
    span = size + pad_begin + pad_end - eff
    if not ceil:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out


def max_pool(
    x: np.ndarray,
    kernel: list[int],
    strides: list[int],
    pads: list[int],
    *,
    dilations: list[int] | None = None,
    ceil_mode: bool = False,
    pad_value: int | float | None = None,
) -> np.ndarray:
    """Max pooling of an NC... tensor.

    ``pad_value=None`` is ONNX MaxPool: padding is excluded (the host fallback path).
    ``pad_value=0`` is the accelerator's fused pool: a window position in the padding
    counts as the value 0.
    """
    n = len(kernel)
    dilations = list(dilations or [1] * n)
    if min(pads, default=0) < 0:
        # Negative pads crop the input.
        crop = tuple(
            slice(max(0, -pads[i]), x.shape[2 + i] - max(0, -pads[i + n])) for i in range(n)
        )
        x = x[(slice(None), slice(None)) + crop]
        pads = [max(0, p) for p in pads]
    sizes = x.shape[2:]
    outs = [
        pool_output_size(
            sizes[i], kernel[i], strides[i], dilations[i], pads[i], pads[i + n], ceil_mode
        )
        for i in range(n)
    ]
    # Pad the end further so windows added by ceil_mode stay inside the array.
    ends = []
    for i in range(n):
        need = (outs[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
        ends.append(max(pads[i + n], need - sizes[i] - pads[i]))
    if pad_value is None:
        fill = np.iinfo(x.dtype).min if np.issubdtype(x.dtype, np.integer) else -np.inf
    else:
        fill = pad_value
    xp = _pad_spatial(x, list(pads[:n]) + ends, fill)
    # One elementwise maximum per kernel tap over a strided view (NaN propagates, as in
    # a reduction).
    out = None
    for t in np.ndindex(*kernel):
        tap = xp[
            (slice(None), slice(None))
            + tuple(
                slice(t[i] * dilations[i], t[i] * dilations[i] + strides[i] * (outs[i] - 1) + 1,
                      strides[i])
                for i in range(n)
            )
        ]  # fmt: skip
        if out is None:
            out = np.array(tap, dtype=x.dtype)
        else:
            np.maximum(out, tap, out=out)
    return out


# --- QLinearAdd -----------------------------------------------------------------------------


def _rescale_f32(q: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """``sat8(rne(f32(f32(q) * ratio)))`` as float32 integers, for a finite ``ratio`` (a
    finite ratio times an integer is never NaN; an overflow to +-inf saturates in the
    clip)."""
    v = np.asarray(q).astype(F32)
    with np.errstate(over="ignore"):
        np.multiply(v, ratio, out=v)
    v = np.asarray(rne(v), dtype=F32)
    np.clip(v, -128, 127, out=v)
    return v


def rescale_saturate(
    q: np.ndarray, s_in: np.ndarray | float, s_out: np.ndarray | float
) -> np.ndarray:
    """The accelerator's per-input rescale: ``sat8(rne(f32(f32(q) * f32(s_in / s_out))))``."""
    ratio = np.divide(np.asarray(s_in, F32), np.asarray(s_out, F32), dtype=F32)
    if np.all(np.isfinite(ratio)):
        return _rescale_f32(q, ratio).astype(np.int8)
    with np.errstate(over="ignore", invalid="ignore"):
        v = rne(np.multiply(np.asarray(q).astype(F32), ratio, dtype=F32)).astype(np.float64)
    return sat8(np.nan_to_num(np.clip(v, -256.0, 256.0), nan=0.0))


def qlinear_add_systolic(
    a: np.ndarray,
    s_a: np.ndarray | float,
    b: np.ndarray,
    s_b: np.ndarray | float,
    s_c: np.ndarray | float,
    relu: bool = False,
) -> np.ndarray:
    """The accelerator's QLinearAdd (int8, zero points 0): rescale and saturate each input,
    add, clamp to [0 if relu else -128, 127]."""
    r_a = np.divide(np.asarray(s_a, F32), np.asarray(s_c, F32), dtype=F32)
    r_b = np.divide(np.asarray(s_b, F32), np.asarray(s_c, F32), dtype=F32)
    if np.shape(a) == np.shape(b) and np.all(np.isfinite(r_a)) and np.all(np.isfinite(r_b)):
        # The same steps in float32 (the saturated values and their sum are small
        # integers, exact), without the round trip through int8.
        total_f = _rescale_f32(a, r_a)
        np.add(total_f, _rescale_f32(b, r_b), out=total_f)
        np.clip(total_f, 0 if relu else -128, 127, out=total_f)
        return total_f.astype(np.int8)
    total = np.add(rescale_saturate(a, s_a, s_c), rescale_saturate(b, s_b, s_c), dtype=np.int16)
    np.clip(total, 0 if relu else -128, 127, out=total)
    return total.astype(np.int8)


def _cvt_to_int32(v: np.ndarray) -> np.ndarray:
    """x86 ``cvtps2dq``: round half to even; NaN and out-of-range values give INT32_MIN."""
    with np.errstate(invalid="ignore"):
        r = rne(v.astype(np.float64))
        bad = ~np.isfinite(r) | (r < -(2.0**31)) | (r >= 2.0**31)
        return np.where(bad, -(2**31), np.where(bad, 0, r)).astype(np.int64)


def qlinear_add_ort(
    a: np.ndarray,
    s_a: float,
    zp_a: int,
    b: np.ndarray,
    s_b: float,
    zp_b: int,
    s_c: float,
    zp_c: int,
    dtype: np.dtype | type,
) -> np.ndarray:
    """onnxruntime's CPU QLinearAdd (the MLAS AVX2 kernel, as compiled, with its
    multiply-adds contracted to FMAs), on inputs already broadcast to one shape.

    ``rA = f32(s_a / s_c)``, ``rB = f32(s_b / s_c)``,
    ``fixed = f32(zp_c - fma(rA, zp_a, f32(rB * zp_b)))``,
    ``c = fma(a, rA, fma(b, rB, fixed))``, then ``cvtps2dq`` (round half to even; INT32_MIN
    when out of range) and saturating packs to int16 then to the output type. Where
    onnxruntime's broadcast makes A the per-span scalar, it swaps the inputs: the caller
    passes them swapped.
    """
    r_a = np.divide(F32(s_a), F32(s_c), dtype=F32)
    r_b = np.divide(F32(s_b), F32(s_c), dtype=F32)
    fixed = np.subtract(
        F32(zp_c), fma_f32(r_a, F32(zp_a), np.multiply(r_b, F32(zp_b), dtype=F32)), dtype=F32
    )
    af = np.asarray(a).astype(F32)
    bf = np.asarray(b).astype(F32)
    c = fma_f32(af, r_a, fma_f32(bf, r_b, fixed))
    r = _cvt_to_int32(c)
    return saturate(np.clip(r, -32768, 32767), dtype)
