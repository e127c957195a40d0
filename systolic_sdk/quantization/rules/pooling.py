"""Pooling: MaxPool on integers (a pass-through, opset >= 12); AveragePool and
GlobalAveragePool as com.microsoft QLinearAveragePool / QLinearGlobalAveragePool
(QOperator) or DQ -> op -> Q (QDQ) with the output's own range."""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from systolic_sdk.quantization.rules.base import (
    LINEAR_FORMS,
    MS_DOMAIN,
    OpRule,
    attr_value,
    copy_attrs,
    qop_inputs,
)
from systolic_sdk.quantization.rules.passthrough import PassThroughRule
from systolic_sdk.quantization.types import OutputForm

if TYPE_CHECKING:
    from systolic_sdk.quantization.context import RewriteContext


class MaxPoolRule(PassThroughRule):
    op_types = ("MaxPool",)
    min_opset = 12  # MaxPool accepts int8/uint8 from opset 12

    def extra_ok(self, node: onnx.NodeProto, ctx: RewriteContext) -> bool:
        return int(attr_value(node, "storage_order", 0)) == 0


class AveragePoolRule(OpRule):
    op_types = ("AveragePool", "GlobalAveragePool")
    forms = LINEAR_FORMS

    def apply(self, node: onnx.NodeProto, ctx: RewriteContext) -> bool:
        x, y = node.input[0], node.output[0]
        if not ctx.static or not ctx.is_activation(x):
            return False
        xp = ctx.input_params(x)
        if xp is None or xp.per_channel:
            return False
        yp = ctx.activation_params(y)
        if yp.per_channel:
            return False
        state = ctx.quantized_activation(x)
        if ctx.form == OutputForm.QDQ:
            ctx.emit_qdq(node, [ctx.dequantized(state)], [yp])
            return True
        ys, yz = ctx.params_initializers(y, yp)
        yq = ctx.fresh(f"{y}_quantized")
        ctx.add_node(
            f"QLinear{node.op_type}",
            qop_inputs(state) + [ys, yz],
            [yq],
            name=node.name,
            domain=MS_DOMAIN,
            attributes=copy_attrs(node),
            inserted=False,
            channels_last=0,
        )
        ctx.declare_quantized(y, yq, yp, ys, yz)
        return True
