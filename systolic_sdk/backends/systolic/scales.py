"""The int8 activation scales a Systolic quantization will choose, known before it runs.

The fp32 preparation measures layers in the int8 model (``transforms.sequential``), so it
needs the scales of the activations the deployed graph quantizes: the tensors the
backend's rules calibrate, their ranges on the calibration data (with the calibration
the quantizer will run; MinMax, the command line's default, unless told otherwise), the
backend's range narrowing
(its range passes) and the spec-7 scale (``params``).
"""

from __future__ import annotations

import dataclasses

import onnx

from systolic_sdk.backends.base import Calibrate
from systolic_sdk.backends.systolic.params import activation_params
from systolic_sdk.calibration import calibrate as calibrate_with
from systolic_sdk.calibration.reader import CalibrationDataReader
from systolic_sdk.quantization.config import QuantConfig
from systolic_sdk.quantization.types import OutputForm, QuantType


def activation_scales(
    model: onnx.ModelProto,
    reader: CalibrationDataReader,
    config: QuantConfig | None = None,
    method: str = "minmax",
    calibrate: Calibrate | None = None,
) -> dict[str, float]:
    """``{tensor: scale}`` (float32 values as Python floats) of every activation the
    Systolic backend quantizes in ``model`` (names as ``tensors_to_calibrate`` gives them) under
    ``config`` (default: the backend's defaults), calibrated on ``reader`` (rewound first
    when it can be) by ``calibrate(model, reader, names)`` when given (the quantizer's own
    calibration, method and options), else with ``method`` (one of
    ``calibration.METHODS``) and its default options."""
    from systolic_sdk.quantization import tensors_to_calibrate

    cfg = config or QuantConfig(backend="systolic", form=OutputForm.QOPERATOR)
    cfg = dataclasses.replace(cfg, form=OutputForm.QOPERATOR)
    names = tensors_to_calibrate(model, cfg)
    if not names:
        return {}
    if hasattr(reader, "rewind"):
        reader.rewind()
    if calibrate is None:
        ranges = calibrate_with(model, reader, names, method, progress=False)
    else:
        ranges = calibrate(model, reader, names)
    from systolic_sdk.backends.systolic import SYSTOLIC_BACKEND  # defined after this module

    for range_pass in SYSTOLIC_BACKEND.range_passes:  # as the quantizer applies them
        ranges = dict(range_pass(model, dict(ranges)))
    return {
        name: float(activation_params(lo, hi, QuantType.QInt8).scale)
        for name, (lo, hi) in ranges.items()
    }
