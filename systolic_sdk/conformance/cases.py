"""A conformance case: one Systolic op, its constant operands and its inputs, and the
single-node ONNX model that holds it (the form the Systolic backend writes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from runtime_emulator.executor import BACKEND_METADATA_KEY
from runtime_emulator.kernels import SYSTOLIC_DOMAIN
from systolic_sdk import __version__

MS_DOMAIN = "com.microsoft"
OPSET = 13
IR_VERSION = 7

#: op name (as in the manifest and ``--ops``) -> (op_type, domain) of the node.
OPS: dict[str, tuple[str, str]] = {
    "QLinearConv": ("QLinearConv", ""),
    "QLinearConv_nhwc": ("QLinearConv_nhwc", SYSTOLIC_DOMAIN),
    "QLinearMatMul": ("QLinearMatMul", ""),
    "QLinearAdd": ("QLinearAdd", MS_DOMAIN),
    "QLinearRelu": ("QLinearRelu", SYSTOLIC_DOMAIN),
    "MaxPool": ("MaxPool", ""),
    "QuantizeLinear": ("QuantizeLinear", ""),
    "DequantizeLinear": ("DequantizeLinear", ""),
}

_ELEM = {np.dtype(np.int8): onnx.TensorProto.INT8, np.dtype(np.float32): onnx.TensorProto.FLOAT}


@dataclass
class Case:
    """One single-op case before it is written.

    ``node_inputs`` names the node's inputs in ONNX order; each is a key of ``inputs``
    (graph inputs, fed from ``input_K.pb``, in this order) or of ``consts`` (initializers).
    """

    op: str
    corner: str
    node_inputs: list[str]
    inputs: dict[str, np.ndarray]
    consts: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    output: str = "y"
    description: str = ""
    multipliers: list[float] = field(default_factory=list)

    def value(self, name: str) -> np.ndarray:
        """An operand by name (input or constant)."""
        return self.inputs[name] if name in self.inputs else self.consts[name]

    def operand(self, i: int) -> np.ndarray | None:
        """The node's ``i``-th operand (None when omitted)."""
        if i >= len(self.node_inputs) or not self.node_inputs[i]:
            return None
        return self.value(self.node_inputs[i])


def build_model(case: Case, output: np.ndarray, name: str) -> onnx.ModelProto:
    """The single-node model of ``case``; ``output`` gives the output's type and shape."""
    op_type, domain = OPS[case.op]
    node = helper.make_node(
        op_type, list(case.node_inputs), [case.output], name=op_type.lower(), domain=domain,
        **case.attrs,
    )  # fmt: skip
    graph = helper.make_graph(
        [node],
        name,
        [
            helper.make_tensor_value_info(k, _ELEM[v.dtype], list(v.shape))
            for k, v in case.inputs.items()
        ],
        [helper.make_tensor_value_info(case.output, _ELEM[output.dtype], list(output.shape))],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in case.consts.items()],
    )
    opsets = [helper.make_opsetid("", OPSET)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="systolic-sdk conformance",
        producer_version=__version__,
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {BACKEND_METADATA_KEY: "systolic"})
    return model


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker (full check) with the Systolic schemas registered; the ``relu``
    attribute, which the standard QLinearConv schema does not know, is set aside first."""
    from systolic_sdk.backends.systolic.schemas import register_schemas

    register_schemas()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        if node.domain in ("", "ai.onnx"):
            kept = [a for a in node.attribute if a.name != "relu"]
            del node.attribute[:]
            node.attribute.extend(kept)
    onnx.checker.check_model(copy, full_check=True)
