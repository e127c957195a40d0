"""Add and Mul: com.microsoft QLinearAdd / QLinearMul (QOperator), DQ/op/Q (QDQ)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from systolic_sdk.quantization.rules.base import LINEAR_FORMS, MS_DOMAIN, OpRule, qop_inputs
from systolic_sdk.quantization.types import OutputForm

if TYPE_CHECKING:
    from systolic_sdk.quantization.context import RewriteContext


class BinaryRule(OpRule):
    """Both inputs are activations, or one is a constant quantized from its own values."""

    op_types = ("Add", "Mul")
    forms = LINEAR_FORMS

    def activation_tensors(self, node: onnx.NodeProto, ctx: RewriteContext) -> list[str]:
        names = list(node.input[:2]) + [node.output[0]]
        return [n for n in names if ctx.is_activation(n)]

    def apply(self, node: onnx.NodeProto, ctx: RewriteContext) -> bool:
        if not ctx.static or len(node.input) != 2:
            return False
        y = node.output[0]
        kinds = []
        for name in node.input:
            if ctx.is_activation(name):
                kinds.append("act")
            elif ctx.is_constant(name) and ctx.is_float(name):
                kinds.append("const")
            else:
                return False
        if "act" not in kinds:
            return False
        params = []
        for name, kind in zip(node.input, kinds, strict=True):
            p = ctx.input_params(name) if kind == "act" else ctx.constant_params(name)
            if p is None or p.per_channel:
                return False
            params.append(p)
        yp = ctx.activation_params(y)
        if yp.per_channel:
            return False
        states = [
            ctx.quantized_activation(n) if k == "act" else ctx.quantized_constant(n, p)
            for n, k, p in zip(node.input, kinds, params, strict=True)
        ]
        if ctx.form == OutputForm.QOPERATOR:
            ys, yz = ctx.params_initializers(y, yp)
            yq = ctx.fresh(f"{y}_quantized")
            ctx.add_node(
                f"QLinear{node.op_type}",
                qop_inputs(states[0]) + qop_inputs(states[1]) + [ys, yz],
                [yq],
                name=node.name,
                domain=MS_DOMAIN,
                inserted=False,
            )
            ctx.declare_quantized(y, yq, yp, ys, yz)
            return True
        ctx.emit_qdq(node, [ctx.dequantized(s) for s in states], [yp])
        return True
