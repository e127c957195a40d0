"""The exact accumulators of an array layer, recomputed from its traced integer inputs.

The emulator does not expose its int32 accumulators, so they are recomputed here with
the datapath's exact integer convolution and matmul: ``bias + sum (x - x_zp) * (w - w_zp)``
as int64, before the int32 wrap, so that a sum beyond the int32 range shows as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from runtime_emulator import datapath as dp

ACC_OPS = ("QLinearConv", "QLinearConv_nhwc", "QLinearMatMul")


def _centered(q: np.ndarray, zp: np.ndarray | None) -> np.ndarray:
    """``q - zp`` as int16 (8-bit operands differ by at most 255), else int64."""
    q = np.asarray(q)
    small = q.dtype.itemsize == 1
    dtype = np.int16 if small else np.int64
    if zp is None or not np.any(zp):
        return q.astype(dtype)
    return q.astype(dtype) - np.asarray(zp).astype(dtype)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def layer_accumulators(node: onnx.NodeProto, inputs: Sequence[np.ndarray | None]) -> np.ndarray:
    """The exact accumulators (int64, bias included, not wrapped) of a QLinearConv,
    QLinearConv_nhwc (before any fused pooling; NCHW order) or QLinearMatMul node.

    ``inputs`` are the node's input arrays in ONNX order (None for omitted ones).
    """
    if node.op_type not in ACC_OPS:
        raise ValueError(f"node '{node.name}': {node.op_type} has no array accumulator")
    ins = list(inputs) + [None] * (9 - len(inputs))
    x, zx, w, zw = ins[0], ins[2], ins[3], ins[5]
    if node.op_type == "QLinearMatMul":
        wz = None if zw is None else np.asarray(zw).reshape(-1)
        if wz is not None and wz.size > 1:  # per-column zero point of b
            wz = wz.reshape(1, -1)
        xz = None if zx is None else np.asarray(zx)
        if xz is not None and xz.size > 1:  # per-row zero point of a
            xz = xz.reshape(*xz.shape, 1) if xz.ndim < np.ndim(x) else xz
        return dp.int_matmul(_centered(x, xz), _centered(w, wz))
    attrs = _attrs(node)
    x = np.asarray(x)
    w = np.asarray(w)
    if node.op_type == "QLinearConv_nhwc":
        x = x.transpose(0, x.ndim - 1, *range(1, x.ndim - 1))  # NHWC -> NCHW
        w = w.transpose(w.ndim - 1, w.ndim - 2, *range(w.ndim - 2))  # HWIO -> OIHW
    wz = None if zw is None else np.asarray(zw)
    if wz is not None and wz.size > 1:
        wz = wz.reshape((-1,) + (1,) * (w.ndim - 1))
    spatial = list(x.shape[2:])
    kernel = list(attrs.get("kernel_shape") or w.shape[2:])
    n = len(spatial)
    strides = list(attrs.get("strides") or [1] * n)
    dilations = list(attrs.get("dilations") or [1] * n)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    pads = dp.resolve_pads(auto_pad, spatial, kernel, strides, dilations, attrs.get("pads"))
    acc = dp.conv_accumulate(
        _centered(x, zx),
        _centered(w, wz),
        strides=strides,
        pads=pads,
        dilations=dilations,
        group=int(attrs.get("group", 1)),
    )
    bias = ins[8]
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64).reshape(1, -1, *([1] * (acc.ndim - 2)))
    return acc


def input_absmax(inputs: Sequence[np.ndarray | None]) -> int:
    """``max |x - x_zp|`` of a layer's first input (0 when empty)."""
    x = inputs[0]
    zp = inputs[2] if len(inputs) > 2 else None
    if x is None or np.size(x) == 0:
        return 0
    c = np.asarray(x).astype(np.int64)
    if zp is not None:
        z = np.asarray(zp).astype(np.int64)
        if z.size > 1 and z.ndim < c.ndim:
            z = z.reshape(*z.shape, *([1] * (c.ndim - z.ndim)))
        c = c - z
    return int(np.abs(c).max())
