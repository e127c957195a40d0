"""Tensor overrides: the onnxruntime dict/JSON form, its validation and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from systolic_sdk.errors import SdkError
from systolic_sdk.quantization.config import TensorOverride
from systolic_sdk.quantization.overrides import (
    check_overrides_fit_model,
    load_tensor_overrides,
    overrides_to_json,
    parse_tensor_overrides,
)
from systolic_sdk.quantization.types import QuantType


def test_per_tensor_json_form(tmp_path):
    path = tmp_path / "enc.json"
    path.write_text(json.dumps({"conv1_1": [{"scale": 0.005, "zero_point": 12}]}))
    ov = load_tensor_overrides(path)
    assert ov == {"conv1_1": TensorOverride(scale=(0.005,), zero_point=(12,))}


def test_per_channel_with_type_and_axis():
    data = {
        "w": [
            {"scale": 0.1, "zero_point": 0, "quant_type": "QInt8", "axis": 0},
            {"scale": 0.2, "zero_point": 0, "quant_type": "QInt8", "axis": 0},
        ]
    }
    ov = parse_tensor_overrides(data)["w"]
    assert ov.scale == (0.1, 0.2)
    assert ov.zero_point == (0, 0)
    assert ov.quant_type is QuantType.QInt8
    assert ov.axis == 0


def test_numpy_scalars_give_the_type():
    ov = parse_tensor_overrides({"t": [{"scale": np.float32(0.05), "zero_point": np.uint8(113)}]})
    assert ov["t"] == TensorOverride(
        scale=(float(np.float32(0.05)),), zero_point=(113,), quant_type=QuantType.QUInt8
    )
    ov = parse_tensor_overrides({"t": [{"scale": 0.5, "zero_point": np.int8(-3)}]})
    assert ov["t"].quant_type is QuantType.QInt8 and ov["t"].zero_point == (-3,)


def test_onnxruntime_quant_type_enum_accepted():
    from onnxruntime.quantization import QuantType as OrtQuantType

    ov = parse_tensor_overrides(
        {"t": [{"scale": 1.0, "zero_point": 0, "quant_type": OrtQuantType.QUInt16}]}
    )
    assert ov["t"].quant_type is QuantType.QUInt16


def test_range_override():
    ov = parse_tensor_overrides({"t": [{"rmin": -1.5, "rmax": 3}]})["t"]
    assert ov.scale == () and ov.rmin == -1.5 and ov.rmax == 3.0


def test_round_trip_to_json():
    data = {
        "a": [{"scale": 0.25, "zero_point": 3, "quant_type": "QUInt8"}],
        "b": [{"scale": 0.5, "zero_point": 0, "axis": 1}, {"scale": 0.125, "zero_point": 0}],
        "c": [{"rmin": 0.0, "rmax": 6.0}],
    }
    ov = parse_tensor_overrides(data)
    assert parse_tensor_overrides(json.loads(json.dumps(overrides_to_json(ov)))) == ov


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ([1, 2], "expected an object"),
        ({"t": 5}, "tensor 't': expected a list of dicts"),
        ({"t": []}, "tensor 't': empty list"),
        ({"t": [3]}, "entry 0 is int"),
        ({"t": [{"scale": 0.1}]}, "'zero_point' is missing"),
        ({"t": [{"zero_point": 1}]}, "'scale' is missing"),
        ({"t": [{"scale": -0.1, "zero_point": 0}]}, "scale must be positive"),
        ({"t": [{"scale": 0.0, "zero_point": 0}]}, "scale must be positive"),
        ({"t": [{"scale": "big", "zero_point": 0}]}, "'scale' must be a number"),
        ({"t": [{"scale": float("nan"), "zero_point": 0}]}, "must be finite"),
        ({"t": [{"scale": 0.1, "zero_point": 1.5}]}, "zero_point must be an integer"),
        ({"t": [{"scale": 0.1, "zero_point": 300, "quant_type": "QUInt8"}]}, "outside QUInt8"),
        ({"t": [{"scale": 0.1, "zero_point": -1, "quant_type": "quint8"}]}, "outside QUInt8"),
        (
            {"t": [{"scale": 0.1, "zero_point": 0, "quant_type": "QInt4"}]},
            "unknown quantization type",
        ),
        ({"t": [{"scale": 0.1, "zero_point": 0, "bogus": 1}]}, "unsupported key 'bogus'"),
        ({"t": [{"scale": 0.1, "zero_point": 0, "rmin": 0}]}, "not both"),
        ({"t": [{"rmin": 2.0, "rmax": 1.0}]}, "rmin 2.0 is greater than rmax 1.0"),
        ({"t": [{"rmin": 0.0}, {"rmin": 1.0}]}, "rmin/rmax is per tensor"),
        ({"t": [{"symmetric": 1}]}, "'symmetric' must be true or false"),
        ({"t": [{"scale": 0.1, "zero_point": 0, "reduce_range": True}]}, "'reduce_range' applies"),
        ({"t": [{"scale": 0.1, "zero_point": 0}, {"scale": 0.1}]}, "channel 1: 'zero_point'"),
        (
            {
                "t": [
                    {"scale": 0.1, "zero_point": 0, "axis": 0},
                    {"scale": 1, "zero_point": 0, "axis": 1},
                ]
            },
            "'axis' differs",
        ),
        ({"t": [{"scale": 0.1, "zero_point": np.uint8(1), "quant_type": "QInt8"}]}, "contradicts"),
    ],
)
def test_malformed_overrides_name_the_tensor(data, needle):
    with pytest.raises(SdkError) as info:
        parse_tensor_overrides(data, source="enc.json")
    msg = str(info.value)
    assert needle in msg
    assert msg.startswith("enc.json")
    assert "\n" not in msg


def test_bad_json_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"t": [{"scale": 0.1, "zero_point": 0}')
    with pytest.raises(SdkError, match=r"bad.json: not valid JSON \(line 1"):
        load_tensor_overrides(path)
    with pytest.raises(SdkError, match="no such file"):
        load_tensor_overrides(tmp_path / "missing.json")


def test_overrides_must_fit_the_model(tiny_model):
    ok = parse_tensor_overrides(
        {"c": [{"scale": 0.1, "zero_point": 0}], "w": [{"scale": 0.1, "zero_point": 0}] * 4}
    )
    check_overrides_fit_model(ok, tiny_model)
    with pytest.raises(SdkError, match="tensor 'nope' is not in the model"):
        check_overrides_fit_model(parse_tensor_overrides({"nope": [{"rmax": 1.0}]}), tiny_model)
    five = parse_tensor_overrides({"w": [{"scale": 0.1, "zero_point": 0}] * 5})
    with pytest.raises(SdkError, match="tensor 'w': 5 channel entries match no dimension"):
        check_overrides_fit_model(five, tiny_model)
    wrong_axis = parse_tensor_overrides({"w": [{"scale": 0.1, "zero_point": 0, "axis": 1}] * 4})
    with pytest.raises(SdkError, match="dimension 1 of shape"):
        check_overrides_fit_model(wrong_axis, tiny_model)


def test_range_flags_round_trip():
    data = {"a": [{"rmin": -1.5, "symmetric": True}], "w": [{"reduce_range": True, "axis": 0}]}
    ov = parse_tensor_overrides(data)
    assert ov["a"] == TensorOverride(scale=(), rmin=-1.5, symmetric=True)
    assert ov["w"] == TensorOverride(scale=(), axis=0, reduce_range=True)
    assert parse_tensor_overrides(json.loads(json.dumps(overrides_to_json(ov)))) == ov
