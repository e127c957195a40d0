"""QuantizeLinear, DequantizeLinear and DynamicQuantizeLinear, ONNX semantics (opsets 10-25).

Integer types uint8, int8, uint16, int16 (DequantizeLinear also int32); per-tensor,
per-axis and blocked (``block_size``) scales; ``output_dtype`` and ``precision``.
float8, int4/uint4, int2/uint2 and float4 are refused with :class:`UnsupportedError`
(``saturate`` only concerns float8, so it never changes an integer result).
QuantizeLinear divides (``rne(x / s)``), it never multiplies by ``1/s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from onnx import helper

from runtime_emulator import datapath as dp
from runtime_emulator.kernels import KernelContext, register
from runtime_emulator.kernels._common import (
    PLAIN_TYPES,
    QUANT_TYPES,
    arg,
    fail,
    unsupported,
)


def _elem_type(code: int, ctx: KernelContext, what: str) -> np.dtype:
    try:
        dt = np.dtype(helper.tensor_dtype_to_np_dtype(int(code)))
    except (KeyError, TypeError, ValueError):
        raise fail(ctx, f"{what} {code} is not a known ONNX element type") from None
    if dt not in PLAIN_TYPES:
        raise unsupported(
            ctx,
            f"{what} {dt.name} is not supported by the emulator (integer types only: "
            "uint8, int8, uint16, int16)",
        )
    return dt


def _params(
    x: np.ndarray, scale: np.ndarray, attrs: dict[str, Any], ctx: KernelContext
) -> tuple[int | None, int]:
    """(axis or None for per tensor, block_size) after checking the scale's shape."""
    block = int(attrs.get("block_size", 0) or 0)
    if block < 0:
        raise fail(ctx, f"block_size must be >= 0, got {block}")
    if scale.size == 1 and scale.ndim <= 1 and not block:
        return None, 0
    axis = int(attrs.get("axis", 1))
    if not -x.ndim <= axis < x.ndim:
        raise fail(ctx, f"axis {axis} is out of range for a {x.ndim}-D input")
    axis %= x.ndim
    if block:
        want = list(x.shape)
        want[axis] = -(-x.shape[axis] // block)
        if list(scale.shape) != want:
            raise fail(ctx, f"blocked scale must have shape {want}, got {list(scale.shape)}")
        return axis, block
    if scale.ndim != 1 or scale.size != x.shape[axis]:
        raise fail(
            ctx,
            f"scale of shape {list(scale.shape)} does not match axis {axis} "
            f"of the input {list(x.shape)}",
        )
    return axis, 0


@register("QuantizeLinear")
def quantize_linear(
    inputs: Sequence[np.ndarray | None], attrs: dict[str, Any], ctx: KernelContext
) -> list[np.ndarray]:
    """``y = saturate(rne(x / y_scale) + y_zero_point)``."""
    x = arg(inputs, 0, "x", ctx, True)
    scale = arg(inputs, 1, "y_scale", ctx, True)
    zp = inputs[2] if len(inputs) > 2 else None
    if zp is not None and np.asarray(zp).dtype not in PLAIN_TYPES:
        raise unsupported(
            ctx,
            f"output element type {np.asarray(zp).dtype.name} is not supported by the "
            "emulator (integer types only: uint8, int8, uint16, int16)",
        )
    out_code = int(attrs.get("output_dtype", 0) or 0)
    out_dt = _elem_type(out_code, ctx, "output_dtype") if out_code else None
    if zp is not None:
        zp = np.asarray(zp)
        if out_dt is not None and out_dt != zp.dtype:
            raise fail(ctx, f"output_dtype {out_dt.name} differs from y_zero_point's {zp.dtype}")
        out_dt = zp.dtype
    out_dt = out_dt or np.dtype(np.uint8)
    if out_dt not in QUANT_TYPES:
        raise unsupported(ctx, f"QuantizeLinear to {out_dt.name} is not supported")
    if not np.issubdtype(scale.dtype, np.floating):
        raise fail(ctx, f"y_scale must be a float tensor, got {scale.dtype.name}")
    axis, block = _params(x, scale, attrs, ctx)
    if zp is not None and zp.shape != scale.shape and zp.size != 1:
        raise fail(ctx, f"y_zero_point shape {list(zp.shape)} differs from y_scale's")
    precision = int(attrs.get("precision", 0) or 0)
    if precision:
        compute = _elem_type(precision, ctx, "precision")
    else:
        compute = np.result_type(x.dtype, scale.dtype)
    if compute not in (np.float16, np.float32, np.float64):
        raise unsupported(ctx, f"division in {np.dtype(compute).name} is not supported")
    zero = zp if zp is not None else np.zeros((), out_dt)
    y = dp.quantize_linear(x, scale, zero, out_dt, axis, block_size=block, compute_dtype=compute)
    return [y]


@register("DequantizeLinear")
def dequantize_linear(
    inputs: Sequence[np.ndarray | None], attrs: dict[str, Any], ctx: KernelContext
) -> list[np.ndarray]:
    """``y = f32(f32(x - x_zero_point) * x_scale)``, cast to the scale's type (or
    ``output_dtype``)."""
    x = arg(inputs, 0, "x", ctx, True)
    scale = arg(inputs, 1, "x_scale", ctx, True)
    zp = arg(inputs, 2, "x_zero_point", ctx, False)
    if x.dtype not in QUANT_TYPES + (np.dtype(np.int32),):
        raise unsupported(ctx, f"DequantizeLinear of {x.dtype.name} is not supported")
    if zp is not None and zp.dtype != x.dtype:
        raise fail(ctx, f"x_zero_point is {zp.dtype.name} but x is {x.dtype.name}")
    if not np.issubdtype(scale.dtype, np.floating):
        raise fail(ctx, f"x_scale must be a float tensor, got {scale.dtype.name}")
    out_code = int(attrs.get("output_dtype", 0) or 0)
    out_dt = _elem_type(out_code, ctx, "output_dtype") if out_code else scale.dtype
    axis, block = _params(x, scale, attrs, ctx)
    zero = zp if zp is not None else np.zeros((), x.dtype)
    y = dp.dequantize_linear(x, scale, zero, axis, block_size=block)
    with np.errstate(over="ignore"):  # beyond float16's range: inf, as onnxruntime
        return [y.astype(out_dt, copy=False)]


@register("DynamicQuantizeLinear")
def dynamic_quantize_linear(
    inputs: Sequence[np.ndarray | None], attrs: dict[str, Any], ctx: KernelContext
) -> list[np.ndarray]:
    """uint8 quantization with a scale and zero point taken from the data, all float32:
    ``s = f32(max(0, max x) - min(0, min x)) / 255`` (1 when the range is empty),
    ``zp = rne(clip(0 - min / s, 0, 255))``, ``y = sat(rne(x / s) + zp)``."""
    x = arg(inputs, 0, "x", ctx, True)
    if x.dtype != np.float32:
        raise unsupported(ctx, f"DynamicQuantizeLinear takes float32, got {x.dtype.name}")
    f32 = np.float32
    hi = f32(max(f32(0), x.max())) if x.size else f32(0)
    lo = f32(min(f32(0), x.min())) if x.size else f32(0)
    # An empty range gives scale 1 (onnxruntime; onnx.reference divides that 1 by 255).
    scale = f32(1) if hi == lo else np.divide(np.subtract(hi, lo, dtype=f32), f32(255), dtype=f32)
    initial = np.subtract(f32(0), np.divide(lo, scale, dtype=f32), dtype=f32)
    zp = dp.saturate(dp.rne(np.clip(initial, f32(0), f32(255))), np.uint8)
    y = dp.quantize_linear(x, scale, zp, np.uint8)
    return [y, np.asarray(scale, dtype=f32), np.asarray(zp, dtype=np.uint8)]
