"""Relu and Clip after a quantized producer.

Ranges: before the walk, a Relu/Clip whose input has no other reader (and is not a
graph output) gives its output range to its input, as onnxruntime does, so the
producer quantizes straight into the activation's range; when the output has a tensor
override, its parameters are pinned to the input instead, so the override holds on
both edges without a requantization.

Rewrite (the output keeps the input's scale and zero point): quantization is monotone,
so ``Q(clip(x, lo, hi)) == clip(Q(x), Q(lo), Q(hi))`` exactly. When the integer bounds
are already the type's saturation limits (a Relu on a tensor whose zero point is the
type minimum), the op is dropped and its output aliases the input (in QDQ it is kept
between DQ and Q under the option QDQKeepRemovableActivations). Otherwise QOperator
emits an integer Clip (opset >= 12) and QDQ emits DQ -> op -> Q with the same params.
The op stays float when its input is not quantized (unless ForceQuantizeNoInputCheck).
An override on the output with other parameters than the input's: QDQ quantizes the
op's output with it; QOperator requantizes the output (the walk's honour_override).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from runtime_emulator import datapath
from systolic_sdk.quantization.params import QuantParams
from systolic_sdk.quantization.rules.base import LINEAR_FORMS, OpRule, attr_value
from systolic_sdk.quantization.types import OutputForm

if TYPE_CHECKING:
    from systolic_sdk.quantization.context import RewriteContext

INT_CLIP_OPSET = 12


class ActivationRule(OpRule):
    op_types = ("Relu", "Clip")
    forms = LINEAR_FORMS

    def adjust_ranges(self, node: onnx.NodeProto, ctx: RewriteContext) -> None:
        x, y = node.input[0], node.output[0]
        if x in ctx.graph_outputs or x in ctx.config.tensor_overrides:
            return
        if len(ctx.consumers.get(x, [])) != 1 or x not in ctx.producer_names:
            return
        if self.bounds(node, ctx) is None:  # the rule will not apply: keep the range
            return
        fixed = ctx.fixed_params(y)
        if fixed is not None:
            # the producer quantizes straight into the override when it can: one scale,
            # and the element type the producer's other operands expect
            if not fixed.per_channel and fixed.qtype == ctx.config.activation_type:
                ctx.pin_params(x, fixed)
        elif y in ctx.ranges:
            ctx.ranges[x] = ctx.ranges[y]

    def bounds(
        self, node: onnx.NodeProto, ctx: RewriteContext
    ) -> tuple[float | None, float | None] | None:
        """The real (lo, hi) of the activation; None when not constant."""
        if node.op_type == "Relu":
            return 0.0, None
        if ctx.opset < 11:
            return attr_value(node, "min", None), attr_value(node, "max", None)
        out = []
        for i in (1, 2):
            name = node.input[i] if len(node.input) > i else ""
            if not name:
                out.append(None)
            elif ctx.is_constant(name):
                out.append(float(np.asarray(ctx.constant(name)).reshape(())))
            else:
                return None
        return out[0], out[1]

    def apply(self, node: onnx.NodeProto, ctx: RewriteContext) -> bool:
        x, y = node.input[0], node.output[0]
        if not ctx.static or not ctx.is_activation(x):
            return False
        state = ctx.edge(x)
        if state is None and not ctx.force_quantize:
            return False
        bounds = self.bounds(node, ctx)
        if bounds is None:
            return False
        p = state.params if state is not None else ctx.activation_params(x)
        if p is None or p.per_channel:
            return False
        lo_q, hi_q = (None if v is None else _quantize_scalar(v, p) for v in bounds)
        tmin, tmax = datapath.qrange(p.qtype.np_dtype)
        state = ctx.quantized_activation(x)
        yp = ctx.output_params(y, p)
        removable = (lo_q is None or lo_q <= tmin) and (hi_q is None or hi_q >= tmax)
        qdq = ctx.form == OutputForm.QDQ
        if removable and not (qdq and (ctx.keep_removable_activations or not yp.same_as(p))):
            ctx.alias_quantized(y, state)  # the walk requantizes y to its override
            return True
        if qdq:
            ctx.emit_qdq(node, [ctx.dequantized(state)] + list(node.input[1:]), [yp])
            return True
        if ctx.opset < INT_CLIP_OPSET:
            return False
        dtype = p.qtype.np_dtype
        lo_name = ctx.add_initializer(
            f"{y}_min", np.array(lo_q if lo_q is not None else tmin, dtype)
        )
        hi_name = ctx.add_initializer(
            f"{y}_max", np.array(hi_q if hi_q is not None else tmax, dtype)
        )
        yq = ctx.fresh(f"{y}_quantized")
        ctx.add_node("Clip", [state.q_name, lo_name, hi_name], [yq], name=node.name, inserted=False)
        ctx.declare_quantized(y, yq, p, state.scale_name, state.zp_name)
        return True


def _quantize_scalar(v: float, p: QuantParams) -> int:
    return int(datapath.quantize_linear(np.float32(v), p.scale, p.zero_point, p.qtype.np_dtype))
