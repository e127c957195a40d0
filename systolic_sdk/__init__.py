"""systolic-sdk: quantize ONNX models for CPU onnxruntime and the Systolic accelerator.

The APIs users already know::

    from systolic_sdk import quantize_static, quantize_dynamic, quantize_qat
    from systolic_sdk import CalibrationDataReader, QuantType, QuantFormat, CalibrationMethod
    from systolic_sdk import quantize, QuantizationMode          # the original API
"""

__version__ = "0.1.0"

from systolic_sdk.api import (  # noqa: E402 - __version__ first: the CLI imports it alone
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantizationMode,
    QuantType,
    quantize,
    quantize_dynamic,
    quantize_qat,
    quantize_static,
)
from systolic_sdk.errors import SdkError  # noqa: E402

__all__ = [
    "CalibrationDataReader",
    "CalibrationMethod",
    "QuantFormat",
    "QuantType",
    "QuantizationMode",
    "SdkError",
    "__version__",
    "quantize",
    "quantize_dynamic",
    "quantize_qat",
    "quantize_static",
]
