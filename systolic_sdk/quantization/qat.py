"""Quantization-aware-trained models: turn fake-quant Q/DQ pairs into tensor overrides.

A QAT export (or any QDQ model) carries its chosen scales in
QuantizeLinear -> DequantizeLinear pairs on activations and in DequantizeLinear nodes
on quantized (or Q -> DQ on float) weights. ``strip_fake_quant`` removes them, returns
the float model and one override per quantized tensor, so the regular quantizer can
rebuild the model in any format with exactly those scales.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from runtime_emulator.datapath import dequantize_linear
from systolic_sdk.errors import QuantizationError
from systolic_sdk.graph.util import drop_unused
from systolic_sdk.quantization.config import TensorOverride
from systolic_sdk.quantization.types import QuantType

_QTYPES = {
    np.dtype(np.int8): QuantType.QInt8,
    np.dtype(np.uint8): QuantType.QUInt8,
    np.dtype(np.int16): QuantType.QInt16,
    np.dtype(np.uint16): QuantType.QUInt16,
}
_Q_DOMAINS = ("", "ai.onnx", "com.microsoft")


@dataclass
class StrippedModel:
    """The float model without fake-quant nodes, and the scales they carried."""

    model: onnx.ModelProto
    overrides: dict[str, TensorOverride] = field(default_factory=dict)
    pairs: int = 0  # Q -> DQ pairs removed
    dequantized: int = 0  # constant -> DQ folded into float initializers


def has_fake_quant(model: onnx.ModelProto) -> bool:
    """True if the graph holds QuantizeLinear or DequantizeLinear nodes."""
    return any(_is_q(n) or _is_dq(n) for n in model.graph.node)


def strip_fake_quant(model: onnx.ModelProto, restore_clamps: bool = True) -> StrippedModel:
    """Remove fake-quant Q/DQ nodes; return the float model and the per-tensor overrides.

    - ``x -> QuantizeLinear -> DequantizeLinear -> y``: the pair is removed and the tensor
      gets the pair's scale and zero point. It keeps the name ``y`` (the name a quantizer
      left on the original tensor) when only the pair read ``x``, else the name ``x``.
    - ``integer constant -> DequantizeLinear -> y``: ``y`` becomes a float initializer
      (dequantized exactly); 8/16-bit constants (weights) get an override, 32-bit ones
      (biases) do not (the quantizer derives the bias scale).
    - With ``restore_clamps``, a pair on a computed tensor whose zero point is the type's
      minimum clamps negatives (quantizers emit it after removing a Relu or ReLU6): unless
      ``x`` is provably non-negative already, the clamp stays as ``Clip(x, 0, hi)``, ``hi``
      the pair's saturation point, with the pair's scale on its output too.

    Any other use of QuantizeLinear/DequantizeLinear raises QuantizationError naming the node.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    consts = _constants(graph)
    producer = {o: n for n in graph.node for o in n.output if o}
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in dict.fromkeys(i for i in n.input if i):
            users.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in graph.output}
    result = StrippedModel(out)
    remove: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    added: list[onnx.NodeProto] = []
    alias: dict[str, str] = {}  # tensor name -> the name that replaces it
    pairs: dict[int, tuple[onnx.NodeProto, list[onnx.NodeProto]]] = {}
    for node in graph.node:
        if not _is_dq(node):
            continue
        name = node.name or node.output[0]
        scale, zp, axis = _params(node, consts, name)
        src = node.input[0]
        src_node = producer.get(src)
        if src_node is not None and _is_q(src_node):
            q_name = src_node.name or src_node.output[0]
            q_scale, q_zp, _ = _params(src_node, consts, q_name)
            if not (_same(scale, q_scale) and _same(zp, q_zp)):
                raise QuantizationError(
                    f"node '{name}': DequantizeLinear scale/zero point differ from those of "
                    f"its QuantizeLinear '{q_name}'; not a fake-quant pair"
                )
            stray = [u for u in users.get(src, []) if not _is_dq(u)]
            if stray:
                raise QuantizationError(
                    f"node '{q_name}': QuantizeLinear output '{src}' also feeds "
                    f"'{stray[0].name or stray[0].op_type}' ({stray[0].op_type}); not a "
                    "fake-quant pair"
                )
            pairs.setdefault(id(src_node), (src_node, []))[1].append(node)
        elif src in consts and consts[src].dtype.kind in "iu":
            q = consts[src]
            values = dequantize_linear(q, scale, zp, axis if scale.size > 1 else None)
            values = np.asarray(values, dtype=np.float32)
            new_inits.append(numpy_helper.from_array(values, node.output[0]))
            if q.dtype in _QTYPES:
                _add_override(
                    result.overrides, node.output[0], _override(scale, zp, axis, node.output[0])
                )
            remove.add(id(node))
            result.dequantized += 1
        else:
            raise QuantizationError(
                f"node '{name}': DequantizeLinear input '{src}' is neither a QuantizeLinear "
                "output nor a constant; not a fake-quant model"
            )
    for node in graph.node:
        if _is_q(node) and id(node) not in pairs:
            raise QuantizationError(
                f"node '{node.name or node.output[0]}': QuantizeLinear without a "
                "DequantizeLinear partner; not a fake-quant model"
            )
    for q_node, dq_nodes in pairs.values():
        scale, zp, axis = _params(q_node, consts, q_node.name or q_node.output[0])
        x, d0 = q_node.input[0], dq_nodes[0].output[0]
        ov = _override(scale, zp, axis, x)
        remove.add(id(q_node))
        remove.update(id(d) for d in dq_nodes)
        result.pairs += len(dq_nodes)
        if (
            restore_clamps
            and x in producer
            and zp.size == 1
            and int(zp.reshape(-1)[0]) == _qmin(zp.dtype)
            and not _non_negative(x, producer, consts)
        ):
            hi = np.float32(np.float32(_qmax(zp.dtype) - _qmin(zp.dtype)) * scale.reshape(-1)[0])
            lo_name, hi_name = f"{d0}_clip_min", f"{d0}_clip_max"
            new_inits.append(numpy_helper.from_array(np.array(0, np.float32), lo_name))
            new_inits.append(numpy_helper.from_array(np.array(hi, np.float32), hi_name))
            added.append(helper.make_node("Clip", [x, lo_name, hi_name], [d0], name=f"{d0}_clip"))
            _add_override(result.overrides, x, ov)
            _add_override(result.overrides, d0, ov)
            target = d0
        elif x in producer and x not in graph_outputs and users.get(x) == [q_node]:
            alias[x] = d0  # x only fed this pair: its producer takes the pair's output name
            _add_override(result.overrides, d0, ov)
            target = d0
        else:
            _add_override(result.overrides, x, ov)
            target = x
        for d in dq_nodes:
            if d.output[0] != target:
                alias[d.output[0]] = target
    if not remove:
        return result
    kept = [n for n in graph.node if id(n) not in remove] + added
    _apply_aliases(kept, alias, graph_outputs)
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits)
    drop_unused(graph)
    _toposort(graph)
    return result


def _apply_aliases(
    nodes: list[onnx.NodeProto], alias: dict[str, str], graph_outputs: set[str]
) -> None:
    """Rename tensors; a replaced graph output keeps its name through an Identity."""

    def resolve(name: str) -> str:
        seen = set()
        while name in alias and name not in seen:
            seen.add(name)
            name = alias[name]
        return name

    for node in nodes:
        for k, name in enumerate(node.input):
            if name:
                node.input[k] = resolve(name)
        for k, name in enumerate(node.output):
            if name in alias and name not in graph_outputs:
                node.output[k] = resolve(name)
    for name in sorted(graph_outputs & set(alias)):
        target = resolve(name)
        producers = [n for n in nodes if name in n.output]
        if not producers:
            nodes.append(helper.make_node("Identity", [target], [name], name=f"{name}_identity"))


def _toposort(graph: onnx.GraphProto) -> None:
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in known for i in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            ordered.extend(rest)  # leave the remainder as is; the checker will name it
            break
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


_PASS_THROUGH = ("MaxPool", "Flatten", "Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze")


def _non_negative(
    name: str,
    producer: dict[str, onnx.NodeProto],
    consts: dict[str, np.ndarray],
    depth: int = 0,
) -> bool:
    """True if ``name`` is provably >= 0 (Relu, Clip(min >= 0), and shape/pool ops on those)."""
    node = producer.get(name)
    if node is None or depth > 64:
        return name in consts and bool(np.all(consts[name] >= 0))
    op = node.op_type
    if op == "Relu":
        return True
    if op == "Clip":
        lo = node.input[1] if len(node.input) > 1 else ""
        if lo in consts:
            return bool(np.all(consts[lo] >= 0))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return "min" in attrs and attrs["min"] >= 0
    if _is_q(node) and len(node.input) > 2 and node.input[2] in consts:
        zp = consts[node.input[2]]
        if zp.size == 1 and int(zp.reshape(-1)[0]) == _qmin(zp.dtype):
            return True
    if op in _PASS_THROUGH or _is_dq(node) or _is_q(node):
        return _non_negative(node.input[0], producer, consts, depth + 1)
    if op in ("Add", "Concat", "Max"):
        return all(_non_negative(i, producer, consts, depth + 1) for i in node.input if i)
    return False


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    return consts


def _params(
    node: onnx.NodeProto, consts: dict[str, np.ndarray], name: str
) -> tuple[np.ndarray, np.ndarray, int]:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("block_size", 0):
        raise QuantizationError(f"node '{name}': blocked quantization is not supported")
    scale_name = node.input[1] if len(node.input) > 1 else ""
    if scale_name not in consts:
        raise QuantizationError(
            f"node '{name}': scale '{scale_name}' is not a constant; cannot read it"
        )
    scale = np.asarray(consts[scale_name], dtype=np.float32)
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in consts:
            raise QuantizationError(
                f"node '{name}': zero point '{node.input[2]}' is not a constant; cannot read it"
            )
        zp = np.asarray(consts[node.input[2]])
    else:
        dtype = np.uint8
        if "output_dtype" in attrs and attrs["output_dtype"]:
            dtype = helper.tensor_dtype_to_np_dtype(attrs["output_dtype"])
        zp = np.zeros(scale.shape, dtype=dtype)
    if zp.dtype not in _QTYPES and zp.dtype != np.int32:
        raise QuantizationError(f"node '{name}': element type {zp.dtype} is not supported")
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise QuantizationError(f"node '{name}': scale must be positive and finite")
    return scale, zp, int(attrs.get("axis", 1))


def _override(scale: np.ndarray, zp: np.ndarray, axis: int, tensor: str) -> TensorOverride:
    per_channel = scale.size > 1
    zps = np.broadcast_to(zp.reshape(-1), scale.reshape(-1).shape)
    return TensorOverride(
        scale=tuple(float(s) for s in scale.reshape(-1)),
        zero_point=tuple(int(z) for z in zps),
        quant_type=_QTYPES.get(zp.dtype),
        axis=axis if per_channel else None,
    )


def _add_override(overrides: dict[str, TensorOverride], name: str, ov: TensorOverride) -> None:
    old = overrides.get(name)
    if old is not None and old != ov:
        raise QuantizationError(
            f"tensor '{name}': fake-quant pairs disagree on its scale/zero point "
            f"({old.scale[:1]}/{old.zero_point[:1] if old.zero_point else None} vs "
            f"{ov.scale[:1]}/{ov.zero_point[:1] if ov.zero_point else None})"
        )
    overrides[name] = ov


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))


def _qmin(dtype: np.dtype) -> int:
    return int(np.iinfo(dtype).min)


def _qmax(dtype: np.dtype) -> int:
    return int(np.iinfo(dtype).max)


def _is_q(node: onnx.NodeProto) -> bool:
    return node.op_type == "QuantizeLinear" and node.domain in _Q_DOMAINS


def _is_dq(node: onnx.NodeProto) -> bool:
    return node.op_type == "DequantizeLinear" and node.domain in _Q_DOMAINS
