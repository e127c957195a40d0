"""Helpers for the Systolic backend tests: quantize through the core, inspect graphs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from systolic_sdk.calibration import ArrayReader, calibrate
from systolic_sdk.quantization import prepare_model, quantize_model, tensors_to_calibrate
from systolic_sdk.quantization.config import QuantConfig
from systolic_sdk.quantization.types import OutputForm


def systolic_config(**changes) -> QuantConfig:
    """A static QOperator config for the systolic backend (fields overridable)."""
    fields = {"backend": "systolic", "form": OutputForm.QOPERATOR, **changes}
    return QuantConfig(**fields)


def quantize_systolic(
    model: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray] | None = None,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    **changes,
) -> onnx.ModelProto:
    """Calibrate (min/max over ``feeds``) unless ``ranges`` are given, then quantize."""
    cfg = systolic_config(**changes)
    prepared = prepare_model(model, cfg)
    if ranges is None:
        names = tensors_to_calibrate(prepared, cfg)
        ranges = calibrate(prepared, ArrayReader(dict(feeds), 64), names, method="minmax")
    return quantize_model(prepared, cfg, dict(ranges))


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def nodes_of(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op_type]


def relu_attr(node: onnx.NodeProto) -> int:
    for a in node.attribute:
        if a.name == "relu":
            return int(a.i)
    return 0


def run_ort(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, dict(feeds))
