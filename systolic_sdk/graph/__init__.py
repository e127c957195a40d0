"""Thin helpers over onnx.ModelProto: safe load/save, topological order, naming, opset."""

from systolic_sdk.graph.io import load_model, save_model
from systolic_sdk.graph.opset import upgrade_opset
from systolic_sdk.graph.util import (
    NameScope,
    check_topological,
    consumers,
    ensure_node_names,
    opset_version,
    producers,
)

__all__ = [
    "NameScope",
    "check_topological",
    "consumers",
    "ensure_node_names",
    "load_model",
    "opset_version",
    "producers",
    "save_model",
    "upgrade_opset",
]
