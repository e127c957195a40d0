"""The Systolic backend's op rules: the core's rules with Relu/Clip, Add and Gemm
replaced, and the ops the Systolic runtime has no int8 form for left float."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from runtime_emulator import datapath
from runtime_emulator.kernels import SYSTOLIC_DOMAIN
from systolic_sdk.quantization.params import QuantParams
from systolic_sdk.quantization.rules import default_rules
from systolic_sdk.quantization.rules.activation import INT_CLIP_OPSET, ActivationRule
from systolic_sdk.quantization.rules.base import OpRule, attr_value, qop_inputs
from systolic_sdk.quantization.rules.elementwise import BinaryRule
from systolic_sdk.quantization.types import OutputForm

if TYPE_CHECKING:
    from systolic_sdk.quantization.context import RewriteContext

QOP_ONLY = frozenset({OutputForm.QOPERATOR})
#: Ops the core can quantize but the Systolic runtime has no int8 form for: kept float.
FLOAT_OPS = ("Mul", "Concat")


class SystolicActivationRule(ActivationRule):
    """Relu and Clip on an int8 tensor (zero point 0), output keeps the input's scale.

    With integer bounds ``lo_q = Q(lo)``, ``hi_q = Q(hi)`` (quantization is monotone, so
    ``Q(clip(x, lo, hi)) == clip(Q(x), lo_q, hi_q)``): no effect on [-128, 127] -> the
    output aliases the input; ``lo_q == 0`` and ``hi_q >= 127`` -> QLinearRelu (fusable
    into its producer); anything else -> an exact int8 Clip on the host.
    """

    forms = QOP_ONLY

    def adjust_ranges(self, node: onnx.NodeProto, ctx: RewriteContext) -> None:
        """Ranges are narrowed by the backend's range pass (spec section 7)."""

    def apply(self, node: onnx.NodeProto, ctx: RewriteContext) -> bool:
        x, y = node.input[0], node.output[0]
        if not ctx.static or not ctx.is_activation(x):
            return False
        state = ctx.edge(x)
        if state is None or state.params is None or state.params.per_channel:
            return False
        bounds = self.bounds(node, ctx)
        if bounds is None:
            return False
        p = state.params
        lo_q, hi_q = (None if v is None else _quantize_scalar(v, p) for v in bounds)
        tmin, tmax = datapath.qrange(np.int8)
        lo_free = lo_q is None or lo_q <= tmin
        hi_free = hi_q is None or hi_q >= tmax
        if lo_free and hi_free:
            ctx.alias_quantized(y, state)
            return True
        yq = ctx.fresh(f"{y}_quantized")
        if lo_q == 0 and hi_free:
            ctx.add_node(
                "QLinearRelu",
                [state.q_name],
                [yq],
                name=node.name,
                domain=SYSTOLIC_DOMAIN,
                inserted=False,
            )
        elif ctx.opset >= INT_CLIP_OPSET:
            lo_name = ctx.add_initializer(f"{y}_min", np.array(tmin if lo_free else lo_q, np.int8))
            hi_name = ctx.add_initializer(f"{y}_max", np.array(tmax if hi_free else hi_q, np.int8))
            ctx.add_node(
                "Clip", [state.q_name, lo_name, hi_name], [yq], name=node.name, inserted=False
            )
        else:
            return False
        ctx.declare_quantized(y, yq, p, state.scale_name, state.zp_name)
        return True


class SystolicAddRule(BinaryRule):
    """Add of two activations of equal shapes -> com.microsoft QLinearAdd (the
    accelerator's rule, spec section 4); other Adds stay float."""

    op_types = ("Add",)
    forms = QOP_ONLY

    def apply(self, node: onnx.NodeProto, ctx: RewriteContext) -> bool:
        if len(node.input) != 2 or not all(ctx.is_activation(n) for n in node.input):
            return False
        shapes = [_dims(ctx.graph, n) for n in (*node.input, node.output[0])]
        if any(s is None for s in shapes) or not shapes[0] == shapes[1] == shapes[2]:
            return False
        return super().apply(node, ctx)


class SystolicMinMaxRule(OpRule):
    """Min/Max of an int8 activation and a constant (e.g. the per-channel ReLU6 bound that
    cross-layer equalization leaves) -> the same op on int8 on the host, the constant
    quantized with the activation's scale; the output keeps that scale. Exact, since
    quantization is monotone: ``Q(min(x, c)) == min(Q(x), Q(c))``."""

    op_types = ("Min", "Max")
    forms = QOP_ONLY

    def activation_tensors(self, node: onnx.NodeProto, ctx: RewriteContext) -> list[str]:
        split = _activation_and_constant(node, ctx)
        if split is None:
            return []
        return [n for n in (split[0], node.output[0]) if ctx.is_activation(n)]

    def apply(self, node: onnx.NodeProto, ctx: RewriteContext) -> bool:
        split = _activation_and_constant(node, ctx)
        if not ctx.static or split is None or ctx.opset < INT_MINMAX_OPSET:
            return False
        x, c = split
        state = ctx.edge(x)
        if state is None or state.params is None or state.params.per_channel:
            return False
        p = state.params
        if p.qtype.np_dtype != np.int8:
            return False
        cq = datapath.quantize_linear(
            np.asarray(ctx.constant(c), dtype=np.float32), p.scale, p.zero_point, np.int8
        )
        c_name = ctx.add_initializer(f"{node.output[0]}_bound", np.asarray(cq, np.int8))
        yq = ctx.fresh(f"{node.output[0]}_quantized")
        ctx.add_node(node.op_type, [state.q_name, c_name], [yq], name=node.name, inserted=False)
        ctx.declare_quantized(node.output[0], yq, p, state.scale_name, state.zp_name)
        return True


#: ONNX Min/Max take int8 from opset 12.
INT_MINMAX_OPSET = 12


def _activation_and_constant(node: onnx.NodeProto, ctx: RewriteContext) -> tuple[str, str] | None:
    """(activation, constant) inputs of a two-input Min/Max whose output keeps the
    activation's shape; None otherwise."""
    if len(node.input) != 2:
        return None
    a, b = node.input
    if ctx.is_activation(a) and ctx.is_constant(b):
        x, c = a, b
    elif ctx.is_activation(b) and ctx.is_constant(a):
        x, c = b, a
    else:
        return None
    xs, ys = _dims(ctx.graph, x), _dims(ctx.graph, node.output[0])
    if xs is None or xs != ys or not np.issubdtype(np.asarray(ctx.constant(c)).dtype, np.floating):
        return None
    return x, c


class SystolicGemmRule(OpRule):
    """Gemm (transA = 0, alpha = 1, beta = 1, constant B, optional 1-D constant C).

    Without a bias: QLinearMatMul on the (transposed if transB) weights. With a bias:
    the int32 bias belongs in the accumulator (spec section 2), which QLinearMatMul
    lacks, so the Gemm becomes Reshape [M, K, 1, 1] -> 1x1 QLinearConv -> Reshape
    [M, N]: the same arithmetic on the array, bias exact, and a following Relu fuses.
    """

    op_types = ("Gemm",)
    forms = QOP_ONLY

    def activation_tensors(self, node: onnx.NodeProto, ctx: RewriteContext) -> list[str]:
        return [n for n in (node.input[0], node.output[0]) if ctx.is_activation(n)]

    def apply(self, node: onnx.NodeProto, ctx: RewriteContext) -> bool:
        a, b = node.input[0], node.input[1]
        c = node.input[2] if len(node.input) > 2 and node.input[2] else None
        y = node.output[0]
        if not ctx.static or not ctx.is_activation(a) or ctx.rank(a) != 2:
            return False
        if not (ctx.is_constant(b) and ctx.is_float(b)) or ctx.constant(b).ndim != 2:
            return False
        if c is not None and not (ctx.is_constant(c) and ctx.is_float(c)):
            return False
        if int(attr_value(node, "transA", 0)) or float(attr_value(node, "alpha", 1.0)) != 1.0:
            return False
        if c is not None and float(attr_value(node, "beta", 1.0)) != 1.0:
            return False
        w = ctx.constant(b)
        wt = w.T if int(attr_value(node, "transB", 0)) else w  # [K, N]
        k, n = wt.shape
        bias = ctx.constant(c) if c is not None else None
        if bias is not None and (bias.size != n or (bias.ndim == 2 and bias.shape[0] != 1)):
            return False
        if bias is not None and bias.ndim > 2:
            return False
        ap = ctx.input_params(a)
        if ap is None or ap.per_channel:
            return False
        yp = ctx.activation_params(y)
        wp = ctx.weight_params(b, False, 0)
        qbias = None
        if bias is not None:
            qbias = ctx.quantized_bias(c, ap, wp)
            wp = qbias.weight_params
        as_ = ctx.quantized_activation(a)
        ys, yz = ctx.params_initializers(y, yp)
        yq = ctx.fresh(f"{y}_quantized")
        if qbias is None:
            ws = ctx.quantized_array(f"{b}_kn", np.ascontiguousarray(wt), wp)
            ctx.add_node(
                "QLinearMatMul",
                qop_inputs(as_) + qop_inputs(ws) + [ys, yz],
                [yq],
                name=node.name,
                inserted=False,
            )
        else:
            ws = ctx.quantized_array(f"{b}_1x1", np.ascontiguousarray(wt.T).reshape(n, k, 1, 1), wp)
            a4 = ctx.fresh(f"{a}_nchw")
            shape4 = ctx.add_initializer(f"{a}_shape_1x1", np.array([-1, k, 1, 1], np.int64))
            ctx.add_node("Reshape", [as_.q_name, shape4], [a4], base=f"{node.name}_to_1x1")
            y4 = ctx.fresh(f"{y}_1x1")
            bq = ctx.add_initializer(f"{c}_quantized", qbias.values)
            ctx.add_node(
                "QLinearConv",
                [a4, as_.scale_name, as_.zp_name] + qop_inputs(ws) + [ys, yz, bq],
                [y4],
                name=node.name,
                inserted=False,
                kernel_shape=[1, 1],
            )
            shape2 = ctx.add_initializer(f"{y}_shape", np.array([-1, n], np.int64))
            ctx.add_node("Reshape", [y4, shape2], [yq], base=f"{node.name}_from_1x1")
        ctx.declare_quantized(y, yq, yp, ys, yz)
        return True


def systolic_rules() -> dict[str, OpRule]:
    """The core's default rules with the Systolic replacements."""
    rules = default_rules()
    for op in FLOAT_OPS:
        rules.pop(op, None)
    act = SystolicActivationRule()
    rules["Relu"] = act
    rules["Clip"] = act
    rules["Add"] = SystolicAddRule()
    rules["Gemm"] = SystolicGemmRule()
    minmax = SystolicMinMaxRule()
    rules["Min"] = minmax
    rules["Max"] = minmax
    return rules


def _dims(graph: onnx.GraphProto, name: str) -> tuple | None:
    """Full static description of a tensor's shape (values or symbolic names)."""
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        if v.name != name:
            continue
        t = v.type.tensor_type
        if not t.HasField("shape"):
            return None
        dims = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                dims.append(d.dim_value)
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                return None
        return tuple(dims)
    return None


def _quantize_scalar(v: float, p: QuantParams) -> int:
    return int(datapath.quantize_linear(np.float32(v), p.scale, p.zero_point, np.int8))


__all__ = ["SystolicActivationRule", "SystolicAddRule", "SystolicGemmRule", "systolic_rules"]
