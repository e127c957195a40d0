"""The "cpu" backend: stock onnxruntime on a CPU (its QOperator, QDQ and integer ops)."""

from __future__ import annotations

import dataclasses
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
    """Adapt a config to what onnxruntime's CPU kernels run.

    16-bit types exist only as QuantizeLinear/DequantizeLinear (QDQ form); QOperator
    kernels lack int8-activation x uint8-weight variants; QOperator ops take an int32
    bias, so quantize_bias=False is a QDQ-only option.
    """
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
        wide = sorted(
            name
            for name, ov in cfg.tensor_overrides.items()
            if ov.quant_type is not None and ov.quant_type not in EIGHT_BIT
        )
        if wide:
            overrides = {
                k: dataclasses.replace(v, quant_type=None) if k in wide else v
                for k, v in cfg.tensor_overrides.items()
            }
            cfg = adapt(
                cfg,
                f"16-bit overrides need the qdq form (tensor '{wide[0]}'); "
                "using the config's 8-bit types for them",
                tensor_overrides=overrides,
            )
    if (
        cfg.form == OutputForm.QOPERATOR
        and cfg.activation_type == QuantType.QInt8
        and cfg.weight_type == QuantType.QUInt8
    ):
        cfg = adapt(
            cfg,
            "onnxruntime has no QOperator kernels for int8 activations with uint8 weights; "
            "using QInt8 weights",
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
