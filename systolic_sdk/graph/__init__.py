"""Thin helpers over onnx.ModelProto: safe load/save, topological order, naming."""

from systolic_sdk.graph.io import load_model, save_model

__all__ = ["load_model", "save_model"]
