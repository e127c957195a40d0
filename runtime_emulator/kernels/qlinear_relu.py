"""QLinearRelu: the Systolic graph form of a ReLU on int8 (zero point 0): ``y = max(x, 0)``.

Registered in the default domain (as the Gemmini fork of onnxruntime does) and in the
SDK's own domain. One int8 input; a five-input form (x, x_scale, x_zero_point, y_scale,
y_zero_point) is accepted when the scales are equal and the zero points 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime_emulator.kernels import SYSTOLIC_DOMAIN, KernelContext, register
from runtime_emulator.kernels._common import arg, unsupported


@register("QLinearRelu", "", SYSTOLIC_DOMAIN)
def qlinear_relu(
    inputs: Sequence[np.ndarray | None], attrs: dict[str, Any], ctx: KernelContext
) -> list[np.ndarray]:
    """``y = max(x, 0)`` on int8, same scale and zero point as the input."""
    x = arg(inputs, 0, "x", ctx, True)
    if x.dtype != np.int8:
        raise unsupported(ctx, f"QLinearRelu takes int8 (zero point 0), got {x.dtype.name}")
    if len(inputs) > 1:
        x_scale = arg(inputs, 1, "x_scale", ctx, False)
        y_scale = arg(inputs, 3, "y_scale", ctx, False)
        for i, name in ((2, "x_zero_point"), (4, "y_zero_point")):
            zp = arg(inputs, i, name, ctx, False)
            if zp is not None and np.any(zp != 0):
                raise unsupported(ctx, f"'{name}' must be 0 (the Systolic array is symmetric)")
        if x_scale is not None and y_scale is not None and not np.array_equal(x_scale, y_scale):
            raise unsupported(ctx, "QLinearRelu must keep its input's scale (x_scale == y_scale)")
    return [np.maximum(x, np.int8(0))]
