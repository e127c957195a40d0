"""The NHWC variant of a Systolic graph (spec section 6) and the op flavours.

:func:`to_nhwc` turns each QLinearConv into QLinearConv_nhwc (HWIO weights), lets NHWC
flow through QLinearRelu, com.microsoft QLinearAdd and int8 Min/Max with a constant
(the constant re-laid out), fuses an eligible MaxPool into
the conv, and places Transpose nodes only where an NHWC tensor meets an NCHW consumer
or a graph output. :func:`remove_cancelling_transposes` drops Transpose pairs whose
permutations compose to the identity, then dead nodes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from runtime_emulator.kernels import SYSTOLIC_DOMAIN
from systolic_sdk.backends.systolic.passes import MS_DOMAIN, sync_domains
from systolic_sdk.graph.util import NameScope, consumers, subgraph_inputs

TO_NHWC = [0, 2, 3, 1]
TO_NCHW = [0, 3, 1, 2]
#: The Gemmini fork of onnxruntime registers its ops in the default domain.
GEMMINI_ORT_DOMAIN = ""
SYSTOLIC_OPS = ("QLinearRelu", "QLinearConv_nhwc")


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def pool_fusable(pool: onnx.NodeProto) -> bool:
    """A MaxPool the conv can absorb: 2-D, auto_pad NOTSET, ceil_mode 0, dilations 1,
    storage_order 0, no Indices output."""
    if pool.op_type != "MaxPool" or pool.domain not in ("", "ai.onnx"):
        return False
    a = _attrs(pool)
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return (
        len(a.get("kernel_shape", [])) == 2
        and auto_pad == "NOTSET"
        and int(a.get("ceil_mode", 0)) == 0
        and all(int(d) == 1 for d in a.get("dilations", [1, 1]))
        and int(a.get("storage_order", 0)) == 0
        and len([o for o in pool.output if o]) == 1
    )


def to_nhwc(model: onnx.ModelProto, ops_domain: str = SYSTOLIC_DOMAIN) -> onnx.ModelProto:
    """The NHWC variant of a Systolic NCHW graph (a new model); ``ops_domain`` is the
    domain of QLinearConv_nhwc and QLinearRelu (com.systolic, or "" as the Gemmini fork
    of onnxruntime registers them)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    names = NameScope(graph)
    inits = {t.name: t for t in graph.initializer}
    readers = consumers(graph)
    outputs = {o.name for o in graph.output}
    nhwc: dict[str, str] = {}  # NCHW tensor name -> its NHWC twin
    nchw_ready: set[str] = {i.name for i in graph.input} | set(inits)
    to_nhwc_cache: dict[str, str] = {}
    fused_pools: set[int] = set()
    nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []

    def transpose(x: str, y: str, perm: list[int], base: str) -> None:
        nodes.append(helper.make_node("Transpose", [x], [y], name=names.fresh(base), perm=perm))

    def as_nhwc(x: str) -> str:
        if x in nhwc:
            return nhwc[x]
        if x not in to_nhwc_cache:
            y = names.fresh(f"{x}_nhwc")
            transpose(x, y, TO_NHWC, f"{x}_to_nhwc")
            to_nhwc_cache[x] = y
        return to_nhwc_cache[x]

    def as_nchw(x: str) -> None:
        if x in nhwc and x not in nchw_ready:
            transpose(nhwc[x], x, TO_NCHW, f"{x}_to_nchw")
            nchw_ready.add(x)

    graph_nodes = list(graph.node)
    index = {id(n): i for i, n in enumerate(graph_nodes)}
    for i, node in enumerate(graph_nodes):
        if i in fused_pools:
            continue
        kind = (node.domain, node.op_type)
        w = node.input[3] if kind in (("", "QLinearConv"), ("ai.onnx", "QLinearConv")) else ""
        if w and w in inits and len(inits[w].dims) == 4:
            conv = helper.make_node(
                "QLinearConv_nhwc",
                list(node.input),
                [],
                name=node.name,
                domain=ops_domain,
            )
            conv.attribute.extend(node.attribute)
            conv.input[0] = as_nhwc(node.input[0])
            hwio = numpy_helper.to_array(inits[w]).transpose(2, 3, 1, 0)
            w_name = names.fresh(f"{w}_hwio")
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(hwio), w_name))
            conv.input[3] = w_name
            y = node.output[0]
            nxt = readers.get(y, [])
            if len(nxt) == 1 and y not in outputs and pool_fusable(nxt[0]):
                pool = nxt[0]
                a = _attrs(pool)
                conv.attribute.extend(
                    [
                        helper.make_attribute("maxpool", 1),
                        helper.make_attribute("pool_kernel_shape", list(a["kernel_shape"])),
                        helper.make_attribute("pool_pads", list(a.get("pads", [0, 0, 0, 0]))),
                        helper.make_attribute("pool_strides", list(a.get("strides", [1, 1]))),
                    ]
                )
                fused_pools.add(index[id(pool)])
                y = pool.output[0]
            nhwc[y] = names.fresh(f"{y}_nhwc")
            conv.output.append(nhwc[y])
            nodes.append(conv)
            continue
        bound = _nhwc_bound(node, inits, nhwc)
        if bound is not None:
            moved = onnx.NodeProto()
            moved.CopyFrom(node)
            c_name = names.fresh(f"{node.input[1]}_nhwc")
            new_inits.append(numpy_helper.from_array(bound, c_name))
            moved.input[0], moved.input[1] = nhwc[node.input[0]], c_name
            y = node.output[0]
            nhwc[y] = names.fresh(f"{y}_nhwc")
            moved.output[0] = nhwc[y]
            nodes.append(moved)
            continue
        passes = (
            kind in ((SYSTOLIC_DOMAIN, "QLinearRelu"), ("", "QLinearRelu"))
            and node.input[0] in nhwc
        ) or (kind == (MS_DOMAIN, "QLinearAdd") and node.input[0] in nhwc and node.input[3] in nhwc)
        if passes:
            moved = onnx.NodeProto()
            moved.CopyFrom(node)
            for k in (0, 3) if node.op_type == "QLinearAdd" else (0,):
                moved.input[k] = nhwc[node.input[k]]
            y = node.output[0]
            nhwc[y] = names.fresh(f"{y}_nhwc")
            moved.output[0] = nhwc[y]
            nodes.append(moved)
            continue
        for x in list(node.input) + sorted(subgraph_inputs(node)):
            as_nchw(x)
        nodes.append(node)
        nchw_ready.update(o for o in node.output if o)
    for o in graph.output:
        as_nchw(o.name)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    if ops_domain != SYSTOLIC_DOMAIN:
        for n in graph.node:
            if n.domain == SYSTOLIC_DOMAIN and n.op_type in SYSTOLIC_OPS:
                n.domain = ops_domain
    return sync_domains(remove_cancelling_transposes(out))


def _nhwc_bound(
    node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], nhwc: dict[str, str]
) -> np.ndarray | None:
    """The NHWC form of the constant of an int8 ``Min``/``Max(x, c)`` whose ``x`` is
    NHWC (c scalar, [C,1,1] or [1,C,1,1]); None when the node cannot pass NHWC through."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("Min", "Max"):
        return None
    if len(node.input) != 2 or node.input[0] not in nhwc or node.input[1] not in inits:
        return None
    c = numpy_helper.to_array(inits[node.input[1]])
    if c.size == 1:
        return c.copy()
    if c.ndim == 3 and c.shape[1:] == (1, 1):
        return np.ascontiguousarray(c.transpose(1, 2, 0))
    if c.ndim == 4 and c.shape[0] == 1 and c.shape[2:] == (1, 1):
        return np.ascontiguousarray(c.transpose(0, 2, 3, 1))
    return None


def remove_cancelling_transposes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Bypass each Transpose fed by a Transpose when their perms compose to the
    identity, then remove dead Transpose nodes and unused initializers (in place)."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    changed = True
    while changed:
        changed = False
        producer = {o: n for n in graph.node for o in n.output}
        for node in graph.node:
            if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
                continue
            prev = producer.get(node.input[0])
            if prev is None or prev.op_type != "Transpose" or prev.domain not in ("", "ai.onnx"):
                continue
            p1, p2 = _perm(prev), _perm(node)
            if p1 is None or p2 is None or len(p1) != len(p2):
                continue
            if [p1[k] for k in p2] != list(range(len(p1))) or node.output[0] in outputs:
                continue
            src, dst = prev.input[0], node.output[0]
            for n in graph.node:
                for k, name in enumerate(n.input):
                    if name == dst:
                        n.input[k] = src
            node.output[0] = ""  # dead now
            changed = True
        _drop_dead(graph)
    return model


def _perm(node: onnx.NodeProto) -> list[int] | None:
    for a in node.attribute:
        if a.name == "perm":
            return list(a.ints)
    return None


def _drop_dead(graph: onnx.GraphProto) -> None:
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        read |= {i for n in graph.node for i in subgraph_inputs(n)}
        keep = [
            n
            for n in graph.node
            if n.op_type != "Transpose" or any(o and o in read for o in n.output)
        ]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    read = {i for n in graph.node for i in n.input} | outputs | {i.name for i in graph.input}
    read |= {i for n in graph.node for i in subgraph_inputs(n)}
    inits = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    produced = {o for n in graph.node for o in n.output}
    vi = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(vi)
