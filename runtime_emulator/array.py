"""The array model: how a layer maps onto a DIM x DIM systolic array.

An accelerator layer is a matmul ``[I x K] @ [K x J]`` per group:

- QLinearConv / QLinearConv_nhwc as im2col: ``I = N*OH*OW`` (the conv's output
  before any fused pooling), ``K = C/group * kH * kW``, ``J = OC/group``;
- QLinearMatMul ``A[..., M, K] @ B[..., K, N]``: ``I = prod(A.shape[:-1])``, ``K``,
  ``J = N`` (and one group per batch of B when B has batch dimensions).

Cycle model (weight-stationary): the array computes one ``DIM x DIM x DIM`` block
(DIM rows of inputs through a DIM x DIM weight tile) in DIM cycles, and a block is
occupied in full even when I, J or K is not a multiple of DIM. So, per layer,
``tiles = groups * ceil(I/DIM) * ceil(J/DIM) * ceil(K/DIM)``,
``ideal_cycles = groups * I*J*K / DIM^2`` (every PE busy every cycle),
``est_cycles = tiles * DIM`` and ``utilization = ideal_cycles / est_cycles``. Data
movement, fill/drain latency and host work are not modelled, so the estimate is a
lower bound on time and the utilization an upper bound.

Capacity (informative): ``sp_fits`` says whether one group's padded operands
(``I*K`` inputs and ``K*J`` weights, int8) fit in the scratchpad at once;
``acc_passes`` is how many times the accumulator (``acc_rows`` rows of DIM int32)
fills with the group's padded ``I x J`` outputs.

Accumulator range: per output channel the worst case is
``|acc| <= |bias| + max|x - x_zp| * sum_k |w - w_zp|``, with ``max|x - x_zp|`` from
the input's integer range (128 for int8 with zero point 0) or from a measured range.
A layer is flagged when the bound exceeds 2^24 (the int32 to float32 conversion
before scaling drops low bits) or 2^31 - 1 (the int32 accumulator wraps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from runtime_emulator.datapath import INT_RANGES

#: Ops that run on the array.
ACCEL_OPS = ("QLinearConv", "QLinearConv_nhwc", "QLinearMatMul")
#: Flag: the accumulator can exceed 2^24, so float32(acc) can drop low bits.
FLAG_F32 = "f32>2^24"
#: Flag: the accumulator can exceed the int32 range and wrap.
FLAG_WRAP = "wrap>2^31"
F32_EXACT_LIMIT = 2**24
INT32_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class ArrayConfig:
    """Array parameters; defaults are the Gemmini default configuration (spec section 8)."""

    dim: int = 16
    sp_bytes: int = 256 * 1024
    acc_bytes: int = 64 * 1024
    sp_banks: int = 4
    input_bytes: int = 1
    acc_elem_bytes: int = 4

    def __post_init__(self) -> None:
        for name in ("dim", "sp_bytes", "acc_bytes", "sp_banks", "input_bytes", "acc_elem_bytes"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"ArrayConfig.{name} must be a positive integer, got {value!r}")

    @property
    def sp_rows(self) -> int:
        """Scratchpad rows of DIM input elements."""
        return self.sp_bytes // (self.dim * self.input_bytes)

    @property
    def acc_rows(self) -> int:
        """Accumulator rows of DIM int32 elements."""
        return self.acc_bytes // (self.dim * self.acc_elem_bytes)


@dataclass(frozen=True)
class LayerStats:
    """How one accelerator layer maps onto the array, and its accumulator range."""

    name: str
    op: str
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    groups: int
    I: int  # noqa: E741 - the matmul's row count, as in the spec
    J: int
    K: int
    tiles: int
    ideal_cycles: float
    est_cycles: int
    utilization: float
    sp_fits: bool
    acc_passes: int
    x_absmax: int
    acc_bound: int
    acc_flags: tuple[str, ...]
    channels_over_f32: int
    channels_over_int32: int


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def conv_output_spatial(
    in_spatial: Sequence[int],
    kernel: Sequence[int],
    attrs: Mapping,
) -> tuple[int, ...]:
    """Conv output spatial size under ONNX rules (auto_pad, pads, strides, dilations)."""
    n = len(in_spatial)
    strides = list(attrs.get("strides") or [1] * n)
    dil = list(attrs.get("dilations") or [1] * n)
    pads = list(attrs.get("pads") or [0] * (2 * n))
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    out = []
    for i in range(n):
        eff = dil[i] * (kernel[i] - 1) + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(_ceil_div(in_spatial[i], strides[i]))
        elif auto_pad == "VALID":
            out.append((in_spatial[i] - eff) // strides[i] + 1)
        else:
            out.append((in_spatial[i] + pads[i] + pads[i + n] - eff) // strides[i] + 1)
    return tuple(out)


def _absmax_of_range(dtype: np.dtype, zero_point: np.ndarray | None) -> int:
    lo, hi = INT_RANGES.get(np.dtype(dtype), (-128, 127))
    zp = 0 if zero_point is None else np.asarray(zero_point).astype(np.int64)
    return int(np.max(np.maximum(np.abs(lo - zp), np.abs(hi - zp))))


def _centered_abs(w: np.ndarray, zp: np.ndarray | None, axis: int) -> np.ndarray:
    """|w - zp| as int64, with a per-channel zero point broadcast along ``axis``."""
    w64 = np.asarray(w).astype(np.int64)
    if zp is None:
        return np.abs(w64)
    z = np.asarray(zp).astype(np.int64)
    if z.ndim and z.size > 1:
        shape = [1] * w64.ndim
        shape[axis] = z.size
        z = z.reshape(shape)
    return np.abs(w64 - z)


def layer_stats(
    node: onnx.NodeProto,
    input_shapes: Sequence[Sequence[int] | None],
    weights: Mapping[str, np.ndarray] | None = None,
    *,
    config: ArrayConfig | None = None,
    x_absmax: int | None = None,
    x_dtype: np.dtype | type | None = None,
) -> LayerStats:
    """Array statistics of one accelerator layer (see the module docstring for the model).

    ``input_shapes`` are the node's input shapes in ONNX order; ``weights`` maps input
    names to constant arrays (weights, zero points, bias; typically the initializers).
    ``x_absmax`` is a measured bound on ``|x - x_zp|``; None uses the input type's range.
    """
    cfg = config or ArrayConfig()
    weights = weights or {}
    if node.op_type not in ACCEL_OPS:
        raise ValueError(f"node '{node.name}': {node.op_type} does not run on the array")
    attrs = _attrs(node)
    names = list(node.input) + [""] * 9

    def const(i: int) -> np.ndarray | None:
        return weights.get(names[i]) if names[i] else None

    x_shape = tuple(int(d) for d in input_shapes[0])
    if node.op_type == "QLinearMatMul":
        b_shape = tuple(int(d) for d in input_shapes[3])
        k = x_shape[-1]
        i_rows = int(np.prod(x_shape[:-1], dtype=np.int64))
        j = b_shape[-1]
        groups = 1
        if len(b_shape) > 2:
            # A batched B holds one weight matrix per batch: each is its own group.
            batch = np.broadcast_shapes(x_shape[:-2], b_shape[:-2])
            groups = int(np.prod(batch, dtype=np.int64))
            i_rows = x_shape[-2] if len(x_shape) > 1 else 1
        out_shape = tuple(np.broadcast_shapes(x_shape[:-2], b_shape[:-2])) + (
            x_shape[-2] if len(x_shape) > 1 else 1,
            j,
        )
        w_shape = b_shape
        w, w_zp, x_zp, bias = const(3), const(5), const(2), None
        if w is not None:
            sums = _centered_abs(w, w_zp, w.ndim - 1).sum(axis=-2)
            sums = sums.reshape(-1, j).max(axis=0)
        else:
            b_dtype = np.dtype(x_dtype) if x_dtype is not None else np.dtype(np.int8)
            sums = np.full(j, k * _absmax_of_range(b_dtype, w_zp), dtype=np.int64)
    else:
        w_shape = tuple(int(d) for d in input_shapes[3])
        groups = int(attrs.get("group", 1))
        nhwc = node.op_type == "QLinearConv_nhwc"
        if nhwc:  # x NHWC, w HWIO
            spatial_in, c_in = x_shape[1:-1], x_shape[-1]
            kernel, c_per_group, oc = w_shape[:-2], w_shape[-2], w_shape[-1]
        else:  # x NCHW, w OIHW
            spatial_in, c_in = x_shape[2:], x_shape[1]
            kernel, c_per_group, oc = w_shape[2:], w_shape[1], w_shape[0]
        kernel = tuple(attrs.get("kernel_shape") or kernel)
        spatial_out = conv_output_spatial(spatial_in, kernel, attrs)
        n = x_shape[0]
        i_rows = n * int(np.prod(spatial_out, dtype=np.int64))
        k = c_per_group * int(np.prod(kernel, dtype=np.int64))
        j = oc // groups
        out_shape = (n, *spatial_out, oc) if nhwc else (n, oc, *spatial_out)
        del c_in
        w, w_zp, x_zp, bias = const(3), const(5), const(2), const(8)
        if w is not None:
            oc_axis = w.ndim - 1 if nhwc else 0
            cw = _centered_abs(w, w_zp, oc_axis)
            axes = tuple(a for a in range(w.ndim) if a != oc_axis)
            sums = cw.sum(axis=axes)
        else:
            sums = np.full(oc, k * 128, dtype=np.int64)
    if x_absmax is None:
        if x_dtype is not None:
            xd = np.dtype(x_dtype)
        elif x_zp is not None:
            xd = np.asarray(x_zp).dtype
        else:
            xd = np.dtype(np.int8)
        x_absmax = _absmax_of_range(xd, x_zp)
    per_channel = np.asarray(sums, dtype=np.int64) * int(x_absmax)
    if bias is not None:
        per_channel = per_channel + np.abs(np.asarray(bias).astype(np.int64)).reshape(-1)
    acc_bound = int(per_channel.max(initial=0))
    over_f32 = int(np.count_nonzero(per_channel > F32_EXACT_LIMIT))
    over_i32 = int(np.count_nonzero(per_channel > INT32_LIMIT))
    flags = tuple(f for f, c in ((FLAG_F32, over_f32), (FLAG_WRAP, over_i32)) if c)

    d = cfg.dim
    ti, tj, tk = _ceil_div(i_rows, d), _ceil_div(j, d), _ceil_div(k, d)
    tiles = groups * ti * tj * tk
    ideal = groups * i_rows * j * k / (d * d)
    est = tiles * d
    sp_need = (ti * d) * (tk * d) * cfg.input_bytes + (tk * d) * (tj * d) * cfg.input_bytes
    acc_passes = _ceil_div(ti * d * tj, cfg.acc_rows) if cfg.acc_rows else 0
    return LayerStats(
        name=node.name or node.output[0],
        op=node.op_type,
        input_shape=x_shape,
        weight_shape=w_shape,
        output_shape=tuple(int(s) for s in out_shape),
        groups=groups,
        I=i_rows,
        J=j,
        K=k,
        tiles=tiles,
        ideal_cycles=ideal,
        est_cycles=est,
        utilization=ideal / est if est else 0.0,
        sp_fits=sp_need <= cfg.sp_bytes,
        acc_passes=acc_passes,
        x_absmax=int(x_absmax),
        acc_bound=acc_bound,
        acc_flags=flags,
        channels_over_f32=over_f32,
        channels_over_int32=over_i32,
    )


def record_stats(record, config: ArrayConfig | None = None, *, observed: bool = False):
    """:func:`layer_stats` of an executed node (a ``NodeRecord``), or None if not on the array.

    With ``observed``, ``max|x - x_zp|`` is measured on the node's actual input.
    """
    node = record.node
    if node.op_type not in ACCEL_OPS:
        return None
    arrays = [record.inputs.get(n) if n else None for n in node.input]
    shapes = [a.shape if a is not None else None for a in arrays]
    x = arrays[0]
    x_absmax = None
    if observed and x is not None:
        zp = arrays[2] if len(arrays) > 2 and arrays[2] is not None else 0
        x_absmax = int(np.abs(x.astype(np.int64) - np.asarray(zp).astype(np.int64)).max(initial=0))
    return layer_stats(
        node,
        shapes,
        record.inputs,
        config=config,
        x_absmax=x_absmax,
        x_dtype=x.dtype if x is not None else None,
    )


def total_utilization(stats: Sequence[LayerStats]) -> float:
    """Whole-model utilization: total ideal cycles over total estimated cycles."""
    est = sum(s.est_cycles for s in stats)
    return sum(s.ideal_cycles for s in stats) / est if est else 0.0


__all__ = [
    "ACCEL_OPS",
    "ArrayConfig",
    "FLAG_F32",
    "FLAG_WRAP",
    "LayerStats",
    "conv_output_spatial",
    "layer_stats",
    "record_stats",
    "total_utilization",
]
