"""The generic quantizer core: scale/zero-point math, per-edge state, the rewrite walk,
per-op rules. Entry points: ``quantize_model``, ``tensors_to_calibrate``,
``prepare_model``."""

from systolic_sdk.quantization.config import QuantConfig, TensorOverride
from systolic_sdk.quantization.params import QuantParams
from systolic_sdk.quantization.pipeline import quantize_model, tensors_to_calibrate
from systolic_sdk.quantization.prepare import prepare_model
from systolic_sdk.quantization.types import (
    OutputForm,
    QuantFormat,
    QuantizationMode,
    QuantType,
)
from systolic_sdk.quantization.warn import QuantizationWarning

__all__ = [
    "OutputForm",
    "QuantConfig",
    "QuantFormat",
    "QuantParams",
    "QuantType",
    "QuantizationMode",
    "QuantizationWarning",
    "TensorOverride",
    "prepare_model",
    "quantize_model",
    "tensors_to_calibrate",
]
