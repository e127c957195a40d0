"""QLinearConv_nhwc: the Systolic runtime's NHWC conv (HWIO weights) with fused ReLU and
fused max pooling; registered in the default domain (as the Gemmini fork of onnxruntime
does) and in the SDK's own domain.

The hardware supports int8 with zero points 0 and per-tensor scales only; anything else
is refused. Which padding rule a fused pool follows depends on how the runtime runs the
conv (spec section 3): :func:`conv_path` decides it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from runtime_emulator import datapath as dp
from runtime_emulator.kernels import SYSTOLIC_DOMAIN, KernelContext, register
from runtime_emulator.kernels._common import (
    CONV_INPUT_NAMES,
    attr_str,
    check_systolic_operands,
    fail,
    unsupported,
)
from runtime_emulator.kernels.qlinear_conv import qlinear_conv_nchw

ConvPath = Literal["accelerator", "fallback"]


def _resolved_conv_geometry(
    attrs: dict[str, Any], x_shape: Sequence[int], w_shape: Sequence[int]
) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(kernel, strides, dilations, pads, pre-pool output HW) of an NHWC/HWIO conv."""
    spatial = [int(x_shape[1]), int(x_shape[2])]
    kernel = [int(w_shape[0]), int(w_shape[1])]
    strides = list(attrs.get("strides") or [1, 1])
    dilations = list(attrs.get("dilations") or [1, 1])
    pads = dp.resolve_pads(
        attr_str(attrs, "auto_pad", "NOTSET"),
        spatial,
        kernel,
        strides,
        dilations,
        attrs.get("pads"),
    )
    out = [
        dp.conv_output_size(spatial[i], kernel[i], strides[i], dilations[i], pads[i] + pads[i + 2])
        for i in range(2)
    ]
    return kernel, strides, dilations, pads, out


def conv_path(attrs: dict[str, Any], x_shape: Sequence[int], w_shape: Sequence[int]) -> ConvPath:
    """Which way the Systolic runtime executes a QLinearConv_nhwc node (spec section 3).

    ``x_shape`` is NHWC, ``w_shape`` HWIO. "accelerator": group 1, every dilation 1,
    square input, square pre-pool output, square kernel, all four pads equal, equal
    strides, and with ``maxpool=1`` a square pool kernel, equal pool strides and
    ``pool_pads[0] == pool_pads[1]`` (only those two entries are compared). Anything else
    runs as im2col plus a matmul ("fallback", same arithmetic, pooling on the host with
    ONNX MaxPool rules).
    """
    kernel, strides, dilations, pads, out = _resolved_conv_geometry(attrs, x_shape, w_shape)
    ok = (
        int(attrs.get("group", 1)) == 1
        and all(d == 1 for d in dilations)
        and x_shape[1] == x_shape[2]
        and out[0] == out[1]
        and kernel[0] == kernel[1]
        and len(set(pads)) == 1
        and strides[0] == strides[1]
    )
    if ok and int(attrs.get("maxpool", 0)):
        pk = list(attrs.get("pool_kernel_shape") or [])
        ps = list(attrs.get("pool_strides") or [1, 1])
        pp = list(attrs.get("pool_pads") or [0, 0, 0, 0])
        ok = len(pk) == 2 and pk[0] == pk[1] and ps[0] == ps[1] and pp[0] == pp[1]
    return "accelerator" if ok else "fallback"


def _check_pool_attrs(attrs: dict[str, Any], ctx: KernelContext) -> tuple[list[int], ...]:
    pk = list(attrs.get("pool_kernel_shape") or [])
    if len(pk) != 2 or min(pk) < 1:
        raise fail(ctx, f"maxpool=1 needs a 2-D pool_kernel_shape, got {pk}")
    ps = list(attrs.get("pool_strides") or [1, 1])
    pp = list(attrs.get("pool_pads") or [0, 0, 0, 0])
    if len(ps) != 2 or len(pp) != 4 or min(ps) < 1 or min(pp) < 0:
        raise fail(ctx, f"bad pool_strides {ps} or pool_pads {pp}")
    if attr_str(attrs, "pool_auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise unsupported(ctx, "a fused max pool must have pool_auto_pad NOTSET")
    if int(attrs.get("pool_ceil_mode", 0)) or int(attrs.get("pool_storage_order", 0)):
        raise unsupported(ctx, "a fused max pool must have ceil_mode 0 and storage_order 0")
    if any(d != 1 for d in (attrs.get("pool_dilations") or [1, 1])):
        raise unsupported(ctx, "a fused max pool must have dilations 1")
    return pk, ps, pp


def _oihw(w: np.ndarray, ctx: KernelContext) -> np.ndarray:
    """HWIO weights as OIHW; made once per model when ``w`` is a constant (the node's
    context keeps it, so the NCHW body sees the same array on every run)."""
    if 3 not in ctx.extra.get("constant_inputs", ()):
        return np.ascontiguousarray(w.transpose(3, 2, 0, 1))
    cached = ctx.extra.get("oihw_weights")
    if cached is None or cached[0] is not w:
        cached = ctx.extra["oihw_weights"] = (w, np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
    return cached[1]


@register("QLinearConv_nhwc", "", SYSTOLIC_DOMAIN)
def qlinear_conv_nhwc(
    inputs: Sequence[np.ndarray | None], attrs: dict[str, Any], ctx: KernelContext
) -> list[np.ndarray]:
    """The Systolic NHWC conv: x [N,H,W,C], w [kH,kW,C/group,M], y [N,H',W',M]."""
    check_systolic_operands(inputs, CONV_INPUT_NAMES, ctx)
    x, w = inputs[0], inputs[3]
    if x.ndim != 4 or w.ndim != 4:
        raise fail(ctx, f"x {list(x.shape)} must be NHWC and w {list(w.shape)} HWIO (4-D)")
    nchw = list(inputs)
    nchw[0] = x.transpose(0, 3, 1, 2)  # a view; copied only where the NCHW data is needed
    nchw[3] = _oihw(w, ctx)
    if not int(attrs.get("maxpool", 0)):
        return [qlinear_conv_nchw(nchw, attrs, ctx, nhwc_x=x)]
    y = qlinear_conv_nchw(nchw, attrs, ctx)
    pk, ps, pp = _check_pool_attrs(attrs, ctx)
    if conv_path(attrs, x.shape, w.shape) == "accelerator":
        # Pooling as outputs leave the accumulator: uniform pad pool_pads[0], pad = 0.
        p = pp[0]
        if (y.shape[2] + 2 * p - pk[0]) // ps[0] + 1 < 1:
            raise fail(ctx, "the pool window does not fit the conv output")
        y = dp.max_pool(y, pk, ps, [p] * 4, pad_value=0)
    else:
        if any(y.shape[2 + i] + pp[i] + pp[i + 2] < pk[i] for i in range(2)):
            raise fail(ctx, "the pool window does not fit the conv output")
        y = dp.max_pool(y, pk, ps, pp, pad_value=None)
    return [np.ascontiguousarray(y.transpose(0, 2, 3, 1))]
