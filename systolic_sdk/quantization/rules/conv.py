"""Conv: QLinearConv (QOperator), DQ/Conv/Q (QDQ), ConvInteger (IntegerOps)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from systolic_sdk.quantization.rules.base import (
    AccumulatorRule,
    copy_attrs,
    dynamic_bias,
    qop_inputs,
)
from systolic_sdk.quantization.rules.integer import scaled_integer_output
from systolic_sdk.quantization.types import OutputForm

if TYPE_CHECKING:
    from systolic_sdk.quantization.context import RewriteContext

#: Conv weights [M, C/group, k...] are quantized per output channel: axis 0.
WEIGHT_AXIS = 0


class ConvRule(AccumulatorRule):
    op_types = ("Conv",)

    def apply(self, node: onnx.NodeProto, ctx: RewriteContext) -> bool:
        x, w = node.input[0], node.input[1]
        b = node.input[2] if len(node.input) > 2 and node.input[2] else None
        y = node.output[0]
        if not ctx.is_activation(x) or not ctx.is_constant(w) or not ctx.is_float(w):
            return False
        if ctx.constant(w).ndim < 3 or (b is not None and not ctx.is_constant(b)):
            return False
        xp = ctx.input_params(x)
        if xp is not None and xp.per_channel:
            return False
        wp = ctx.weight_params(w, ctx.config.per_channel, WEIGHT_AXIS)
        if ctx.form == OutputForm.INTEGER:
            zps = wp.zero_point.reshape(-1)
            uniform = bool(np.all(zps == zps[0])) if zps.size else True
            if not uniform and not ctx.backend.conv_integer_channel_zero_points:
                wp = ctx.weight_params(w, False, WEIGHT_AXIS)
            xs = ctx.quantized_activation(x)
            ws = ctx.quantized_constant(w, wp)
            w_zp = ws.zp_name
            if wp.per_channel and uniform:
                w_zp = ctx.add_initializer(f"{w}_zero_point_scalar", zps[:1].reshape(()))
            acc = ctx.fresh(f"{y}_int32")
            ctx.add_node(
                "ConvInteger",
                [xs.q_name, ws.q_name, xs.zp_name, w_zp],
                [acc],
                name=node.name,
                attributes=copy_attrs(node),
                inserted=False,
            )
            ndim = ctx.constant(w).ndim
            bias = ctx.constant(b) if b is not None else None
            channel_shape = (-1,) + (1,) * (ndim - 2)
            scaled_integer_output(ctx, acc, xs, wp, channel_shape, bias, y)
            return True
        if xp is None:  # dynamic: QLinearConv on a run-time input scale, fixed output
            return ctx.form == OutputForm.QOPERATOR and self._dynamic(node, ctx, wp, b)
        yp = ctx.activation_params(y)
        if yp.per_channel:
            return False
        qbias = None
        if b is not None and (ctx.form == OutputForm.QOPERATOR or ctx.config.quantize_bias):
            qbias = ctx.quantized_bias(b, xp, wp)
            wp = qbias.weight_params
        xs = ctx.quantized_activation(x)
        ws = ctx.quantized_constant(w, wp)
        if ctx.form == OutputForm.QOPERATOR:
            inputs = qop_inputs(xs) + qop_inputs(ws)
            ys, yz = ctx.params_initializers(y, yp)
            inputs += [ys, yz]
            if qbias is not None:
                inputs.append(ctx.add_initializer(f"{b}_quantized", qbias.values))
            yq = ctx.fresh(f"{y}_quantized")
            ctx.add_node(
                "QLinearConv",
                inputs,
                [yq],
                name=node.name,
                attributes=copy_attrs(node),
                inserted=False,
            )
            ctx.declare_quantized(y, yq, yp, ys, yz)
            return True
        self.emit_qdq_form(node, ctx, xs, ws, b, qbias, yp)
        return True

    def _dynamic(self, node: onnx.NodeProto, ctx: RewriteContext, wp, b: str | None) -> bool:
        """The original onnxruntime QLinearOps dynamic mode: DynamicQuantizeLinear feeds
        QLinearConv, whose int32 bias is computed in the graph from the run-time scale;
        the output takes its given (override) parameters. Float without them."""
        y = node.output[0]
        yp = ctx.fixed_params(y)
        if yp is None or yp.per_channel:
            return False
        xs = ctx.quantized_activation(node.input[0])
        ws = ctx.quantized_constant(node.input[1], wp)
        inputs = qop_inputs(xs) + qop_inputs(ws)
        ys, yz = ctx.params_initializers(y, yp)
        inputs += [ys, yz]
        if b is not None:
            qb = dynamic_bias(ctx, b, xs, ws)
            if qb is None:
                return False
            inputs.append(qb)
        yq = ctx.fresh(f"{y}_quantized")
        ctx.add_node(
            "QLinearConv", inputs, [yq], name=node.name, attributes=copy_attrs(node), inserted=False
        )
        ctx.declare_quantized(y, yq, yp, ys, yz)
        return True
