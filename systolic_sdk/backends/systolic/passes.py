"""Graph passes of the Systolic backend: range narrowing (before the walk) and ReLU
fusion (after it)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from runtime_emulator.kernels import SYSTOLIC_DOMAIN
from systolic_sdk.graph.util import consumers, opset_version

Ranges = dict[str, tuple[float, float]]
MS_DOMAIN = "com.microsoft"
#: Producers a QLinearRelu may be fused into: (domain, op_type).
FUSABLE = {("", "QLinearConv"), (MS_DOMAIN, "QLinearAdd")}
#: Data-movement ops a ReLU commutes with: a QLinearRelu after a chain of them still
#: fuses into the producer before the chain (e.g. a Gemm lowered to a 1x1 conv).
LAYOUT_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")


def clip_bounds(node: onnx.NodeProto, model: onnx.ModelProto) -> tuple[float, float] | None:
    """A Clip's constant (lo, hi) (infinite when absent); None when a bound is computed."""
    lo, hi = -np.inf, np.inf
    if opset_version(model) < 11:
        for a in node.attribute:
            if a.name == "min":
                lo = float(a.f)
            elif a.name == "max":
                hi = float(a.f)
        return lo, hi
    inits = {t.name: t for t in model.graph.initializer}
    out = [lo, hi]
    for i in (1, 2):
        name = node.input[i] if len(node.input) > i else ""
        if not name:
            continue
        if name not in inits:
            return None
        out[i - 1] = float(numpy_helper.to_array(inits[name]).reshape(()))
    return out[0], out[1]


def narrow_ranges(model: onnx.ModelProto, ranges: Ranges) -> Ranges:
    """Spec section 7, in reverse graph order so that narrowing propagates upwards.

    - a Relu whose only consumer is a MaxPool takes the MaxPool output's range;
    - a Clip's output, and its input when the Clip is that tensor's only consumer,
      narrow to the Clip's bounds;
    - a tensor consumed only by a Relu uses rmin = max(rmin, 0), and, when that Relu's
      only consumer is a Clip or a Min, no more than the Relu output's narrowed rmax;
    - a Min (Max) with a constant narrows its output, and its input when it is the sole
      consumer, to rmax <= max(c) (rmin >= min(c)), as a Clip would.
    Graph outputs are never narrowed.
    """
    out = dict(ranges)
    graph = model.graph
    readers = consumers(graph)
    outputs = {o.name for o in graph.output}

    def sole_reader(name: str) -> onnx.NodeProto | None:
        nodes = readers.get(name, [])
        return nodes[0] if len(nodes) == 1 and name not in outputs else None

    for node in reversed(list(graph.node)):
        if node.domain not in ("", "ai.onnx") or not node.output:
            continue
        x, y = (node.input[0] if node.input else ""), node.output[0]
        if node.op_type == "Relu":
            nxt = sole_reader(y)
            if nxt is not None and nxt.op_type == "MaxPool" and nxt.output[0] in out:
                out[y] = out[nxt.output[0]]
            if x in out and sole_reader(x) == node:
                lo, hi = out[x]
                if nxt is not None and nxt.op_type in ("Min", "Clip") and y in out:
                    hi = min(hi, out[y][1])  # the bound below clips what the conv exceeds
                out[x] = (max(lo, 0.0), max(hi, 0.0))
        elif node.op_type in ("Min", "Max") and len(node.input) == 2:
            bounds = _minmax_bounds(node, model)
            if bounds is None:
                continue
            x, c = bounds
            targets = [y] if y not in outputs else []
            if sole_reader(x) == node:
                targets.append(x)
            for name in targets:
                if name in out:
                    lo, hi = out[name]
                    if node.op_type == "Min":
                        out[name] = _clamp_range(lo, hi, -np.inf, float(np.max(c)))
                    else:
                        out[name] = _clamp_range(lo, hi, float(np.min(c)), np.inf)
        elif node.op_type == "Clip":
            bounds = clip_bounds(node, model)
            if bounds is None:
                continue
            targets = [y] if y not in outputs else []
            if x and sole_reader(x) == node:
                targets.append(x)
            for name in targets:
                if name in out:
                    lo, hi = out[name]
                    out[name] = _clamp_range(lo, hi, *bounds)
    return out


def _minmax_bounds(node: onnx.NodeProto, model: onnx.ModelProto) -> tuple[str, np.ndarray] | None:
    """(activation input, constant values) of a two-input Min/Max with one initializer."""
    inits = {t.name: t for t in model.graph.initializer}
    a, b = node.input
    if b in inits and a not in inits:
        return a, numpy_helper.to_array(inits[b])
    if a in inits and b not in inits:
        return b, numpy_helper.to_array(inits[a])
    return None


def _clamp_range(lo: float, hi: float, blo: float, bhi: float) -> tuple[float, float]:
    new_lo = min(max(lo, blo), bhi)
    new_hi = max(min(hi, bhi), blo)
    return float(new_lo), float(new_hi)


def fuse_relu(model: onnx.ModelProto, config: object = None) -> onnx.ModelProto:
    """Fold each QLinearRelu into its producing QLinearConv / QLinearAdd as ``relu=1``.

    Only when the producer's output has no other consumer and is not a graph output
    (the QLinearRelu keeps its input's scale, so the producer's y_scale stays right);
    single-consumer Reshape/Flatten/Transpose/Squeeze/Unsqueeze nodes in between are
    allowed (ReLU commutes with them).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    producer = {o: n for n in graph.node for o in n.output}
    readers = consumers(graph)
    outputs = {o.name for o in graph.output}
    drop: set[int] = set()
    for i, node in enumerate(graph.node):
        if node.op_type != "QLinearRelu" or node.domain != SYSTOLIC_DOMAIN:
            continue
        x = node.input[0]
        prod = producer.get(x)
        last = prod  # the node whose output the relu's consumers will read
        while prod is not None and prod.domain == "" and prod.op_type in LAYOUT_OPS:
            if len(readers.get(prod.output[0], [])) != 1 or prod.output[0] in outputs:
                break
            prod = producer.get(prod.input[0])
        if prod is None or (prod.domain, prod.op_type) not in FUSABLE:
            continue
        chain_ok = all(
            len(readers.get(t, [])) == 1 and t not in outputs for t in (prod.output[0], x)
        )
        if not chain_ok or any(a.name == "relu" and a.i for a in prod.attribute):
            continue
        kept = [a for a in prod.attribute if a.name != "relu"]
        del prod.attribute[:]
        prod.attribute.extend(kept)
        prod.attribute.append(helper.make_attribute("relu", 1))
        last.output[0] = node.output[0]
        producer[node.output[0]] = last
        drop.add(i)
    nodes = [n for i, n in enumerate(graph.node) if i not in drop]
    del graph.node[:]
    graph.node.extend(nodes)
    vi = [v for v in graph.value_info if v.name in {o for n in nodes for o in n.output}]
    del graph.value_info[:]
    graph.value_info.extend(vi)
    return sync_domains(out)


def sync_domains(model: onnx.ModelProto) -> onnx.ModelProto:
    """Import com.systolic (version 1) exactly when a node uses it."""
    used = any(n.domain == SYSTOLIC_DOMAIN for n in model.graph.node)
    keep = [op for op in model.opset_import if op.domain != SYSTOLIC_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    if used:
        model.opset_import.append(helper.make_opsetid(SYSTOLIC_DOMAIN, 1))
    return model
