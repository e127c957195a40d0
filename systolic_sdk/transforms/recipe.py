"""The fp32 preparation the Systolic backend runs before calibrating, for per-tensor weights.

Measured on EfficientNet-Lite0 (bench/equalization.py, 122 held-out photo crops): GPTQ
weights on their per-tensor grid (``round_weights``) then layerwise bias correction
match per-channel weights (logit cosine with fp32 0.991 against 0.991, 0.871 plain) in
about 30 s for 60 samples. Cross-layer equalization moves the per-channel spread into
the ReLU6 activations, where one int8 scale per tensor serves it badly (cosine 0.960
with it), so it is off by default.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from systolic_sdk.calibration.reader import replayable
from systolic_sdk.transforms._graph import GraphIndex, require_float_model
from systolic_sdk.transforms.bias_correction import (
    CalibrationData,
    correct_bias,
    fake_quantize_per_tensor,
)
from systolic_sdk.transforms.equalization import equalize
from systolic_sdk.transforms.weight_rounding import Clip, grid_weights, round_weights


def per_tensor_recipe(
    model: onnx.ModelProto,
    data: CalibrationData | None,
    *,
    equalization: bool = False,
    bias_correction: bool = True,
    weight_rounding: bool = True,
    weight_clip: Clip = "max",
    progress: bool = False,
) -> onnx.ModelProto:
    """Return an fp32 copy of ``model`` prepared for per-tensor int8 weights.

    In order, each step optional:

    1. ``equalization``: cross-layer equalization (data-free, exact in fp32).
    2. ``weight_rounding``: every Conv/Gemm/MatMul weight is replaced by the int8 values
       GPTQ chooses on ``data`` on its per-tensor grid (clip threshold ``weight_clip``:
       "max" keeps ``max|w|``, "mse" picks it per layer), stored as float32 grid values
       that the quantizer's ``2 max|w| / 254`` scale and rounding reproduce exactly.
    3. ``bias_correction``: each bias absorbs ``E[x] . (Q(W) - W)``, the mean output shift
       of its layer's int8 weights (measured layer by layer on ``data``, against the
       weights before step 2).

    ``data``: a CalibrationDataReader (read several times: rewound when it can be, else
    kept in memory), a dict of input arrays or one array. Steps 2 and 3 are skipped when
    it is None. The result has the same inputs and outputs; with every step off it is an
    equal copy.
    """
    del progress  # the passes take seconds; reserved for a progress bar
    require_float_model(model, "per_tensor_recipe")
    out = model
    if equalization:
        out = equalize(out)
    if data is not None and (weight_rounding or bias_correction):
        data = replayable(data)  # read more than once
        grid: Mapping[str, np.ndarray] = {}
        if weight_rounding:
            grid = grid_weights(round_weights(out, data, clip=weight_clip))
        if bias_correction:
            # Q(W) of the grid weights: the grid values themselves where they were snapped,
            # nearest rounding where round_weights left a (shared) weight alone.
            quantizer = (lambda w, name: fake_quantize_per_tensor(grid[name])) if grid else None
            out = correct_bias(out, data, quantizer, sequential=False)
        if grid:
            if out is model:
                out = _copy(model)
            index = GraphIndex(out)
            for name, value in grid.items():
                index.set_init(name, value)
    if out is model:
        out = _copy(model)
    applied = [
        step
        for step, on in (
            ("equalization", equalization),
            ("weight_rounding", weight_rounding and data is not None),
            ("bias_correction", bias_correction and data is not None),
        )
        if on
    ]
    if applied:
        _record(out, applied)
    return out


#: Metadata key naming the steps the recipe applied (kept by the quantizer's output).
METADATA_KEY = "systolic_sdk.float_prep"


def _record(model: onnx.ModelProto, steps: list[str]) -> None:
    props = {p.key: p.value for p in model.metadata_props}
    props[METADATA_KEY] = ",".join(steps)
    onnx.helper.set_model_props(model, props)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
