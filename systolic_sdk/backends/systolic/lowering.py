"""Standard-ONNX lowering of a Systolic graph, for comparison in stock onnxruntime.

- QLinearConv ``relu=1`` -> QLinearConv + int8 Clip(0, 127) (spec 2.5: ReLU after
  rounding and saturation);
- QLinearRelu -> int8 Clip(0, 127);
- com.microsoft QLinearAdd (the accelerator's rule, spec section 4) -> per input
  ``QuantizeLinear(f32(a) * f32(s_a / s_c), 1, 0)`` (sat8(rne(.)) of a float32 product),
  the sum of the two int8 values in float (exact), QuantizeLinear(., 1, 0) (saturation),
  and Clip(0, 127) when ``relu=1``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime_emulator.kernels import SYSTOLIC_DOMAIN
from systolic_sdk.backends.systolic.passes import MS_DOMAIN, sync_domains
from systolic_sdk.errors import SdkError

F32 = np.float32


class _Names:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.used = {n.name for n in graph.node} | {o for n in graph.node for o in n.output}
        self.used |= {t.name for t in graph.initializer} | {i.name for i in graph.input}

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


def lower_systolic(model: onnx.ModelProto) -> onnx.ModelProto:
    """The standard-ONNX equivalent of a Systolic-backend model (a new model)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    names = _Names(graph)
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    new_inits: list[onnx.TensorProto] = []

    def const(base: str, value: np.ndarray) -> str:
        name = names.fresh(base)
        new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def relu_clip(x: str, y: str, base: str) -> onnx.NodeProto:
        lo = const(f"{base}_relu_min", np.array(0, np.int8))
        hi = const(f"{base}_relu_max", np.array(127, np.int8))
        return helper.make_node("Clip", [x, lo, hi], [y], name=names.fresh(f"{base}_relu"))

    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        relu = any(a.name == "relu" and a.i for a in node.attribute)
        if node.op_type == "QLinearRelu" and node.domain in ("", SYSTOLIC_DOMAIN):
            nodes.append(relu_clip(node.input[0], node.output[0], node.name))
        elif node.op_type == "QLinearConv" and node.domain in ("", "ai.onnx"):
            conv = onnx.NodeProto()
            conv.CopyFrom(node)
            kept = [a for a in conv.attribute if a.name != "relu"]
            del conv.attribute[:]
            conv.attribute.extend(kept)
            if relu:
                mid = names.fresh(f"{node.output[0]}_before_relu")
                conv.output[0] = mid
                nodes += [conv, relu_clip(mid, node.output[0], node.name)]
            else:
                nodes.append(conv)
        elif node.op_type == "QLinearAdd" and node.domain == MS_DOMAIN:
            nodes += _lower_add(node, relu, inits, const, names)
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    return sync_domains(out)


def _lower_add(node, relu, inits, const, names) -> list[onnx.NodeProto]:
    def scalar(i: int) -> np.ndarray:
        name = node.input[i]
        if name not in inits:
            raise SdkError(f"node '{node.name}': QLinearAdd input {i} ('{name}') is not constant")
        return np.asarray(inits[name]).reshape(())

    s_a, s_b, s_c = (scalar(i).astype(F32) for i in (1, 4, 6))
    for i in (2, 5, 7):
        if len(node.input) > i and node.input[i] and scalar(i) != 0:
            raise SdkError(
                f"node '{node.name}': QLinearAdd zero point '{node.input[i]}' is not 0 "
                "(the Systolic rule is symmetric)"
            )
    one = const(f"{node.name}_unit_scale", np.array(1.0, F32))
    zero = const(f"{node.name}_zero", np.array(0, np.int8))
    nodes, terms = [], []
    for xi, s in ((0, s_a), (3, s_b)):
        base = f"{node.name}_in{xi // 3}"
        f = names.fresh(f"{base}_float")
        nodes.append(helper.make_node("Cast", [node.input[xi]], [f], to=TensorProto.FLOAT))
        m = const(f"{base}_multiplier", np.divide(s, s_c, dtype=F32))
        p = names.fresh(f"{base}_scaled")
        nodes.append(helper.make_node("Mul", [f, m], [p]))
        q = names.fresh(f"{base}_int8")
        nodes.append(helper.make_node("QuantizeLinear", [p, one, zero], [q]))
        t = names.fresh(f"{base}_value")
        nodes.append(helper.make_node("Cast", [q], [t], to=TensorProto.FLOAT))
        terms.append(t)
    total = names.fresh(f"{node.name}_sum")
    nodes.append(helper.make_node("Add", terms, [total]))
    y = node.output[0]
    sat = names.fresh(f"{y}_saturated") if relu else y
    nodes.append(helper.make_node("QuantizeLinear", [total, one, zero], [sat], name=node.name))
    if relu:
        lo = const(f"{node.name}_relu_min", np.array(0, np.int8))
        hi = const(f"{node.name}_relu_max", np.array(127, np.int8))
        nodes.append(helper.make_node("Clip", [sat, lo, hi], [y]))
    for n in nodes:
        if not n.name:
            n.name = names.fresh(f"{node.name}_{n.op_type}")
    return nodes
