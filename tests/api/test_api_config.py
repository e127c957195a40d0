"""Each public API builds the right QuantConfig, ranges and errors (core replaced by a probe).

The quantizer core is exercised for real in tests/e2e; here a probe records what the
APIs hand it, so the argument mapping is checked on its own.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnxruntime.quantization import QuantFormat as OrtQuantFormat
from onnxruntime.quantization import QuantType as OrtQuantType

import systolic_sdk
from systolic_sdk import CalibrationMethod, QuantFormat, QuantizationMode, QuantType
from systolic_sdk.calibration import ArrayReader
from systolic_sdk.errors import SdkError
from systolic_sdk.quantization.config import QuantConfig, TensorOverride
from systolic_sdk.quantization.types import OutputForm


class Probe:
    """Stands in for prepare_model/tensors_to_calibrate/quantize_model and records calls."""

    def __init__(self) -> None:
        self.config = None
        self.ranges = None

    def prepare_model(self, model, config):
        return model

    def tensors_to_calibrate(self, model, config, *, prepared=False):
        if not config.static:
            return []
        inits = {t.name for t in model.graph.initializer}
        names = [i for n in model.graph.node for i in n.input if i and i not in inits]
        names += [o for n in model.graph.node for o in n.output]
        return list(dict.fromkeys(names))

    def quantize_model(self, model, config, ranges, *, prepared=False):
        assert prepared  # the public APIs prepare once
        self.config, self.ranges = config, dict(ranges)
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out


@pytest.fixture
def probe(monkeypatch):
    import systolic_sdk.backends as backends
    import systolic_sdk.quantization as quantization

    p = Probe()
    for name in ("prepare_model", "tensors_to_calibrate", "quantize_model"):
        monkeypatch.setattr(quantization, name, getattr(p, name), raising=False)
    monkeypatch.setattr(backends, "available_backends", lambda: ["cpu", "systolic"], raising=False)
    return p


def _reader(x):
    return ArrayReader({"x": x}, batch_size=4)


def test_static_arguments_reach_the_config(probe, tiny_model, tiny_calib, tmp_path):
    out = tmp_path / "q.onnx"
    model = systolic_sdk.quantize_static(
        tiny_model,
        out,
        _reader(tiny_calib),
        quant_format=OrtQuantFormat.QOperator,  # onnxruntime's enums are accepted
        op_types_to_quantize=["Conv"],
        per_channel=True,
        reduce_range=True,
        activation_type=OrtQuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=["matmul"],
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": False, "Foo": 1},
        backend="systolic",
    )
    c = probe.config
    assert c.form is OutputForm.QOPERATOR and c.static
    assert c.activation_type is QuantType.QUInt8 and c.weight_type is QuantType.QInt8
    assert c.per_channel and c.reduce_range and c.backend == "systolic"
    assert c.op_types_to_quantize == frozenset({"Conv"}) and c.nodes_to_exclude == {"matmul"}
    assert c.symmetric_activations is True and c.symmetric_weights is False
    assert c.extra_options["Foo"] == 1
    assert out.exists() and isinstance(model, onnx.ModelProto)
    # ranges are min/max of the data the reader gave
    lo, hi = probe.ranges["x"]
    assert lo == float(tiny_calib.min()) and hi == float(tiny_calib.max())


def test_tensor_quant_overrides_in_onnxruntime_form(probe, tiny_model, tiny_calib):
    overrides = {
        "c": [{"scale": np.float32(0.05), "zero_point": np.int8(0)}],
        "w": [
            {"scale": np.float32(0.01 * (i + 1)), "zero_point": np.int8(0), "axis": 0}
            for i in range(4)
        ],
    }
    systolic_sdk.quantize_static(
        tiny_model, None, _reader(tiny_calib), extra_options={"TensorQuantOverrides": overrides}
    )
    ov = probe.config.tensor_overrides
    assert ov["c"] == TensorOverride(
        scale=(float(np.float32(0.05)),), zero_point=(0,), quant_type=QuantType.QInt8
    )
    assert ov["w"].axis == 0 and len(ov["w"].scale) == 4
    assert "c" not in probe.ranges  # a fixed tensor is not calibrated


def test_calibration_cache_written_then_reused(probe, tiny_model, tiny_calib, tmp_path):
    from onnxruntime.quantization.calibrate import load_tensors_data

    cache = tmp_path / "ranges.json"
    systolic_sdk.quantize_static(
        tiny_model, None, _reader(tiny_calib), calibration_cache_path=cache
    )
    first = probe.ranges
    # onnxruntime reads our cache ...
    theirs = load_tensors_data(cache)
    assert theirs.calibration_method.name == "MinMax"
    assert float(theirs.data["x"].range_value[0]) == first["x"][0]
    # ... and a second run reads it instead of calibrating (no reader given)
    systolic_sdk.quantize_static(tiny_model, None, None, calibration_cache_path=cache)
    assert probe.ranges == first
    with pytest.raises(SdkError, match="made with MinMax, not Entropy"):
        systolic_sdk.quantize_static(
            tiny_model,
            None,
            None,
            calibration_cache_path=cache,
            calibrate_method=CalibrationMethod.Entropy,
        )


def test_reads_onnxruntime_calibration_cache(probe, tiny_model, tmp_path):
    from onnxruntime.quantization.calibrate import CalibrationMethod as OrtMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    names = probe.tensors_to_calibrate(tiny_model, QuantConfig())
    data = {
        n: TensorData(lowest=np.float32(-i - 1), highest=np.float32(i + 0.5))
        for i, n in enumerate(names)
    }
    cache = tmp_path / "ort_cache.json"
    save_tensors_data(TensorsData(OrtMethod.MinMax, data), cache)
    systolic_sdk.quantize_static(tiny_model, None, None, calibration_cache_path=cache)
    assert probe.ranges == {n: (float(-i - 1), float(i + 0.5)) for i, n in enumerate(names)}


def test_symmetric_calibration_ranges(probe, tiny_model, tiny_calib):
    systolic_sdk.quantize_static(
        tiny_model, None, _reader(tiny_calib), extra_options={"CalibTensorRangeSymmetric": True}
    )
    assert all(lo == -hi for lo, hi in probe.ranges.values())


@pytest.mark.parametrize(
    ("method", "name"),
    [
        (CalibrationMethod.Entropy, "entropy"),
        (CalibrationMethod.Percentile, "percentile"),
        ("mse", "mse"),
    ],
)
def test_calibration_method_mapping(probe, monkeypatch, tiny_model, tiny_calib, method, name):
    import systolic_sdk.calibration as calibration

    seen = {}

    def fake_calibrate(model, reader, names, method="minmax", **options):
        seen["method"], seen["options"] = method, options
        return {n: (-1.0, 1.0) for n in names}

    monkeypatch.setattr(calibration, "calibrate", fake_calibrate)
    systolic_sdk.quantize_static(
        tiny_model,
        None,
        _reader(tiny_calib),
        calibrate_method=method,
        calibration_providers=["CPUExecutionProvider"],
        extra_options={"CalibPercentile": 99.9},
    )
    assert seen["method"] == name
    assert seen["options"]["providers"] == ["CPUExecutionProvider"]
    assert ("percentile" in seen["options"]) == (name == "percentile")


def test_unavailable_calibration_method(probe, tiny_model, tiny_calib):
    with pytest.raises(SdkError, match="Distribution is not available"):
        systolic_sdk.quantize_static(
            tiny_model, None, _reader(tiny_calib), calibrate_method=CalibrationMethod.Distribution
        )


def test_static_without_data_names_the_tensor(probe, tiny_model):
    with pytest.raises(SdkError, match=r"tensor 'x' needs a range"):
        systolic_sdk.quantize_static(tiny_model, None, None)


def test_dynamic_config(probe, tiny_model):
    systolic_sdk.quantize_dynamic(
        tiny_model, None, per_channel=True, weight_type=OrtQuantType.QUInt8
    )
    c = probe.config
    assert c.form is OutputForm.INTEGER and not c.static
    assert c.activation_type is QuantType.QUInt8 and c.weight_type is QuantType.QUInt8
    assert probe.ranges == {}


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (
            {"nodes_to_exclude": ["conv", "nope"]},
            "node 'nope' in nodes_to_exclude is not in the model",
        ),
        ({"nodes_to_quantize": ["ghost"]}, "node 'ghost' in nodes_to_quantize"),
        ({"backend": "tpu"}, "unknown backend 'tpu'"),
        ({"weight_type": "int4"}, "weight_type: unknown quantization type"),
        (
            {"extra_options": {"TensorQuantOverrides": {"zz": [{"scale": 1.0, "zero_point": 0}]}}},
            "tensor 'zz' is not in the model",
        ),
    ],
)
def test_bad_arguments_are_one_line_errors(probe, tiny_model, kwargs, needle):
    with pytest.raises(SdkError) as info:
        systolic_sdk.quantize_dynamic(tiny_model, None, **kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_never_overwrites_the_input(probe, tiny_model_path, tiny_calib):
    before = tiny_model_path.read_bytes()
    with pytest.raises(SdkError, match="output path is an input"):
        systolic_sdk.quantize_static(tiny_model_path, tiny_model_path, _reader(tiny_calib))
    assert tiny_model_path.read_bytes() == before


def test_quantize_qat_uses_the_pairs(probe, make_tiny_model, tiny_calib):
    from onnx import helper, numpy_helper

    model = make_tiny_model()
    g = model.graph
    g.initializer.extend(
        [numpy_helper.from_array(np.float32(0.02), "s"), numpy_helper.from_array(np.int8(5), "z")]
    )
    g.node.insert(0, helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="Q"))
    g.node.insert(1, helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"], name="DQ"))
    g.node[2].input[0] = "xdq"
    with pytest.raises(SdkError, match="has no fake-quant pair"):
        systolic_sdk.quantize_qat(model, None)
    systolic_sdk.quantize_qat(model, None, _reader(tiny_calib))
    ov = probe.config.tensor_overrides["x"]
    assert ov.scale == (float(np.float32(0.02)),) and ov.zero_point == (5,)
    assert "x" not in probe.ranges and "c" in probe.ranges


# ----------------------------------------------------------------------- legacy quantize()


def _legacy_params(model, outputs=False):
    names = ["x", "f"] if not outputs else ["c", "y"]
    return {n: [np.uint8(10), np.float32(0.02)] for n in names}


@pytest.mark.parametrize(
    ("mode", "static", "form", "is_static"),
    [
        (QuantizationMode.IntegerOps, False, OutputForm.INTEGER, False),
        (QuantizationMode.IntegerOps, True, OutputForm.INTEGER, True),
        (QuantizationMode.QLinearOps, True, OutputForm.QOPERATOR, True),
        (QuantizationMode.QLinearOps, False, OutputForm.QOPERATOR, False),
        (QuantizationMode.IntegerOps_Static, False, OutputForm.INTEGER, True),
        (QuantizationMode.IntegerOps_Dynamic, True, OutputForm.INTEGER, False),
        (QuantizationMode.QLinearOps_Static, False, OutputForm.QOPERATOR, True),
        (QuantizationMode.QLinearOps_Dynamic, True, OutputForm.QOPERATOR, False),
    ],
)
def test_legacy_modes(probe, tiny_model, mode, static, form, is_static):
    systolic_sdk.quantize(
        tiny_model,
        quantization_mode=mode,
        static=static,
        input_quantization_params=_legacy_params(tiny_model),
        output_quantization_params=_legacy_params(tiny_model, outputs=True),
    )
    c = probe.config
    assert c.form is form and c.static is is_static
    assert c.op_types_to_quantize == {"Conv", "MatMul"}
    assert c.activation_type is QuantType.QUInt8 and c.weight_type is QuantType.QUInt8
    expected = set()
    if is_static:
        expected |= {"x", "f"}
    if form is OutputForm.QOPERATOR:
        expected |= {"c", "y"}
    assert set(c.tensor_overrides) == expected
    for ov in c.tensor_overrides.values():
        assert ov.zero_point == (10,) and ov.quant_type is QuantType.QUInt8
    assert probe.ranges == {}


def test_legacy_types_and_errors(probe, tiny_model):
    systolic_sdk.quantize(tiny_model, asymmetric_input_types=True)
    assert probe.config.weight_type is QuantType.QInt8
    assert probe.config.activation_type is QuantType.QUInt8
    with pytest.raises(SdkError, match="nbits=4 is not supported"):
        systolic_sdk.quantize(tiny_model, nbits=4)
    with pytest.raises(SdkError, match=r"tensor 'f' \(input of node 'matmul'\): static mode needs"):
        systolic_sdk.quantize(tiny_model, static=True, input_quantization_params={"x": [0, 0.1]})
    with pytest.raises(SdkError, match=r"tensor 'c' \(output of node 'conv'\): QLinearOps needs"):
        systolic_sdk.quantize(tiny_model, quantization_mode=QuantizationMode.QLinearOps_Dynamic)
    with pytest.raises(SdkError, match=r"expected \[zero_point, scale\]"):
        systolic_sdk.quantize(tiny_model, static=True, input_quantization_params={"x": 0.1})
    # a signed zero point (numpy int8) makes the tensor int8
    systolic_sdk.quantize(
        tiny_model,
        quantization_mode=QuantizationMode.QLinearOps_Dynamic,
        output_quantization_params={"c": [np.int8(-3), np.float32(0.1)], "y": [0, 0.2]},
    )
    assert probe.config.tensor_overrides["c"].quant_type is QuantType.QInt8
    assert probe.config.tensor_overrides["y"].quant_type is QuantType.QUInt8


def test_legacy_does_not_modify_its_input(probe, tiny_model):
    before = tiny_model.SerializeToString()
    systolic_sdk.quantize(tiny_model)
    assert tiny_model.SerializeToString() == before
    assert QuantFormat.QDQ.name == "QDQ"
