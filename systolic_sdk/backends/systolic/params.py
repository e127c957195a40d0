"""Quantization parameters of the Systolic flow (spec section 7): symmetric int8,
zero point 0, per-tensor scales.

- activations: ``m = max(|min(rmin, 0)|, |max(rmax, 0)|)``, ``scale = f32(f32(m) / 127)``
  (1.0 when ``m <= 1e-8``);
- weights: ``scale = 2 * max|w| / 254`` in float64, values ``rne(w / scale)`` in float64,
  stored scale ``f32(scale)``;
- bias: ``rne(f32(b / f32(s_x * s_w)))`` as int32 (``datapath.quantize_bias``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime_emulator import datapath
from systolic_sdk.quantization import params as core
from systolic_sdk.quantization.params import QuantizedBias, QuantParams
from systolic_sdk.quantization.types import QuantType

F32 = np.float32
#: Ranges at or below this magnitude give scale 1.0.
TINY_RANGE = 1e-8


@dataclass(frozen=True, eq=False)
class WeightParams(QuantParams):
    """Per-tensor weight parameters that remember the float64 scale the values use."""

    exact_scale: float | None = None


def activation_params(
    rmin: float, rmax: float, qtype: QuantType, symmetric: bool = True, reduce_range: bool = False
) -> QuantParams:
    """Spec-7 activation parameters (``symmetric``/``reduce_range`` do not apply)."""
    lo, hi = min(float(rmin), 0.0), max(float(rmax), 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"range [{rmin}, {rmax}] is not finite")
    m = max(abs(lo), abs(hi))
    scale = F32(1.0) if m <= TINY_RANGE else np.divide(F32(m), F32(127), dtype=F32)
    return QuantParams(scale, np.int64(0), QuantType.QInt8)


def weight_scale(absmax: float | np.ndarray) -> float | np.ndarray:
    """The spec-7 weight scale ``2 * max|w| / 254`` in float64 (one value, or per channel)."""
    return 2.0 * absmax / 254.0


def weight_params(
    w: np.ndarray,
    qtype: QuantType,
    per_channel: bool = False,
    axis: int = 0,
    symmetric: bool = True,
    reduce_range: bool = False,
) -> WeightParams:
    """Spec-7 per-tensor weight parameters (per-channel requests are adapted beforehand)."""
    w64 = np.asarray(w, dtype=np.float64)
    absmax = float(np.abs(w64).max()) if w64.size else 0.0
    if not np.isfinite(absmax):
        raise ValueError("weights have non-finite values")
    exact = weight_scale(absmax) if absmax > 0 else 1.0
    return WeightParams(F32(exact), np.int64(0), QuantType.QInt8, None, exact)


def quantize_weight(w: np.ndarray, params: QuantParams) -> np.ndarray:
    """``sat8(rne(w / scale))`` in float64 for weights; constants quantized like
    activations (plain QuantParams) use QuantizeLinear's float32 division."""
    if isinstance(params, WeightParams) and params.exact_scale is not None:
        q = datapath.rne(np.divide(np.asarray(w, dtype=np.float64), params.exact_scale))
        return datapath.sat8(q).astype(np.int8)
    return core.quantize_weight(w, params)


def quantize_bias(
    bias: np.ndarray, x_scale: np.ndarray | float, wp: QuantParams, name: str = "bias"
) -> QuantizedBias:
    """The core's int32 bias (``datapath.quantize_bias`` plus its overflow guard); an
    enlarged weight scale keeps the float64 weight quantization, at the new scale."""
    qb = core.quantize_bias(bias, x_scale, wp, name)
    if not qb.adjusted:
        return qb
    p = qb.weight_params
    exact = WeightParams(p.scale, p.zero_point, p.qtype, p.axis, float(p.scale))
    return QuantizedBias(qb.values, qb.scale, exact, True)
