"""prepare_model: bring an fp32 model into the shape the rewrite walk expects."""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from systolic_sdk.errors import SdkError
from systolic_sdk.graph.opset import upgrade_opset
from systolic_sdk.graph.util import (
    check_topological,
    consumers,
    ensure_node_names,
    opset_version,
)
from systolic_sdk.quantization.config import QuantConfig
from systolic_sdk.quantization.types import OutputForm, QuantType

#: Below this default-domain opset a model is upgraded (QuantizeLinear needs 10).
MIN_OPSET = 10
#: The opset a too-old model is upgraded to.
UPGRADE_TARGET = 13
#: DequantizeLinear's ``axis`` (per-channel QDQ) needs opset 13.
PER_CHANNEL_QDQ_OPSET = 13
#: QuantizeLinear/DequantizeLinear on 16-bit types need opset 21.
INT16_QDQ_OPSET = 21

_16BIT = (QuantType.QInt16, QuantType.QUInt16)


def required_opset(model: onnx.ModelProto, config: QuantConfig) -> tuple[int, str]:
    """The default-domain opset the rewrite needs for this config, and why."""
    current = opset_version(model)
    need, why = current, ""
    if current < MIN_OPSET:
        need, why = UPGRADE_TARGET, f"quantization needs opset >= {MIN_OPSET}"
    if config.form == OutputForm.QDQ:
        per_channel_override = any(len(o.scale) > 1 for o in config.tensor_overrides.values())
        if (config.per_channel or per_channel_override) and need < PER_CHANNEL_QDQ_OPSET:
            need, why = PER_CHANNEL_QDQ_OPSET, "per-channel QDQ needs opset 13"
        types = {config.activation_type, config.weight_type}
        types |= {o.quant_type for o in config.tensor_overrides.values() if o.quant_type}
        if types & set(_16BIT) and need < INT16_QDQ_OPSET:
            need, why = INT16_QDQ_OPSET, "16-bit QuantizeLinear needs opset 21"
    return need, why


def prepare_model(model: onnx.ModelProto, config: QuantConfig) -> onnx.ModelProto:
    """A prepared copy of ``model`` (the input is not modified); idempotent.

    Checks that the graph is a DAG in topological order; upgrades the opset when the
    config needs it (below 10 -> 13; per-channel QDQ -> 13; 16-bit QDQ -> 21), or raises
    SdkError naming the opset; turns main-graph Constant nodes into initializers; drops
    initializers from the graph inputs; names every node uniquely; infers shapes.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not any(op.domain in ("", "ai.onnx") for op in out.opset_import):
        raise SdkError("model has no default-domain opset_import; not a valid ONNX model")
    check_topological(out.graph)
    need, why = required_opset(out, config)
    if need > opset_version(out):
        out = upgrade_opset(out, need, why)
        check_topological(out.graph, "upgraded model")
    _raise_ir_version(out)
    _constants_to_initializers(out.graph)
    if out.ir_version >= 4:
        inits = {t.name for t in out.graph.initializer}
        keep = [i for i in out.graph.input if i.name not in inits]
        if len(keep) != len(out.graph.input):
            del out.graph.input[:]
            out.graph.input.extend(keep)
    ensure_node_names(out.graph)
    try:
        out = onnx.shape_inference.infer_shapes(out)
    except Exception:  # inference is best effort: unknown shapes only disable some rules
        pass
    _complete_output_types(out.graph)
    return out


def _complete_output_types(graph: onnx.GraphProto) -> None:
    """Give graph outputs without a type or shape the inferred one (the full checker
    requires output shapes)."""
    inferred = {v.name: v for v in graph.value_info}
    for out in graph.output:
        tt = out.type.tensor_type
        if (not tt.elem_type or not tt.HasField("shape")) and out.name in inferred:
            known = inferred[out.name].type.tensor_type
            if known.elem_type and known.HasField("shape"):
                out.type.CopyFrom(inferred[out.name].type)


def _raise_ir_version(model: onnx.ModelProto) -> None:
    """Raise the IR version to the minimum the opset imports need (after an upgrade)."""
    try:
        needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), True)
    except Exception:
        return
    if model.ir_version < needed:
        model.ir_version = needed


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node makes, or None for forms we do not convert."""
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
            import numpy as np

            v = onnx.helper.get_attribute_value(attr)
            dtype = np.float32 if attr.name.startswith("value_float") else np.int64
            return numpy_helper.from_array(np.asarray(v, dtype=dtype))
    return None


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Replace main-graph Constant nodes by initializers of the same name."""
    outputs = {o.name for o in graph.output}
    users = consumers(graph)
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            name = node.output[0]
            tensor = _constant_value(node)
            if tensor is not None and name not in outputs and name in users:
                init = onnx.TensorProto()
                init.CopyFrom(tensor)
                init.name = name
                graph.initializer.append(init)
                continue
        keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
