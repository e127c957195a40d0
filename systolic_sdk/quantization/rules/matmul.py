"""MatMul and Gemm: QLinearMatMul / com.microsoft QGemm (QOperator), DQ/op/Q (QDQ),
MatMulInteger (IntegerOps)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from systolic_sdk.quantization.params import QuantParams
from systolic_sdk.quantization.rules.base import (
    MS_DOMAIN,
    AccumulatorRule,
    attr_value,
    copy_attrs,
    matmul_integer,
    qop_inputs,
)
from systolic_sdk.quantization.rules.integer import scaled_integer_output
from systolic_sdk.quantization.types import OutputForm

if TYPE_CHECKING:
    from systolic_sdk.quantization.context import RewriteContext


class MatMulRule(AccumulatorRule):
    """MatMul with a float activation A and a constant (or, unless MatMulConstBOnly, an
    activation) B. Constant B is quantized per column (axis 1) when per channel."""

    op_types = ("MatMul",)
    activation_inputs = 2

    def apply(self, node: onnx.NodeProto, ctx: RewriteContext) -> bool:
        a, b = node.input[0], node.input[1]
        y = node.output[0]
        if not ctx.is_activation(a):
            return False
        b_const = ctx.is_constant(b) and ctx.is_float(b)
        if not b_const and (not ctx.is_activation(b) or ctx.matmul_const_b_only):
            return False
        ap = ctx.input_params(a)
        bp: QuantParams | None
        if b_const:
            w = ctx.constant(b)
            if w.ndim < 2:
                return False
            bp = ctx.weight_params(b, ctx.config.per_channel and w.ndim == 2, w.ndim - 1)
        else:
            bp = ctx.input_params(b)
        if any(p is not None and p.per_channel for p in (ap,) + (() if b_const else (bp,))):
            return False
        if ctx.form == OutputForm.INTEGER:
            as_ = ctx.quantized_activation(a)
            bs = ctx.quantized_constant(b, bp) if b_const else ctx.quantized_activation(b)
            acc = matmul_integer(ctx, node, as_, bs)
            scaled_integer_output(
                ctx, acc, as_, bp if bs.params is not None else None, (-1,), None, y, ws=bs
            )
            return True
        if ap is None or bp is None:
            if ctx.form != OutputForm.QOPERATOR or ctx.static:
                return False
            # dynamic QOperator (the original onnxruntime QLinearOps dynamic mode): run-time
            # input scales, the output's given (override) parameters; float without them
            yp = ctx.fixed_params(y)
            if yp is None:
                return False
        else:
            yp = ctx.activation_params(y)
        if yp.per_channel:
            return False
        as_ = ctx.quantized_activation(a)
        bs = ctx.quantized_constant(b, bp) if b_const else ctx.quantized_activation(b)
        if ctx.form == OutputForm.QOPERATOR:
            ys, yz = ctx.params_initializers(y, yp)
            yq = ctx.fresh(f"{y}_quantized")
            ctx.add_node(
                "QLinearMatMul",
                qop_inputs(as_) + qop_inputs(bs) + [ys, yz],
                [yq],
                name=node.name,
                inserted=False,
            )
            ctx.declare_quantized(y, yq, yp, ys, yz)
            return True
        ctx.emit_qdq(node, [ctx.dequantized(as_), ctx.dequantized(bs)], [yp])
        return True


class GemmRule(AccumulatorRule):
    """Gemm with a float activation A, constant B and optional constant C.

    Per-channel axis: 1 when transB = 0 (B is [K, N]), 0 when transB = 1 (B is [N, K]).
    QOperator (com.microsoft QGemm) needs alpha = beta = 1 and a 1-D bias; IntegerOps
    needs transA = 0, alpha = 1 and beta = 1.
    """

    op_types = ("Gemm",)

    def apply(self, node: onnx.NodeProto, ctx: RewriteContext) -> bool:
        a, b = node.input[0], node.input[1]
        c = node.input[2] if len(node.input) > 2 and node.input[2] else None
        y = node.output[0]
        if not ctx.is_activation(a) or not (ctx.is_constant(b) and ctx.is_float(b)):
            return False
        if c is not None and not ctx.is_constant(c):
            return False
        w = ctx.constant(b)
        if w.ndim != 2:
            return False
        alpha = float(attr_value(node, "alpha", 1.0))
        beta = float(attr_value(node, "beta", 1.0))
        trans_a = int(attr_value(node, "transA", 0))
        trans_b = int(attr_value(node, "transB", 0))
        n_out = w.shape[0] if trans_b else w.shape[1]
        bias = ctx.constant(c) if c is not None else None
        bias_1d = (
            bias is not None
            and bias.size == n_out
            and bias.ndim <= 2
            and (bias.ndim == 1 or bias.shape[0] == 1)
        )
        unit = alpha == 1.0 and (beta == 1.0 or c is None)
        ap = ctx.input_params(a)
        if ap is not None and ap.per_channel:
            return False
        if ctx.form == OutputForm.INTEGER:
            if trans_a or not unit or (bias is not None and not bias_1d):
                return False
            wt = w.T if trans_b else w
            wp = ctx.weight_params(b, ctx.config.per_channel, 0 if trans_b else 1)
            if wp.per_channel:
                wp = QuantParams(wp.scale, wp.zero_point, wp.qtype, 1)
            as_ = ctx.quantized_activation(a)
            ws = ctx.quantized_array(f"{b}_transposed" if trans_b else b, wt, wp)
            acc = matmul_integer(ctx, node, as_, ws)
            flat_bias = bias.reshape(-1) if bias is not None else None
            scaled_integer_output(ctx, acc, as_, wp, (-1,), flat_bias, y)
            return True
        if ap is None:
            return False
        if ctx.form == OutputForm.QOPERATOR and (not unit or (bias is not None and not bias_1d)):
            return False
        yp = ctx.activation_params(y)
        if yp.per_channel:
            return False
        wp = ctx.weight_params(b, ctx.config.per_channel, 0 if trans_b else 1)
        qbias = None
        want_q_bias = ctx.form == OutputForm.QOPERATOR or ctx.config.quantize_bias
        if bias is not None and bias_1d and unit and want_q_bias:
            qbias = ctx.quantized_bias(c, ap, wp)
            wp = qbias.weight_params
        as_ = ctx.quantized_activation(a)
        ws = ctx.quantized_constant(b, wp)
        if ctx.form == OutputForm.QOPERATOR:
            ys, yz = ctx.params_initializers(y, yp)
            inputs = qop_inputs(as_) + qop_inputs(ws)
            inputs.append(ctx.add_initializer(f"{c}_quantized", qbias.values) if qbias else "")
            inputs += [ys, yz]
            yq = ctx.fresh(f"{y}_quantized")
            ctx.add_node(
                "QGemm",
                inputs,
                [yq],
                name=node.name,
                domain=MS_DOMAIN,
                attributes=copy_attrs(node, skip=("beta",)),
                inserted=False,
            )
            ctx.declare_quantized(y, yq, yp, ys, yz)
            return True
        self.emit_qdq_form(node, ctx, as_, ws, c, qbias, yp)
        return True
