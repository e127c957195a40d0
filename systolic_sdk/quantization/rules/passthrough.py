"""Ops that move int8 data without arithmetic: Reshape, Flatten, Transpose, Squeeze,
Unsqueeze (and MaxPool, see pooling.py). The output keeps the input's parameters.

They are rewritten only when their data input is already quantized (onnxruntime's
rule; ForceQuantizeNoInputCheck quantizes it anyway). QOperator runs the op on the
integer tensor; QDQ writes DQ -> op -> Q with the input's parameters. A tensor override
on the output is honoured: QDQ quantizes the op's output with it, QOperator requantizes
the integer output to it (DQ -> Q, inserted by the walk).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from systolic_sdk.quantization.rules.base import LINEAR_FORMS, OpRule
from systolic_sdk.quantization.types import OutputForm

if TYPE_CHECKING:
    from systolic_sdk.quantization.context import RewriteContext


class PassThroughRule(OpRule):
    op_types = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")
    forms = LINEAR_FORMS
    #: Minimum opset at which the op accepts 8/16-bit integer tensors (QOperator form).
    min_opset = 1

    def extra_ok(self, node: onnx.NodeProto, ctx: RewriteContext) -> bool:
        return True

    def apply(self, node: onnx.NodeProto, ctx: RewriteContext) -> bool:
        x = node.input[0]
        if not ctx.static or not ctx.is_activation(x):
            return False
        if ctx.form == OutputForm.QOPERATOR and ctx.opset < self.min_opset:
            return False  # the op itself runs on integers only from min_opset
        if len([o for o in node.output if o]) != 1 or not self.extra_ok(node, ctx):
            return False
        state = ctx.edge(x)
        if state is None and not ctx.force_quantize:
            return False
        p = state.params if state is not None else ctx.activation_params(x)
        if p is None or p.per_channel:
            return False
        state = ctx.quantized_activation(x)
        y = node.output[0]
        if ctx.form == OutputForm.QDQ:
            yp = ctx.output_params(y, p)
            ctx.emit_qdq(node, [ctx.dequantized(state)] + list(node.input[1:]), [yp])
            return True
        yq = ctx.fresh(f"{y}_quantized")
        ctx.add_node(
            node.op_type,
            [state.q_name] + list(node.input[1:]),
            [yq],
            name=node.name,
            attributes=list(node.attribute),
            inserted=False,
        )
        ctx.declare_quantized(y, yq, p, state.scale_name, state.zp_name)
        return True
