"""com.microsoft QLinearAdd: one op name, two meanings, chosen by the graph's target.

- ``ctx.target == "systolic"``: the accelerator (spec section 4): int8, zero points 0,
  equal shapes; each input rescaled to the output scale and saturated to int8, then
  added and clamped (at 0 with the ``relu`` attribute).
- ``ctx.target == "cpu"``: onnxruntime's CPU kernel (MLAS, AVX2 path, FMAs), with uint8/int8,
  zero points and broadcasting; see :func:`runtime_emulator.datapath.qlinear_add_ort`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime_emulator import datapath as dp
from runtime_emulator import threads
from runtime_emulator.kernels import TARGETS, KernelContext, register
from runtime_emulator.kernels._common import (
    INT8_TYPES,
    arg,
    check_dtype,
    fail,
    per_tensor,
    unsupported,
    zero_point_or_default,
)

_NAMES = ("A", "A_scale", "A_zero_point", "B", "B_scale", "B_zero_point", "C_scale",
          "C_zero_point")  # fmt: skip


def _systolic(ins: list[np.ndarray | None], attrs: dict[str, Any], ctx: KernelContext):
    a, s_a, za, b, s_b, zb, s_c, zc = ins
    for v, name in ((a, "A"), (b, "B")):
        if v.dtype != np.int8:
            raise unsupported(ctx, f"'{name}' is {v.dtype.name}; the Systolic array takes int8")
    for v, name in ((za, "A_zero_point"), (zb, "B_zero_point"), (zc, "C_zero_point")):
        if v is not None and (v.dtype != np.int8 or np.any(v != 0)):
            raise unsupported(ctx, f"'{name}' must be int8 zero (the Systolic array is symmetric)")
    for v, name in ((s_a, "A_scale"), (s_b, "B_scale"), (s_c, "C_scale")):
        if v.size != 1:
            raise unsupported(ctx, f"'{name}' must be per tensor on the Systolic array")
    if a.shape != b.shape:
        raise unsupported(
            ctx,
            f"the Systolic QLinearAdd needs equal shapes, got {list(a.shape)} and {list(b.shape)}",
        )
    relu = bool(attrs.get("relu", 0))
    s_a, s_b, s_c = s_a.reshape(()), s_b.reshape(()), s_c.reshape(())
    if a.ndim == 0:
        return dp.qlinear_add_systolic(a, s_a, b, s_b, s_c, relu)
    # Elementwise: the leading axis is cut in one piece per core.
    return threads.map_chunks(
        lambda a_, b_: dp.qlinear_add_systolic(a_, s_a, b_, s_b, s_c, relu), [a, b], np.int8
    )


def _span_kind(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> str:
    """How onnxruntime's broadcast looper calls the kernel: "a" when A is the scalar of
    each span, "b" when B is, "general" when both are vectors."""
    if int(np.prod(a_shape)) == 1:
        return "a"
    if int(np.prod(b_shape)) == 1:
        return "b"
    out = np.broadcast_shapes(a_shape, b_shape)
    nd = len(out)
    a_full = (1,) * (nd - len(a_shape)) + tuple(a_shape)
    b_full = (1,) * (nd - len(b_shape)) + tuple(b_shape)
    for i in range(nd - 1, -1, -1):
        if out[i] == 1:
            continue
        if a_full[i] == 1:
            return "a"
        if b_full[i] == 1:
            return "b"
        return "general"
    return "general"


def _cpu(ins: list[np.ndarray | None], ctx: KernelContext) -> np.ndarray:
    a, s_a, za, b, s_b, zb, s_c, zc = ins
    check_dtype(a, INT8_TYPES, "A", ctx)
    if b.dtype != a.dtype:
        raise fail(ctx, f"A is {a.dtype.name} but B is {b.dtype.name}")
    za = per_tensor(zero_point_or_default(za, a, "A_zero_point", ctx), "A_zero_point", ctx)
    zb = per_tensor(zero_point_or_default(zb, b, "B_zero_point", ctx), "B_zero_point", ctx)
    zc = per_tensor(zero_point_or_default(zc, a, "C_zero_point", ctx), "C_zero_point", ctx)
    s_a, s_b, s_c = (per_tensor(v, n, ctx) for v, n in ((s_a, "A_scale"), (s_b, "B_scale"),
                                                      (s_c, "C_scale")))  # fmt: skip
    try:
        out_shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise fail(ctx, f"shapes {list(a.shape)} and {list(b.shape)} do not broadcast") from None
    kind = _span_kind(a.shape, b.shape)
    ab = np.broadcast_to(a, out_shape)
    bb = np.broadcast_to(b, out_shape)
    if kind == "a":  # onnxruntime passes the scalar side as the kernel's B
        return dp.qlinear_add_ort(bb, s_b, zb, ab, s_a, za, s_c, zc, a.dtype)
    return dp.qlinear_add_ort(ab, s_a, za, bb, s_b, zb, s_c, zc, a.dtype)


@register("QLinearAdd", "com.microsoft")
def qlinear_add(
    inputs: Sequence[np.ndarray | None], attrs: dict[str, Any], ctx: KernelContext
) -> list[np.ndarray]:
    """com.microsoft QLinearAdd under the rule of ``ctx.target`` ("systolic" or "cpu")."""
    required = (True, True, False, True, True, False, True, False)
    ins = [arg(inputs, i, n, ctx, r) for i, (n, r) in enumerate(zip(_NAMES, required, strict=True))]
    if ctx.target == "systolic":
        return [_systolic(ins, attrs, ctx)]
    if ctx.target == "cpu":
        return [_cpu(ins, ctx)]
    raise fail(ctx, f"unknown target {ctx.target!r} (expected one of {', '.join(TARGETS)})")
