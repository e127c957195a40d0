"""MaxPool with ONNX semantics for any element type (int8 and uint8 included), as
onnxruntime's CPU kernel computes it.

Padding is excluded from the max; auto_pad, ceil_mode, dilations and storage_order
follow ONNX. Integer tensors (the quantized graphs' MaxPool) match onnxruntime exactly.
For float tensors holding NaN, onnxruntime's kernels disagree with each other (its 1-D,
MLAS 2-D/3-D and with-Indices kernels treat NaN differently); here NaN propagates
through Y (NumPy max), except with Indices, where onnxruntime's scan is reproduced.
The optional Indices output is produced when the executor says the node has two outputs
(``ctx.extra["num_outputs"]``): flat indices into X, row-major (storage_order 0) or
column-major (1) within each (n, c) plane, the first occurrence of the maximum.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime_emulator import datapath as dp
from runtime_emulator import threads
from runtime_emulator.kernels import KernelContext, register
from runtime_emulator.kernels._common import arg, attr_str, fail


def _gathered_pool(
    x: np.ndarray,
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    pads: list[int],
    outs: list[int],
    storage_order: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(Y, Indices) by gathering every window, as onnxruntime's MaxPool with Indices
    scans them: start at the window's first valid element (a leading NaN stays) and keep
    strictly greater values, so the first occurrence of the maximum wins."""
    n = len(kernel)
    sizes = x.shape[2:]
    coords, valid = [], []
    for i in range(n):
        c = (np.arange(outs[i]) * strides[i] - pads[i])[:, None]
        c = c + np.arange(kernel[i])[None, :] * dilations[i]  # (O_i, K_i)
        shape = [1] * (2 * n)
        shape[i], shape[n + i] = outs[i], kernel[i]
        coords.append(c.reshape(shape))
        valid.append(((c >= 0) & (c < sizes[i])).reshape(shape))
    index = tuple(np.clip(c, 0, s - 1) for c, s in zip(coords, sizes, strict=True))
    vals = x[(slice(None), slice(None)) + index]  # (N, C, *O, *K)
    ok = np.broadcast_to(np.logical_and.reduce(np.broadcast_arrays(*valid)), vals.shape)
    taps = int(np.prod(kernel))
    flat_shape = vals.shape[: 2 + n] + (taps,)
    vals = vals.reshape(flat_shape)
    ok = ok.reshape(flat_shape)
    v64 = vals.astype(np.float64)
    real = ok & ~np.isnan(v64)
    key = np.where(real, v64, -np.inf)
    top = key.max(axis=-1, keepdims=True)
    first_max = np.argmax(real & (key == top), axis=-1)
    first_valid = np.argmax(ok, axis=-1)
    lead = np.take_along_axis(v64, first_valid[..., None], axis=-1)[..., 0]
    leading_nan = np.isnan(lead) | ~real.any(axis=-1)
    arg_t = np.where(leading_nan, first_valid, first_max)
    y = np.where(leading_nan, lead, top[..., 0]).astype(x.dtype)
    tap = np.unravel_index(arg_t, kernel)
    plane = np.zeros(arg_t.shape, dtype=np.int64)
    for i in range(n):
        o = np.arange(outs[i]).reshape([outs[i] if j == i else 1 for j in range(n)])
        pos = o * strides[i] - pads[i] + tap[i] * dilations[i]
        step = int(np.prod(sizes[i + 1 :])) if storage_order == 0 else int(np.prod(sizes[:i]))
        plane = plane + pos.astype(np.int64) * step
    nc = np.arange(x.shape[0] * x.shape[1], dtype=np.int64).reshape(x.shape[:2] + (1,) * n)
    return y, nc * int(np.prod(sizes)) + plane


@register("MaxPool")
def max_pool(
    inputs: Sequence[np.ndarray | None], attrs: dict[str, Any], ctx: KernelContext
) -> list[np.ndarray]:
    """ONNX MaxPool: Y, and Indices when the node has two outputs."""
    x = arg(inputs, 0, "X", ctx, True)
    want_indices = int(ctx.extra.get("num_outputs", 1)) > 1
    if x.ndim < 3:
        raise fail(ctx, f"X must be N-D with N >= 3, got shape {list(x.shape)}")
    n = x.ndim - 2
    kernel = list(attrs.get("kernel_shape") or [])
    if len(kernel) != n or min(kernel) < 1:
        raise fail(ctx, f"kernel_shape {kernel} does not match a {n}-D pool")
    strides = list(attrs.get("strides") or [1] * n)
    dilations = list(attrs.get("dilations") or [1] * n)
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    storage_order = int(attrs.get("storage_order", 0))
    if storage_order not in (0, 1):
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
    outs = [
        dp.pool_output_size(
            x.shape[2 + i], kernel[i], strides[i], dilations[i], pads[i], pads[i + n], ceil_mode
        )
        for i in range(n)
    ]
    if min(outs) < 1:
        raise fail(ctx, "the pool window does not fit the input")
    if want_indices:
        return list(_gathered_pool(x, kernel, strides, dilations, pads, outs, storage_order))
    # Samples are pooled independently: one piece of the batch per core.
    y = threads.map_chunks(
        lambda xb: dp.max_pool(xb, kernel, strides, pads, dilations=dilations, ceil_mode=ceil_mode),
        [x],
        x.dtype,
    )
    return [y]
