"""The "cpu" backend: stock onnxruntime on a CPU (its QOperator, QDQ and integer ops)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from systolic_sdk.backends.base import Backend, adapt
from systolic_sdk.quantization.config import QuantConfig
from systolic_sdk.quantization.rules import default_rules
from systolic_sdk.quantization.types import OutputForm, QuantType

EIGHT_BIT = frozenset({QuantType.QInt8, QuantType.QUInt8})


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_onnxruntime(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` in onnxruntime's CPU execution provider; outputs in graph order."""
    return _session(model).run(None, dict(feeds))


def load_in_onnxruntime(model: onnx.ModelProto) -> None:
    """Create an onnxruntime session (raises if the runtime rejects the model)."""
    _session(model)


def cpu_config_hook(backend: Backend, config: QuantConfig) -> QuantConfig:
    """16-bit types exist in onnxruntime only as QuantizeLinear/DequantizeLinear (QDQ);
    QOperator needs an int32 bias, so quantize_bias=False is a QDQ-only option."""
    cfg = config
    if cfg.form != OutputForm.QDQ:
        if cfg.activation_type not in EIGHT_BIT:
            cfg = adapt(
                cfg,
                f"{cfg.activation_type} activations need the qdq form; using QUInt8",
                activation_type=QuantType.QUInt8,
            )
        if cfg.weight_type not in EIGHT_BIT:
            cfg = adapt(
                cfg,
                f"{cfg.weight_type} weights need the qdq form; using QInt8",
                weight_type=QuantType.QInt8,
            )
    if cfg.form == OutputForm.QOPERATOR and not cfg.quantize_bias:
        cfg = adapt(
            cfg,
            "quantize_bias=False applies to the qdq form only; QOperator ops take an int32 "
            "bias, which is used",
            quantize_bias=True,
        )
    return cfg


CPU_BACKEND = Backend(
    name="cpu",
    description="stock onnxruntime on a CPU",
    rules=default_rules(),
    conv_integer_channel_zero_points=False,
    config_hook=cpu_config_hook,
    runner=run_onnxruntime,
    verifier=load_in_onnxruntime,
)


def _register() -> None:
    from systolic_sdk.backends import register_backend

    register_backend(CPU_BACKEND, replace=True)


_register()
