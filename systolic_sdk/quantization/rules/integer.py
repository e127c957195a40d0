"""The IntegerOps tail shared by ConvInteger and MatMulInteger rewrites.

``int32 accumulator -> Cast(float) -> Mul(s_x * s_w) [-> Add(bias)]``, as onnxruntime's
dynamic quantizer writes it. In static mode the scale product is a float32 constant;
in dynamic mode it is a Mul of the run-time activation scale and the weight scale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from onnx import TensorProto

from systolic_sdk.quantization.params import QuantParams
from systolic_sdk.quantization.state import EdgeState

if TYPE_CHECKING:
    from systolic_sdk.quantization.context import RewriteContext

F32 = np.float32


def scaled_integer_output(
    ctx: RewriteContext,
    acc: str,
    xs: EdgeState,
    wp: QuantParams | None,
    channel_shape: tuple[int, ...],
    bias: np.ndarray | None,
    y: str,
    ws: EdgeState | None = None,
) -> None:
    """Emit Cast, Mul by the scale product, and an optional float bias Add producing ``y``.

    ``channel_shape`` reshapes a per-channel weight scale to broadcast against the
    accumulator ((-1, 1, 1) for a 2-D conv, (-1,) for a matmul). ``ws`` is given instead
    of ``wp`` when the second operand is an activation quantized at run time.
    """
    acc_f = ctx.fresh(f"{y}_int32_float")
    ctx.add_node("Cast", [acc], [acc_f], to=TensorProto.FLOAT, inserted=False)
    if wp is not None and xs.params is not None:
        prod = np.multiply(xs.params.scale, wp.scale, dtype=F32)
        if wp.per_channel:
            prod = prod.reshape(channel_shape)
        scale = ctx.add_initializer(f"{y}_scale_product", prod)
    else:
        if wp is not None:
            w_scale = wp.scale.reshape(channel_shape) if wp.per_channel else wp.scale
            w_scale_name = ctx.add_initializer(f"{y}_weight_scale", w_scale)
        else:
            w_scale_name = ws.scale_name
        scale = ctx.fresh(f"{y}_scale_product")
        ctx.add_node("Mul", [xs.scale_name, w_scale_name], [scale], inserted=False)
    scaled = y if bias is None else ctx.fresh(f"{y}_scaled")
    ctx.add_node("Mul", [acc_f, scale], [scaled], inserted=False)
    if bias is not None:
        b = np.asarray(bias, dtype=F32)
        if b.ndim == 1:
            b = b.reshape(channel_shape)
        b_name = ctx.add_initializer(f"{y}_bias", b)
        ctx.add_node("Add", [scaled, b_name], [y], inserted=False)
