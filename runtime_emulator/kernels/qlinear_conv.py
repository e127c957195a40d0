"""QLinearConv and ConvInteger (NCHW / N-D, OIHW weights), standard ONNX semantics.

QLinearConv accepts uint8 and int8, non-zero zero points and per-output-channel weight
scales and zero points, as ONNX allows (on the "cpu" target; the "systolic" target
refuses what the array cannot run). An extra int attribute ``relu`` (the Systolic
runtime's fused ReLU) clamps the output at its zero point after saturation. The
arithmetic is the accelerator's (and onnxruntime's): exact integer accumulation,
``wrap32(acc + bias)``, ``M = f32(f32(s_x * s_w) / s_y)``, ``f32(f32(acc) * M)``, round
half to even, add the zero point, saturate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime_emulator import datapath as dp
from runtime_emulator import ort_engine
from runtime_emulator.conv_blocks import ConvWeights, conv_requantize, prepare_conv_weights
from runtime_emulator.kernels import KernelContext, register
from runtime_emulator.kernels._common import (
    CONV_INPUT_NAMES,
    INT8_TYPES,
    arg,
    check_dtype,
    check_systolic_operands,
    conv_attrs,
    fail,
    per_channel,
    per_tensor,
    zero_point_or_default,
)


def _centered(q: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """``q - zp`` as int16 (8-bit operands differ by at most 255); ``q`` itself when every
    zero point is 0."""
    if not np.any(zp):
        return q
    return q.astype(np.int16) - zp.astype(np.int16)


def conv_integer_core(
    x: np.ndarray,
    x_zp: np.ndarray,
    w: np.ndarray,
    w_zp: np.ndarray,
    attrs: dict[str, Any],
    ctx: KernelContext,
    bias: np.ndarray | None = None,
    as_f32: bool = False,
) -> np.ndarray:
    """The int32 accumulator ``wrap32(bias + sum (x - x_zp) * (w - w_zp))`` of an NC...
    integer convolution (with ``as_f32``, that accumulator converted to float32, the first
    step of requantization)."""
    geometry = conv_geometry(x, w, attrs, ctx)
    wz = w_zp.reshape((-1,) + (1,) * (w.ndim - 1)) if w_zp.ndim == 1 else w_zp
    accumulate = dp.conv_accumulate_f32 if as_f32 else dp.conv_accumulate_wrap32
    return accumulate(_centered(x, x_zp), _centered(w, wz), bias, **geometry)


def conv_geometry(
    x: np.ndarray, w: np.ndarray, attrs: dict[str, Any], ctx: KernelContext
) -> dict[str, Any]:
    """strides, pads (explicit, after auto_pad), dilations and group of an NC... conv,
    checked against the shapes."""
    if x.ndim < 3 or w.ndim != x.ndim:
        raise fail(ctx, f"x {list(x.shape)} and w {list(w.shape)} must be N-D with equal rank")
    spatial = list(x.shape[2:])
    strides, dilations, kernel, group, auto_pad, pads = conv_attrs(
        attrs, spatial, list(w.shape[2:]), ctx
    )
    c, m = x.shape[1], w.shape[0]
    if c % group or m % group or w.shape[1] * group != c:
        raise fail(ctx, f"group {group} does not fit x channels {c}, w shape {list(w.shape)}")
    pads = dp.resolve_pads(auto_pad, spatial, kernel, strides, dilations, pads)
    n = len(spatial)
    for i, size in enumerate(spatial):
        span = pads[i] + pads[i + n]
        if dp.conv_output_size(size, kernel[i], strides[i], dilations[i], span) < 1:
            raise fail(ctx, f"the kernel does not fit the padded input along spatial axis {i}")
    return {"strides": strides, "pads": pads, "dilations": dilations, "group": group}


def qlinear_conv_nchw(
    inputs: Sequence[np.ndarray | None],
    attrs: dict[str, Any],
    ctx: KernelContext,
    *,
    nhwc_x: np.ndarray | None = None,
) -> np.ndarray:
    """QLinearConv on NC... tensors: the shared body of QLinearConv and QLinearConv_nhwc.

    With ``nhwc_x`` (an N...C input whose NC... view is ``inputs[0]``) the result is N...C.
    """
    x = arg(inputs, 0, "x", ctx, True)
    x_scale = arg(inputs, 1, "x_scale", ctx, True)
    x_zp = arg(inputs, 2, "x_zero_point", ctx, False)
    w = arg(inputs, 3, "w", ctx, True)
    w_scale = arg(inputs, 4, "w_scale", ctx, True)
    w_zp = arg(inputs, 5, "w_zero_point", ctx, False)
    y_scale = arg(inputs, 6, "y_scale", ctx, True)
    y_zp = arg(inputs, 7, "y_zero_point", ctx, False)
    bias = arg(inputs, 8, "B", ctx, False)
    check_dtype(x, INT8_TYPES, "x", ctx)
    check_dtype(w, INT8_TYPES, "w", ctx)
    m = w.shape[0]
    x_zp = per_tensor(zero_point_or_default(x_zp, x, "x_zero_point", ctx), "x_zero_point", ctx)
    w_zp = per_channel(zero_point_or_default(w_zp, w, "w_zero_point", ctx), m, "w_zero_point", ctx)
    y_dtype = y_zp.dtype if y_zp is not None else x.dtype
    if y_dtype not in INT8_TYPES:
        raise fail(ctx, f"y_zero_point is {np.dtype(y_dtype).name}; expected int8 or uint8")
    y_zp = per_tensor(y_zp, "y_zero_point", ctx) if y_zp is not None else np.zeros((), y_dtype)
    x_scale = per_tensor(x_scale, "x_scale", ctx)
    y_scale = per_tensor(y_scale, "y_scale", ctx)
    w_scale = per_channel(w_scale, m, "w_scale", ctx)
    if bias is not None and (bias.dtype != np.int32 or bias.shape != (m,)):
        raise fail(ctx, f"B must be int32 of shape [{m}], got {bias.dtype.name} {list(bias.shape)}")
    geometry = conv_geometry(x, w, attrs, ctx)
    relu = bool(attrs.get("relu", 0))
    layout = "nchw" if nhwc_x is None else "nhwc"
    layer = _compiled_layer(
        inputs, x, (x_scale, w_scale, y_scale), (x_zp, w_zp, y_zp), y_dtype, relu, geometry,
        layout, ctx,
    )  # fmt: skip
    y = ort_engine.run_layer(ctx.extra, layer, x if nhwc_x is None else nhwc_x)
    if y is not None:
        return y
    wc, prepared = _weights(w, w_zp, inputs, ctx)
    y = conv_requantize(
        _centered(np.ascontiguousarray(x), x_zp),
        wc,
        bias,
        dp.requant_multiplier(x_scale, w_scale, y_scale),
        y_dtype,
        y_zp,
        relu,
        weights=prepared,
        **geometry,
    )
    return y if nhwc_x is None else np.ascontiguousarray(np.moveaxis(y, 1, -1))


def _compiled_layer(
    inputs: Sequence[np.ndarray | None],
    x: np.ndarray,
    scales: tuple[np.ndarray, np.ndarray, np.ndarray],
    zero_points: tuple[np.ndarray, np.ndarray, np.ndarray],
    y_dtype: np.dtype,
    relu: bool,
    geometry: dict[str, Any],
    layout: str,
    ctx: KernelContext,
) -> ort_engine.Layer | None:
    """The layer compiled for the onnxruntime engine (:mod:`runtime_emulator.ort_engine`);
    None sends the call to the NumPy datapath."""
    if x.size == 0 or zero_points[1].size != 1:
        return None

    def spec() -> ort_engine.LayerSpec:
        return ort_engine.LayerSpec.from_operands(
            x.dtype, inputs[3], scales, zero_points, y_dtype,
            bias=inputs[8] if len(inputs) > 8 else None, relu=relu, layout=layout, **geometry,
        )  # fmt: skip

    # The pads are in the key: with auto_pad they follow the input's spatial size.
    key = (x.dtype, layout, tuple(geometry["pads"]))
    return ort_engine.node_layer(ctx.extra, inputs, key, spec)


def _weights(
    w: np.ndarray, w_zp: np.ndarray, inputs: Sequence[np.ndarray | None], ctx: KernelContext
) -> tuple[np.ndarray, ConvWeights | None]:
    """``w - w_zp`` and its :class:`ConvWeights`, made once per model when the executor
    says ``w`` and its zero point are constants (read-only initializers, the same arrays
    on every run; ``ctx.extra["constant_inputs"]``): then kept in the node's context."""
    const = ctx.extra.get("constant_inputs", ())
    w_in = inputs[3]
    zp_in = inputs[5] if len(inputs) > 5 else None
    if 3 not in const or (zp_in is not None and 5 not in const):
        return _centered(w, w_zp.reshape((-1,) + (1,) * (w.ndim - 1))), None
    cached = ctx.extra.get("conv_weights")
    if cached is not None and cached[0] is w_in and cached[1] is zp_in:
        return cached[2], cached[3]
    wc = _centered(w, w_zp.reshape((-1,) + (1,) * (w.ndim - 1)))
    prepared = prepare_conv_weights(wc)
    # The entry keeps the input arrays alive: an identity match means the same arrays.
    ctx.extra["conv_weights"] = (w_in, zp_in, wc, prepared)
    return wc, prepared


@register("QLinearConv")
def qlinear_conv(
    inputs: Sequence[np.ndarray | None], attrs: dict[str, Any], ctx: KernelContext
) -> list[np.ndarray]:
    """ONNX QLinearConv (plus the optional ``relu`` attribute). On the Systolic target
    the hardware's formats are required (int8, zero points 0, per-tensor scales)."""
    if ctx.target == "systolic":
        check_systolic_operands(inputs, CONV_INPUT_NAMES, ctx)
    return [qlinear_conv_nchw(inputs, attrs, ctx)]


@register("ConvInteger")
def conv_integer(
    inputs: Sequence[np.ndarray | None], attrs: dict[str, Any], ctx: KernelContext
) -> list[np.ndarray]:
    """ONNX ConvInteger: ``sum (x - x_zp) * (w - w_zp)`` as int32 (wrapping)."""
    x = arg(inputs, 0, "x", ctx, True)
    w = arg(inputs, 1, "w", ctx, True)
    x_zp = arg(inputs, 2, "x_zero_point", ctx, False)
    w_zp = arg(inputs, 3, "w_zero_point", ctx, False)
    check_dtype(x, INT8_TYPES, "x", ctx)
    check_dtype(w, INT8_TYPES, "w", ctx)
    x_zp = per_tensor(zero_point_or_default(x_zp, x, "x_zero_point", ctx), "x_zero_point", ctx)
    w_zp = per_channel(
        zero_point_or_default(w_zp, w, "w_zero_point", ctx), w.shape[0], "w_zero_point", ctx
    )
    return [conv_integer_core(x, x_zp, w, w_zp, attrs, ctx)]
