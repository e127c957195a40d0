"""QLinearMatMul and MatMulInteger: N-D with NumPy matmul broadcasting, ONNX semantics.

uint8 and int8, non-zero zero points, per-column ``b`` scales/zero points (shape [N] or
[..., 1, N]) and per-row ``a`` scales/zero points (shape [M] or [..., M, 1]), as ONNX
allows; the multiplier of output (r, c) is ``f32(f32(s_a[r] * s_b[c]) / s_y)``.
The arithmetic is the accelerator's and onnxruntime's: exact integer accumulation
(wrapping int32), ``M = f32(f32(s_a * s_b) / s_y)``, ``f32(f32(acc) * M)``, round half to
even, add the zero point, saturate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime_emulator import datapath as dp
from runtime_emulator import ort_engine
from runtime_emulator.kernels import KernelContext, register
from runtime_emulator.kernels._common import (
    INT8_TYPES,
    MATMUL_INPUT_NAMES,
    arg,
    check_dtype,
    check_systolic_operands,
    fail,
    per_tensor,
    zero_point_or_default,
)


def _as_matrices(a: np.ndarray, b: np.ndarray, ctx: KernelContext) -> tuple[np.ndarray, ...]:
    if a.ndim == 0 or b.ndim == 0:
        raise fail(ctx, "matmul inputs must have at least one dimension")
    a2 = a.reshape(1, -1) if a.ndim == 1 else a
    b2 = b.reshape(-1, 1) if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise fail(ctx, f"shapes {list(a.shape)} and {list(b.shape)} cannot be multiplied")
    try:
        np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    except ValueError:
        raise fail(
            ctx, f"batch dims of {list(a.shape)} and {list(b.shape)} do not broadcast"
        ) from None
    return a2, b2


def _squeeze(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Drop the axes added for 1-D operands (NumPy matmul rules)."""
    if a.ndim == 1:
        y = y.reshape(y.shape[:-2] + y.shape[-1:])
    if b.ndim == 1:
        y = y.reshape(y.shape[:-1])
    return y


def _column_param(v: np.ndarray, b2: np.ndarray, name: str, ctx: KernelContext) -> np.ndarray:
    """A per-tensor or per-column parameter of ``b``, shaped to broadcast against it."""
    if v.size == 1:
        return v.reshape(())
    n = b2.shape[-1]
    if v.ndim == 1 and v.size == n:
        return v
    if v.ndim >= 2 and v.shape[-1] == n and v.shape[-2] == 1:
        try:
            np.broadcast_shapes(v.shape[:-2], b2.shape[:-2])
            return v
        except ValueError:
            pass
    raise fail(
        ctx, f"'{name}' has shape {list(v.shape)}; expected a scalar, [{n}] or [..., 1, {n}]"
    )


def _row_param(v: np.ndarray, a2: np.ndarray, name: str, ctx: KernelContext) -> np.ndarray:
    """A per-tensor or per-row parameter of ``a`` (MatMulInteger), shaped to broadcast."""
    if v.size == 1:
        return v.reshape(())
    m = a2.shape[-2]
    if v.ndim == 1 and v.size == m:
        return v.reshape(m, 1)
    if v.ndim >= 2 and v.shape[-2] == m and v.shape[-1] == 1:
        return v
    raise fail(
        ctx, f"'{name}' has shape {list(v.shape)}; expected a scalar, [{m}] or [..., {m}, 1]"
    )


def _centered(q: np.ndarray, zp: np.ndarray) -> np.ndarray:
    return q.astype(np.int16) - zp.astype(np.int16)


def _accumulate(
    a: np.ndarray,
    b2: np.ndarray,
    b_zp: np.ndarray,
    inputs: Sequence[np.ndarray | None],
    ctx: KernelContext,
) -> np.ndarray:
    """``wrap32(a @ (b - b_zp))``; ``b - b_zp`` prepared once per model when the executor
    says ``b`` and its zero point are constants (kept in the node's context)."""
    const = ctx.extra.get("constant_inputs", ())
    b_in = inputs[3]
    zp_in = inputs[5] if len(inputs) > 5 else None
    if 3 not in const or (zp_in is not None and 5 not in const):
        return dp.int_matmul_wrap32(a, _centered(b2, b_zp))
    cached = ctx.extra.get("matmul_operand")
    if cached is None or cached[0] is not b_in or cached[1] is not zp_in:
        # The entry keeps the input arrays alive: an identity match means the same arrays.
        prepared = dp.prepare_matmul_operand(_centered(b2, b_zp))
        cached = ctx.extra["matmul_operand"] = (b_in, zp_in, prepared)
    return dp.int_matmul_wrap32_prepared(a, cached[2])


def _compiled_layer(
    inputs: Sequence[np.ndarray | None],
    a: np.ndarray,
    scales: tuple[np.ndarray, np.ndarray, np.ndarray],
    zero_points: tuple[np.ndarray, np.ndarray, np.ndarray],
    ctx: KernelContext,
) -> ort_engine.Layer | None:
    """The layer compiled for the onnxruntime engine (:mod:`runtime_emulator.ort_engine`)
    when ``a`` has at least two axes, ``b`` is 2-D and the scales and zero points are per
    tensor (``b``'s scale may be per column); None sends the call to the NumPy datapath."""
    a_zp, b_zp, y_zp = zero_points
    a_scale, b_scale, _ = scales
    b = inputs[3]
    if a.ndim < 2 or a.size == 0 or b.ndim != 2:
        return None
    if a_zp.size != 1 or b_zp.size != 1 or a_scale.size != 1 or b_scale.ndim > 1:
        return None
    if any(np.asarray(s).dtype != np.float32 for s in scales):
        return None  # float16 scales (opset 21) stay on the datapath

    def spec() -> ort_engine.LayerSpec:
        return ort_engine.LayerSpec.from_operands(
            a.dtype, b, scales, zero_points, y_zp.dtype, op="QLinearMatMul"
        )

    return ort_engine.node_layer(ctx.extra, inputs, (a.dtype,), spec)


@register("QLinearMatMul")
def qlinear_matmul(
    inputs: Sequence[np.ndarray | None], attrs: dict[str, Any], ctx: KernelContext
) -> list[np.ndarray]:
    """ONNX QLinearMatMul. On the Systolic target the hardware's formats are required
    (int8, zero points 0, per-tensor scales)."""
    if ctx.target == "systolic":
        check_systolic_operands(inputs, MATMUL_INPUT_NAMES, ctx)
    a = arg(inputs, 0, "a", ctx, True)
    a_scale = arg(inputs, 1, "a_scale", ctx, True)
    a_zp = arg(inputs, 2, "a_zero_point", ctx, False)
    b = arg(inputs, 3, "b", ctx, True)
    b_scale = arg(inputs, 4, "b_scale", ctx, True)
    b_zp = arg(inputs, 5, "b_zero_point", ctx, False)
    y_scale = arg(inputs, 6, "y_scale", ctx, True)
    y_zp = arg(inputs, 7, "y_zero_point", ctx, False)
    check_dtype(a, INT8_TYPES, "a", ctx)
    check_dtype(b, INT8_TYPES, "b", ctx)
    a2, b2 = _as_matrices(a, b, ctx)
    a_zp = _row_param(zero_point_or_default(a_zp, a, "a_zero_point", ctx), a2, "a_zero_point", ctx)
    b_zp = _column_param(
        zero_point_or_default(b_zp, b, "b_zero_point", ctx), b2, "b_zero_point", ctx
    )
    y_dtype = y_zp.dtype if y_zp is not None else a.dtype
    if y_dtype not in INT8_TYPES:
        raise fail(ctx, f"y_zero_point is {np.dtype(y_dtype).name}; expected int8 or uint8")
    y_zp = per_tensor(y_zp, "y_zero_point", ctx) if y_zp is not None else np.zeros((), y_dtype)
    a_scale = _row_param(a_scale, a2, "a_scale", ctx)
    y_scale = per_tensor(y_scale, "y_scale", ctx)
    b_scale = _column_param(b_scale, b2, "b_scale", ctx)
    layer = _compiled_layer(inputs, a, (a_scale, b_scale, y_scale), (a_zp, b_zp, y_zp), ctx)
    y = ort_engine.run_layer(ctx.extra, layer, a)
    if y is not None:
        return [y]
    acc = _accumulate(_centered(a2, a_zp), b2, b_zp, inputs, ctx)
    # Float16 scales (opset 21) are widened to float32 exactly, as onnxruntime does.
    mult = dp.requant_multiplier(a_scale, b_scale, y_scale)
    y = dp.requantize(acc, mult, y_dtype, y_zp)
    return [_squeeze(y, a, b)]


@register("MatMulInteger")
def matmul_integer(
    inputs: Sequence[np.ndarray | None], attrs: dict[str, Any], ctx: KernelContext
) -> list[np.ndarray]:
    """ONNX MatMulInteger: ``(a - a_zp) @ (b - b_zp)`` as int32 (wrapping)."""
    a = arg(inputs, 0, "A", ctx, True)
    b = arg(inputs, 1, "B", ctx, True)
    a_zp = arg(inputs, 2, "a_zero_point", ctx, False)
    b_zp = arg(inputs, 3, "b_zero_point", ctx, False)
    check_dtype(a, INT8_TYPES, "A", ctx)
    check_dtype(b, INT8_TYPES, "B", ctx)
    a2, b2 = _as_matrices(a, b, ctx)
    a_zp = _row_param(zero_point_or_default(a_zp, a, "a_zero_point", ctx), a2, "a_zero_point", ctx)
    b_zp = _column_param(
        zero_point_or_default(b_zp, b, "b_zero_point", ctx), b2, "b_zero_point", ctx
    )
    acc = dp.int_matmul_wrap32(_centered(a2, a_zp), _centered(b2, b_zp))
    return [_squeeze(acc, a, b)]
