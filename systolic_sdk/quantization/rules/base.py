"""The op-rule contract and helpers shared by the rules.

A rule rewrites one node of the walk in one output form, or declines (returns False
without emitting anything) and the walk leaves the node float. Rules check everything
they need before emitting a node, so that declining never leaves partial output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import onnx

from systolic_sdk.quantization.types import OutputForm

if TYPE_CHECKING:
    from systolic_sdk.quantization.context import RewriteContext
    from systolic_sdk.quantization.params import QuantParams
    from systolic_sdk.quantization.state import EdgeState

#: The domain of onnxruntime's contrib ops (QLinearAdd, QGemm, QLinearConcat, ...).
MS_DOMAIN = "com.microsoft"
ALL_FORMS = frozenset(OutputForm)
LINEAR_FORMS = frozenset({OutputForm.QOPERATOR, OutputForm.QDQ})


class OpRule:
    """How one op family is quantized. Subclasses set ``op_types`` and ``forms``."""

    op_types: tuple[str, ...] = ()
    forms: frozenset[OutputForm] = LINEAR_FORMS

    def supports(self, node: onnx.NodeProto, form: OutputForm) -> bool:
        """Whether this rule may rewrite ``node`` in ``form`` at all (a cheap, static check)."""
        return form in self.forms

    def activation_tensors(self, node: onnx.NodeProto, ctx: RewriteContext) -> list[str]:
        """The float activations whose ranges a static rewrite of ``node`` may need."""
        names = [n for n in node.input[:1] if n] + [n for n in node.output[:1] if n]
        return [n for n in names if ctx.is_activation(n)]

    def adjust_ranges(self, node: onnx.NodeProto, ctx: RewriteContext) -> None:
        """Optionally narrow calibrated ranges before the walk (default: nothing)."""

    def apply(self, node: onnx.NodeProto, ctx: RewriteContext) -> bool:
        """Rewrite ``node`` in ``ctx.form``; False (emitting nothing) to leave it float."""
        raise NotImplementedError


class AccumulatorRule(OpRule):
    """A rule for an op that accumulates products (Conv, MatMul, Gemm): its first
    ``activation_inputs`` inputs are activations, and its output needs a range except in
    the integer form (there the int32 accumulator is rescaled to float)."""

    forms = ALL_FORMS
    activation_inputs = 1

    def activation_tensors(self, node: onnx.NodeProto, ctx: RewriteContext) -> list[str]:
        names = list(node.input[: self.activation_inputs])
        if ctx.form != OutputForm.INTEGER:
            names.append(node.output[0])
        return [n for n in names if ctx.is_activation(n)]

    def emit_qdq_form(
        self,
        node: onnx.NodeProto,
        ctx: RewriteContext,
        xs: EdgeState,
        ws: EdgeState,
        bias: str | None,
        qbias,
        yp: QuantParams,
    ) -> None:
        """The QDQ form: DQ(x), DQ(w) and the bias (int32 with a DequantizeLinear when
        ``qbias``, else float) into the float op, whose output is quantized with ``yp``."""
        inputs = [ctx.dequantized(xs), ctx.dequantized(ws)]
        if qbias is not None:
            # a 1-D DequantizeLinear bias broadcasts like a [1, N] Gemm C
            inputs.append(ctx.bias_dequantized(bias, qbias.values, qbias.scale, 0))
        elif bias is not None:
            inputs.append(bias)
        ctx.emit_qdq(node, inputs, [yp])


def matmul_integer(ctx: RewriteContext, node: onnx.NodeProto, a: EdgeState, b: EdgeState) -> str:
    """Emit ``MatMulInteger(a, b)`` in place of ``node``; the int32 accumulator's name."""
    acc = ctx.fresh(f"{node.output[0]}_int32")
    ctx.add_node(
        "MatMulInteger",
        [a.q_name, b.q_name, a.zp_name, b.zp_name],
        [acc],
        name=node.name,
        inserted=False,
    )
    return acc


def qop_inputs(state: EdgeState) -> list[str]:
    """The (tensor, scale, zero point) triple a QLinear* op takes for one input."""
    return [state.q_name, state.scale_name, state.zp_name]


#: ONNX Round exists from opset 11.
ROUND_OPSET = 11


def dynamic_bias(ctx: RewriteContext, bias: str, xs: EdgeState, ws: EdgeState) -> str | None:
    """An int32 bias computed in the graph from a run-time input scale (the original
    onnxruntime QLinearOps dynamic mode): ``Cast<int32>(Round(b / (s_x * s_w)))``, in
    float32 with ONNX Round (half to even). None when the opset has no Round."""
    from onnx import TensorProto

    if ctx.opset < ROUND_OPSET:
        return None
    scale = ctx.fresh(f"{bias}_dynamic_scale")
    ctx.add_node("Mul", [xs.scale_name, ws.scale_name], [scale])
    ratio = ctx.fresh(f"{bias}_dynamic_ratio")
    ctx.add_node("Div", [bias, scale], [ratio])
    rounded = ctx.fresh(f"{bias}_dynamic_rounded")
    ctx.add_node("Round", [ratio], [rounded])
    q = ctx.fresh(f"{bias}_quantized")
    ctx.add_node("Cast", [rounded], [q], to=TensorProto.INT32)
    for name in (scale, ratio, rounded):
        ctx.types[name] = TensorProto.FLOAT
    ctx.types[q] = TensorProto.INT32
    return q


def copy_attrs(node: onnx.NodeProto, skip: Sequence[str] = ()) -> list[onnx.AttributeProto]:
    """The node's attributes (copies), except the names in ``skip``."""
    out = []
    for attr in node.attribute:
        if attr.name not in skip:
            new = onnx.AttributeProto()
            new.CopyFrom(attr)
            out.append(new)
    return out


def attr_value(node: onnx.NodeProto, name: str, default=None):
    """An attribute's Python value, or ``default`` when absent."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default
