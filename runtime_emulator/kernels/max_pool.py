"""MaxPool with ONNX semantics for any element type (int8 and uint8 included).

Padding is excluded from the max; auto_pad, ceil_mode and dilations follow ONNX. The
optional Indices output is not produced: a node that asks for it (the executor passes
``ctx.extra["num_outputs"]``) is refused with :class:`UnsupportedError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime_emulator import datapath as dp
from runtime_emulator.kernels import KernelContext, register
from runtime_emulator.kernels._common import arg, attr_str, fail, unsupported


@register("MaxPool")
def max_pool(
    inputs: Sequence[np.ndarray | None], attrs: dict[str, Any], ctx: KernelContext
) -> list[np.ndarray]:
    """ONNX MaxPool (output Y only)."""
    x = arg(inputs, 0, "X", ctx, True)
    if int(ctx.extra.get("num_outputs", 1)) > 1:
        raise unsupported(ctx, "MaxPool's Indices output is not produced by the emulator")
    if x.ndim < 3:
        raise fail(ctx, f"X must be N-D with N >= 3, got shape {list(x.shape)}")
    n = x.ndim - 2
    kernel = list(attrs.get("kernel_shape") or [])
    if len(kernel) != n or min(kernel) < 1:
        raise fail(ctx, f"kernel_shape {kernel} does not match a {n}-D pool")
    strides = list(attrs.get("strides") or [1] * n)
    dilations = list(attrs.get("dilations") or [1] * n)
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    if int(attrs.get("storage_order", 0)) not in (0, 1):
        raise fail(ctx, "storage_order must be 0 or 1")
    auto_pad = attr_str(attrs, "auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise fail(ctx, f"unknown auto_pad {auto_pad!r}")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER", "VALID") and ceil_mode:
        raise fail(ctx, "ceil_mode cannot be combined with auto_pad")
    pads = dp.resolve_pads(
        auto_pad, x.shape[2:], kernel, strides, dilations, attrs.get("pads"), allow_negative=True
    )
    if len(pads) != 2 * n or len(strides) != n or len(dilations) != n:
        raise fail(ctx, "pads, strides and dilations must match the pool's rank")
    for i in range(n):
        size = dp.pool_output_size(
            x.shape[2 + i], kernel[i], strides[i], dilations[i], pads[i], pads[i + n], ceil_mode
        )
        if size < 1:
            raise fail(ctx, f"the pool window does not fit along spatial axis {i}")
    y = dp.max_pool(x, kernel, strides, pads, dilations=dilations, ceil_mode=ceil_mode)
    return [y]
