"""Small graph helpers shared by the fp32 transforms: constants, consumers, linear layers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from systolic_sdk.errors import SdkError

LINEAR_OPS = ("Conv", "Gemm", "MatMul")


def attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """The value of attribute ``name`` of ``node``, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value: object) -> None:
    """Set (replace or add) one attribute of ``node``."""
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


class GraphIndex:
    """Initializers, Constant-node values, producers and consumers of one graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.graph_inputs = {i.name for i in graph.input}
        self.graph_outputs = {o.name for o in graph.output}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.constant_nodes: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
            if node.op_type == "Constant" and node.output:
                self.constant_nodes[node.output[0]] = node

    def is_weight(self, name: str) -> bool:
        """True when ``name`` is an initializer the user cannot override at run time."""
        return name in self.inits and name not in self.graph_inputs

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output, else None."""
        if name in self.inits and name not in self.graph_inputs:
            return numpy_helper.to_array(self.inits[name])
        node = self.constant_nodes.get(name)
        if node is not None:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name == "value_float":
                    return np.array(a.f, dtype=np.float32)
                if a.name == "value_floats":
                    return np.array(list(a.floats), dtype=np.float32)
        return None

    def n_uses(self, name: str) -> int:
        """How many node inputs and graph outputs read ``name``."""
        return len(self.consumers.get(name, [])) + (name in self.graph_outputs)

    def sole_consumer(self, name: str) -> onnx.NodeProto | None:
        """The only node reading ``name`` (None if several, none, or it is a graph output)."""
        if name in self.graph_outputs:
            return None
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 else None

    def unique_name(self, base: str) -> str:
        """A tensor name not used anywhere in the graph."""
        used = set(self.inits) | set(self.producer) | self.graph_inputs | set(self.consumers)
        name, k = base, 0
        while name in used:
            k += 1
            name = f"{base}_{k}"
        return name

    def set_init(self, name: str, value: np.ndarray) -> None:
        """Replace or add the initializer ``name``."""
        tensor = numpy_helper.from_array(value, name)
        graph = self.model.graph
        if name in self.inits:
            for i, t in enumerate(graph.initializer):
                if t.name == name:
                    graph.initializer[i].CopyFrom(tensor)
                    break
        else:
            graph.initializer.append(tensor)
        self.inits[name] = tensor


@dataclass
class LinearLayer:
    """A Conv, Gemm or MatMul with a constant float weight, seen per channel.

    ``out_axis``: the weight axis of output channels (Conv 0; Gemm 0 when transB else 1;
    MatMul 1). Input channels of a Conv are indexed through its groups.
    """

    node: onnx.NodeProto
    weight: str
    bias: str | None

    @property
    def op(self) -> str:
        return self.node.op_type

    @property
    def out_axis(self) -> int:
        if self.op == "Conv":
            return 0
        if self.op == "Gemm":
            return 0 if attr(self.node, "transB", 0) else 1
        return 1

    @property
    def group(self) -> int:
        return int(attr(self.node, "group", 1)) if self.op == "Conv" else 1

    def out_view(self, w: np.ndarray) -> np.ndarray:
        """The weight as [out_channels, everything else]."""
        return np.moveaxis(w, self.out_axis, 0).reshape(w.shape[self.out_axis], -1)


def linear_layer(index: GraphIndex, node: onnx.NodeProto) -> LinearLayer | None:
    """A LinearLayer for ``node`` when its weight is a constant float initializer, else None."""
    if node.op_type not in LINEAR_OPS or len(node.input) < 2:
        return None
    w = node.input[1]
    if not index.is_weight(w) or index.inits[w].data_type != onnx.TensorProto.FLOAT:
        return None
    rank = len(index.inits[w].dims)
    bias: str | None = None
    if node.op_type == "Conv":
        if rank < 3:
            return None
        if len(node.input) > 2 and node.input[2]:
            bias = node.input[2]
    elif node.op_type == "Gemm":
        if rank != 2 or attr(node, "transA", 0):
            return None
        if len(node.input) > 2 and node.input[2]:
            bias = node.input[2]
    else:
        if rank != 2:
            return None
    if bias is not None and not index.is_weight(bias):
        return None
    return LinearLayer(node, w, bias)


def node_label(node: onnx.NodeProto) -> str:
    """How errors name a node: its name, else its op type and first output."""
    return node.name or f"{node.op_type}->{node.output[0] if node.output else '?'}"


def require_float_model(model: onnx.ModelProto, what: str) -> None:
    """Refuse a model that is not a ModelProto with a graph."""
    if not isinstance(model, onnx.ModelProto):
        raise SdkError(f"{what}: expected an onnx.ModelProto, got {type(model).__name__}")
    if not model.graph.node:
        raise SdkError(f"{what}: the model has no nodes")


def probe_session(model: onnx.ModelProto, names: list[str], what: str):
    """An onnxruntime session of ``model`` that also outputs the float tensors ``names``
    (the model is not modified); ``what`` names the caller in the one-line error. A model
    with QuantizeLinear nodes runs without graph optimizations."""
    import copy

    import onnxruntime as ort

    probe = copy.deepcopy(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(
                helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if any(n.op_type == "QuantizeLinear" for n in probe.graph.node):
        # A fake-quantized model: onnxruntime's QDQ transformers would quantize the float
        # weights between a DequantizeLinear and a QuantizeLinear themselves (their own
        # int8 grid and int32 bias), which is not the model measured.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(
            probe.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
        raise SdkError(f"{what}: onnxruntime cannot load the model ({exc})") from None
