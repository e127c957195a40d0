"""Input checks and attribute helpers shared by the kernel modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime_emulator.errors import EmulatorError, UnsupportedError
from runtime_emulator.kernels import KernelContext

#: Element types the integer kernels compute with.
INT8_TYPES = (np.dtype(np.int8), np.dtype(np.uint8))
QUANT_TYPES = INT8_TYPES + (np.dtype(np.int16), np.dtype(np.uint16))
#: Standard NumPy element types; anything else (float8, int4, int2, float4, bfloat16
#: from ml_dtypes) is refused with :class:`UnsupportedError`.
PLAIN_TYPES = frozenset(
    np.dtype(t)
    for t in (
        np.int8,
        np.uint8,
        np.int16,
        np.uint16,
        np.int32,
        np.uint32,
        np.int64,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
        np.bool_,
    )
)


def where(ctx: KernelContext) -> str:
    """How error messages name the node."""
    return f"node '{ctx.node_name}'"


def fail(ctx: KernelContext, msg: str) -> EmulatorError:
    return EmulatorError(f"{where(ctx)}: {msg}")


def unsupported(ctx: KernelContext, msg: str) -> UnsupportedError:
    return UnsupportedError(f"{where(ctx)}: {msg}")


def arg(
    inputs: Sequence[np.ndarray | None], i: int, name: str, ctx: KernelContext, required: bool
) -> np.ndarray | None:
    """Input ``i`` as an array (None when omitted); refuses unsupported element types."""
    v = inputs[i] if i < len(inputs) else None
    if v is None:
        if required:
            raise fail(ctx, f"missing input {i} ({name})")
        return None
    v = np.asarray(v)
    if v.dtype not in PLAIN_TYPES:
        raise unsupported(
            ctx,
            f"input '{name}': element type {v.dtype.name} is not supported by the emulator "
            "(supported: int8, uint8, int16, uint16, int32, float16, float32)",
        )
    return v


def check_dtype(v: np.ndarray, allowed: Sequence[np.dtype], name: str, ctx: KernelContext) -> None:
    if v.dtype not in allowed:
        names = ", ".join(np.dtype(d).name for d in allowed)
        raise unsupported(ctx, f"input '{name}' is {v.dtype.name}; this op takes {names}")


def per_tensor(v: np.ndarray, name: str, ctx: KernelContext) -> np.ndarray:
    """A one-element parameter as a 0-d array."""
    if v.size != 1:
        raise fail(ctx, f"'{name}' must be a scalar (per tensor), got shape {list(v.shape)}")
    return v.reshape(())


def per_channel(v: np.ndarray, n: int, name: str, ctx: KernelContext) -> np.ndarray:
    """A per-tensor or per-channel parameter as a 0-d or length-``n`` 1-D array."""
    if v.size == 1:
        return v.reshape(())
    if v.ndim != 1 or v.size != n:
        raise fail(
            ctx,
            f"'{name}' must be a scalar or a 1-D tensor of {n} elements, got shape {list(v.shape)}",
        )
    return v


def zero_point_or_default(
    zp: np.ndarray | None, q: np.ndarray, name: str, ctx: KernelContext
) -> np.ndarray:
    """The zero point (0 of ``q``'s type when omitted), checked to match ``q``'s type."""
    if zp is None:
        return np.zeros((), dtype=q.dtype)
    if zp.dtype != q.dtype:
        raise fail(ctx, f"'{name}' is {zp.dtype.name} but its tensor is {q.dtype.name}")
    return zp


def conv_attrs(
    attrs: dict[str, Any], spatial: Sequence[int], kernel: Sequence[int], ctx: KernelContext
) -> tuple[list[int], list[int], list[int], int, str, list[int] | None]:
    """(strides, dilations, kernel, group, auto_pad, pads) of a Conv-like node, checked."""
    n = len(spatial)
    ks = list(attrs.get("kernel_shape") or kernel)
    if list(ks) != list(kernel):
        raise fail(ctx, f"kernel_shape {ks} does not match the weight's {list(kernel)}")
    strides = list(attrs.get("strides") or [1] * n)
    dilations = list(attrs.get("dilations") or [1] * n)
    pads = attrs.get("pads")
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    group = int(attrs.get("group", 1))
    if len(strides) != n or len(dilations) != n or (pads and len(pads) != 2 * n):
        raise fail(ctx, "strides, dilations and pads must match the number of spatial axes")
    if min(strides) < 1 or min(dilations) < 1 or group < 1:
        raise fail(ctx, "strides, dilations and group must be positive")
    if pads and min(pads) < 0:
        raise fail(ctx, f"pads must be non-negative, got {list(pads)}")
    if auto_pad not in ("NOTSET", "", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise fail(ctx, f"unknown auto_pad {auto_pad!r}")
    return strides, dilations, ks, group, auto_pad, list(pads) if pads else None


def attr_str(attrs: dict[str, Any], name: str, default: str) -> str:
    v = attrs.get(name, default)
    return v.decode() if isinstance(v, bytes) else str(v)


CONV_INPUT_NAMES = ("x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale",
                    "y_zero_point", "B")  # fmt: skip
MATMUL_INPUT_NAMES = ("a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point",
                      "y_scale", "y_zero_point")  # fmt: skip


def check_systolic_operands(
    inputs: Sequence[np.ndarray | None], names: Sequence[str], ctx: KernelContext
) -> None:
    """The Systolic array's number formats for a QLinearConv/QLinearMatMul-shaped input
    list: int8 tensors (0, 3), zero points (2, 5, 7) absent or 0, per-tensor scales
    (1, 4, 6)."""
    for i in (0, 3):
        v = arg(inputs, i, names[i], ctx, True)
        if v.dtype != np.int8:
            raise unsupported(ctx, f"'{names[i]}' is {v.dtype.name}; the Systolic array takes int8")
    for i in (2, 5, 7):
        v = arg(inputs, i, names[i], ctx, False)
        if v is not None and (v.dtype != np.int8 or np.any(v != 0)):
            raise unsupported(
                ctx, f"'{names[i]}' must be int8 zero (the Systolic array is symmetric)"
            )
    for i in (1, 4, 6):
        v = arg(inputs, i, names[i], ctx, True)
        if v.size != 1:
            raise unsupported(
                ctx,
                f"'{names[i]}' has shape {list(v.shape)}; the Systolic array supports "
                "per-tensor scales only",
            )
