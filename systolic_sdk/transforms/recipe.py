"""The fp32 preparation the Systolic backend runs before calibrating: CLE, then bias correction."""

from __future__ import annotations

import onnx

from systolic_sdk.transforms.bias_correction import CalibrationData, correct_bias
from systolic_sdk.transforms.equalization import equalize


def per_tensor_recipe(
    model: onnx.ModelProto,
    data: CalibrationData | None,
    *,
    equalization: bool = True,
    bias_correction: bool = True,
    progress: bool = False,
) -> onnx.ModelProto:
    """Return an fp32 copy of ``model`` prepared for per-tensor int8 weights.

    Cross-layer equalization (data-free) then bias correction measured on ``data`` (a
    CalibrationDataReader, a dict of input arrays or one array; bias correction is skipped
    when ``data`` is None). The result has the same inputs and outputs and computes the
    same function in fp32 up to float rounding (equalization) and the bias shifts that
    cancel the expected weight-quantization error (bias correction).
    """
    del progress  # the passes are short; reserved for a progress bar
    out = model
    if equalization:
        out = equalize(out)
    if bias_correction and data is not None:
        out = correct_bias(out, data, sequential=False)
    if out is model:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    return out
