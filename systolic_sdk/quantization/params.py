"""Scale and zero-point math: activations, weights (per tensor or per channel), int32 bias.

Every scale is computed in float32, as onnxruntime's quantizer does; every rounding
goes through ``runtime_emulator.datapath`` (round half to even). Zero points are
integers chosen so that real 0.0 is exactly representable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime_emulator import datapath
from systolic_sdk.quantization.types import QuantType

F32 = np.float32
INT32_MAX = 2**31 - 1


@dataclass(frozen=True, eq=False)
class QuantParams:
    """Quantization parameters of one tensor: ``real = (q - zero_point) * scale``."""

    scale: np.ndarray  # float32, shape () per tensor or (C,) per channel
    zero_point: np.ndarray  # qtype's dtype, same shape as scale
    qtype: QuantType
    axis: int | None = None  # channel axis when per channel

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", np.asarray(self.scale, dtype=F32))
        zp = np.asarray(self.zero_point)
        if zp.dtype != self.qtype.np_dtype:
            lo, hi = datapath.qrange(self.qtype.np_dtype)
            if zp.size and (zp.min() < lo or zp.max() > hi):
                raise ValueError(f"zero point {zp} does not fit {self.qtype}")
            zp = zp.astype(self.qtype.np_dtype)
        object.__setattr__(self, "zero_point", zp)
        if self.scale.shape != self.zero_point.shape:
            raise ValueError("scale and zero point must have the same shape")
        if not np.all(np.isfinite(self.scale)) or np.any(self.scale <= 0):
            raise ValueError(f"scale must be finite and positive, got {self.scale}")

    @property
    def per_channel(self) -> bool:
        return self.scale.ndim > 0

    def key(self) -> tuple:
        """A hashable identity (type, axis, scale bytes, zero-point bytes)."""
        return (self.qtype, self.axis, self.scale.tobytes(), self.zero_point.tobytes())

    def same_as(self, other: QuantParams | None) -> bool:
        return other is not None and self.key() == other.key()


def quant_range(qtype: QuantType, reduce_range: bool = False, symmetric: bool = False) -> tuple:
    """The integer range [qmin, qmax] used to compute parameters (as onnxruntime does).

    Symmetric signed types drop the most negative value (int8: [-127, 127]) so that the
    range is centred on zero; ``reduce_range`` uses 7 bits for 8-bit types (int8
    [-64, 64], uint8 [0, 127]) and is ignored for 16-bit types.
    """
    qmin, qmax = datapath.qrange(qtype.np_dtype)
    if reduce_range and qtype in (QuantType.QInt8, QuantType.QUInt8):
        return (-64, 64) if qtype.signed else (0, 127)
    if symmetric and qtype.signed:
        return (qmin + 1, qmax)
    return (qmin, qmax)


def compute_params(
    rmin: np.ndarray | float,
    rmax: np.ndarray | float,
    qtype: QuantType,
    symmetric: bool = False,
    reduce_range: bool = False,
    axis: int | None = None,
) -> QuantParams:
    """Scale and zero point for the real range [rmin, rmax] (arrays: one per channel).

    The range is first widened to include 0. Symmetric: ``scale = 2*max|r| / (qmax-qmin)``
    and the zero point is the middle of the integer range (0 for signed types).
    Asymmetric: ``scale = (rmax-rmin) / (qmax-qmin)``, ``zp = rne(qmin - rmin/scale)``,
    both in float64 as onnxruntime computes them; the scale is stored as float32. A zero
    range gives scale 1.0 and zero point 0.
    """
    rmin = np.minimum(np.asarray(rmin, dtype=F32), F32(0))
    rmax = np.maximum(np.asarray(rmax, dtype=F32), F32(0))
    if not (np.all(np.isfinite(rmin)) and np.all(np.isfinite(rmax))):
        raise ValueError(f"range [{rmin}, {rmax}] is not finite")
    if symmetric:
        absmax = np.maximum(np.abs(rmin), np.abs(rmax))
        rmin, rmax = -absmax, absmax
    qmin, qmax = quant_range(qtype, reduce_range, symmetric)
    # As onnxruntime: the span and the scale in float64 (a float32 difference of the
    # bounds can lose bits), the zero point from the float64 scale, the scale stored f32.
    scale64 = (rmax.astype(np.float64) - rmin.astype(np.float64)) / float(qmax - qmin)
    degenerate = scale64 < np.finfo(F32).tiny
    safe64 = np.where(degenerate, 1.0, scale64)
    if symmetric:
        zp = np.broadcast_to(datapath.rne(np.float64((qmin + qmax) / 2)), scale64.shape)
    else:
        zp = datapath.rne(qmin - rmin.astype(np.float64) / safe64)
    zp = datapath.clamp(np.where(degenerate, 0, zp), qmin, qmax)
    return QuantParams(safe64.astype(F32), zp.astype(np.int64), qtype, axis)


def activation_params(
    rmin: float, rmax: float, qtype: QuantType, symmetric: bool = False, reduce_range: bool = False
) -> QuantParams:
    """Per-tensor parameters of an activation with calibrated range [rmin, rmax]."""
    return compute_params(rmin, rmax, qtype, symmetric, reduce_range)


def weight_params(
    w: np.ndarray,
    qtype: QuantType,
    per_channel: bool = False,
    axis: int = 0,
    symmetric: bool = True,
    reduce_range: bool = False,
) -> QuantParams:
    """Parameters of a constant tensor from its own min/max (per tensor or along ``axis``)."""
    w = np.asarray(w, dtype=F32)
    if per_channel:
        axis = axis % w.ndim
        others = tuple(i for i in range(w.ndim) if i != axis)
        if w.size == 0:
            rmin = rmax = np.zeros(w.shape[axis], F32)
        else:
            rmin, rmax = w.min(axis=others), w.max(axis=others)
        return compute_params(rmin, rmax, qtype, symmetric, reduce_range, axis)
    rmin = w.min() if w.size else F32(0)
    rmax = w.max() if w.size else F32(0)
    return compute_params(rmin, rmax, qtype, symmetric, reduce_range)


def quantize_weight(w: np.ndarray, params: QuantParams) -> np.ndarray:
    """``sat(rne(f32(w / scale)) + zp)`` in the parameters' type (along their axis)."""
    return datapath.quantize_linear(
        w, params.scale, params.zero_point, params.qtype.np_dtype, axis=params.axis
    )


@dataclass(frozen=True, eq=False)
class QuantizedBias:
    """An int32 bias, its float32 scale (per channel where the weights are), and the
    weight parameters it was computed with (enlarged when the guard had to act)."""

    values: np.ndarray  # int32
    scale: np.ndarray  # float32, () or (C,)
    weight_params: QuantParams
    adjusted: bool


def quantize_bias(
    bias: np.ndarray, x_scale: np.ndarray | float, wp: QuantParams, name: str = "bias"
) -> QuantizedBias:
    """Quantize a bias to int32 with scale ``f32(s_x * s_w)``, guarding against overflow.

    Policy when a value does not fit in int32 (tiny activation or weight scales with a
    large bias): the weight scale of each offending channel (the single scale when the
    weights are per tensor) is enlarged to the smallest float32 value for which the
    bias fits, as onnxruntime does since 1.17; the caller requantizes the weights with
    the returned ``weight_params``. The zero point is kept, which stays valid because a
    larger scale only shrinks ``w / scale``. ``adjusted`` tells the caller (the walk
    warns once per model, naming the tensors).
    """
    b = np.asarray(bias, dtype=F32).reshape(-1)
    s_x = F32(np.asarray(x_scale, dtype=F32).reshape(()))
    s_w = wp.scale
    try:
        q, _ = datapath.quantize_bias(b, s_x, s_w)
        return QuantizedBias(q, np.multiply(s_x, s_w, dtype=F32), wp, False)
    except OverflowError:
        pass
    if not np.all(np.isfinite(b)):
        raise ValueError(f"bias '{name}' has non-finite values")
    # Smallest bias scale per channel such that |b| / scale <= 2**31 - 129 (a margin for
    # float32 rounding of the quotient), then the weight scale that yields it.
    absb = np.abs(b) if wp.per_channel else np.array([np.abs(b).max(initial=0)], F32)
    need = np.divide(absb, F32(INT32_MAX - 128), dtype=F32)
    new_sw = np.array(s_w, dtype=F32).reshape(-1).copy()
    for c in range(new_sw.size):
        cand = max(new_sw[c], np.divide(need[c], s_x, dtype=F32))
        while np.multiply(s_x, cand, dtype=F32) * F32(INT32_MAX - 128) < absb[c]:
            cand = np.nextafter(cand, F32(np.inf), dtype=F32)
        new_sw[c] = cand
    new_sw = new_sw.reshape(s_w.shape)
    new_wp = QuantParams(new_sw, wp.zero_point, wp.qtype, wp.axis)
    q, _ = datapath.quantize_bias(b, s_x, new_sw)
    return QuantizedBias(q, np.multiply(s_x, new_sw, dtype=F32), new_wp, True)
