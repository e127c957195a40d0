"""backends.systolic.scales: the activation scales a quantization will choose, beforehand."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from systolic_sdk import api
from systolic_sdk.backends.systolic.scales import activation_scales
from systolic_sdk.calibration.reader import ArrayReader

OFF = {"equalization": False, "weight_rounding": False, "bias_correction": False}


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_scales_are_those_of_the_quantized_model(digits_model, digits_calib, method) -> None:
    """Every activation scale of the quantized shipped model (preparation off, same data and
    method) is the one predicted, bit for bit; every quantized activation is predicted."""
    calib = digits_calib[:48]
    got = activation_scales(digits_model, ArrayReader({"input": calib}, 16), method=method)
    q = api.quantize_static(
        digits_model, None, ArrayReader({"input": calib}, 16), quant_format="QOperator",
        backend="systolic", calibrate_method=method, **OFF,
    )  # fmt: skip
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    deployed = {
        name[: -len("_scale")]: value
        for name, value in inits.items()
        if name.endswith("_scale") and name[: -len("_scale")] in got
    }
    assert len(deployed) >= 8
    for name, scale in deployed.items():
        assert np.float32(got[name]) == scale, name
    relu_outputs = [n.output[0] for n in digits_model.graph.node if n.op_type == "Relu"]
    assert relu_outputs and all(n in got for n in relu_outputs)
