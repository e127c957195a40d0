"""Graph queries over an onnx.GraphProto: producers, consumers, order, unique names."""

from __future__ import annotations

from collections import defaultdict

import onnx

from systolic_sdk.errors import SdkError


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node that produces it."""
    return {out: node for node in graph.node for out in node.output if out}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it (a node reading it twice is listed once)."""
    result: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in dict.fromkeys(i for i in node.input if i):
            result[name].append(node)
    return dict(result)


def subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope tensor names that a node's subgraphs (If/Loop/Scan bodies) read."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs)
        if attr.HasField("g"):
            graphs.append(attr.g)
        for g in graphs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for sub in g.node:
                local.update(o for o in sub.output if o)
            for sub in g.node:
                names.update(i for i in sub.input if i and i not in local)
                names.update(subgraph_inputs(sub) - local)
    return names


def drop_unused(graph: onnx.GraphProto) -> None:
    """Remove initializers and value_info that no node (or subgraph) reads or produces."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for node in graph.node:
        used |= subgraph_inputs(node)
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    names = {o for n in graph.node for o in n.output} | {t.name for t in graph.initializer}
    names |= {i.name for i in graph.input}
    vi = [v for v in graph.value_info if v.name in names]
    del graph.value_info[:]
    graph.value_info.extend(vi)


def check_topological(graph: onnx.GraphProto, where: str = "model") -> None:
    """Raise SdkError if a node reads a tensor that no earlier node, input or initializer makes."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        for name in [i for i in node.input if i] + sorted(subgraph_inputs(node)):
            if name not in known:
                later = any(name in n.output for n in graph.node)
                what = "a later node (graph not in topological order or has a cycle)"
                raise SdkError(
                    f"{where}: node '{node.name or node.op_type}' reads tensor '{name}' "
                    f"produced by {what if later else 'no node, input or initializer'}"
                )
        known.update(o for o in node.output if o)


class NameScope:
    """Hands out tensor/node names that are unique in a graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self._used: set[str] = set()
        for v in list(graph.input) + list(graph.output) + list(graph.value_info):
            self._used.add(v.name)
        self._used.update(t.name for t in graph.initializer)
        for node in graph.node:
            self._used.update(node.input)
            self._used.update(node.output)
            self._used.add(node.name)

    def reserve(self, name: str) -> None:
        self._used.add(name)

    def fresh(self, base: str) -> str:
        """``base`` if unused, else ``base_1``, ``base_2``, ... (and reserve it)."""
        name = base
        k = 0
        while name in self._used or not name:
            k += 1
            name = f"{base}_{k}"
        self._used.add(name)
        return name


def ensure_node_names(graph: onnx.GraphProto) -> None:
    """Give every node a unique, non-empty name (existing unique names are kept)."""
    seen: set[str] = set()
    scope = NameScope(graph)
    for node in graph.node:
        if not node.name or node.name in seen:
            base = node.name or f"{node.op_type}_{node.output[0] if node.output else 'node'}"
            node.name = scope.fresh(base)
        seen.add(node.name)


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    """The model's opset for ``domain`` ('' and 'ai.onnx' are the default domain), or 0."""
    domains = ("", "ai.onnx") if domain in ("", "ai.onnx") else (domain,)
    for op in model.opset_import:
        if op.domain in domains:
            return int(op.version)
    return 0
