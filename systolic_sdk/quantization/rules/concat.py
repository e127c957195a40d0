"""Concat: com.microsoft QLinearConcat (QOperator) or DQ -> Concat -> Q (QDQ).

Each input keeps its own parameters (QLinearConcat requantizes to the output's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from systolic_sdk.quantization.rules.base import (
    LINEAR_FORMS,
    MS_DOMAIN,
    OpRule,
    copy_attrs,
    qop_inputs,
)
from systolic_sdk.quantization.types import OutputForm

if TYPE_CHECKING:
    from systolic_sdk.quantization.context import RewriteContext


class ConcatRule(OpRule):
    op_types = ("Concat",)
    forms = LINEAR_FORMS

    def activation_tensors(self, node: onnx.NodeProto, ctx: RewriteContext) -> list[str]:
        return [n for n in list(node.input) + [node.output[0]] if ctx.is_activation(n)]

    def apply(self, node: onnx.NodeProto, ctx: RewriteContext) -> bool:
        if not ctx.static or not node.input:
            return False
        y = node.output[0]
        params = []
        for name in node.input:
            if ctx.is_activation(name):
                p = ctx.input_params(name)
            elif name and ctx.is_constant(name) and ctx.is_float(name):
                p = ctx.constant_params(name)
            else:
                return False
            if p is None or p.per_channel:
                return False
            params.append(p)
        if len({p.qtype for p in params}) != 1:
            return False
        yp = ctx.activation_params(y)
        if yp.per_channel or yp.qtype != params[0].qtype:
            return False
        states = [
            ctx.quantized_activation(n) if ctx.is_activation(n) else ctx.quantized_constant(n, p)
            for n, p in zip(node.input, params, strict=True)
        ]
        if ctx.form == OutputForm.QDQ:
            ctx.emit_qdq(node, [ctx.dequantized(s) for s in states], [yp])
            return True
        ys, yz = ctx.params_initializers(y, yp)
        yq = ctx.fresh(f"{y}_quantized")
        inputs = [ys, yz]
        for s in states:
            inputs += qop_inputs(s)
        ctx.add_node(
            "QLinearConcat",
            inputs,
            [yq],
            name=node.name,
            domain=MS_DOMAIN,
            attributes=copy_attrs(node),
            inserted=False,
        )
        ctx.declare_quantized(y, yq, yp, ys, yz)
        return True
