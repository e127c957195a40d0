"""Our APIs are a drop-in for onnxruntime.quantization's: same names, order, defaults."""

from __future__ import annotations

import inspect
from enum import Enum

import onnxruntime.quantization as ortq
import pytest

import systolic_sdk
from systolic_sdk import api


def _default(value):
    return value.name if isinstance(value, Enum) else value


@pytest.mark.parametrize("name", ["quantize_static", "quantize_dynamic"])
def test_signature_is_a_superset_of_onnxruntime(name):
    theirs = list(inspect.signature(getattr(ortq, name)).parameters.values())
    ours = list(inspect.signature(getattr(systolic_sdk, name)).parameters.values())
    assert [p.name for p in ours[: len(theirs)]] == [p.name for p in theirs]
    for t, o in zip(theirs, ours, strict=False):
        assert o.kind == t.kind, t.name
        assert _default(o.default) == _default(t.default), t.name
    # everything we add comes after and is keyword-only
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours[len(theirs) :])


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (systolic_sdk.QuantType, ortq.QuantType),
        (systolic_sdk.QuantFormat, ortq.QuantFormat),
        (systolic_sdk.CalibrationMethod, ortq.CalibrationMethod),
    ],
)
def test_enum_members_match_onnxruntime(ours, theirs):
    mine = {m.name: m.value for m in ours}
    for member in (
        (theirs.QInt8, theirs.QUInt8, theirs.QInt16, theirs.QUInt16)
        if ours is systolic_sdk.QuantType
        else theirs
    ):
        assert mine[member.name] == member.value


def test_legacy_names_are_exported():
    modes = {m.name for m in systolic_sdk.QuantizationMode}
    assert modes == {
        "IntegerOps",
        "QLinearOps",
        "IntegerOps_Static",
        "IntegerOps_Dynamic",
        "QLinearOps_Static",
        "QLinearOps_Dynamic",
    }
    params = list(inspect.signature(systolic_sdk.quantize).parameters)
    assert params == [
        "model",
        "per_channel",
        "nbits",
        "quantization_mode",
        "static",
        "asymmetric_input_types",
        "input_quantization_params",
        "output_quantization_params",
    ]
    assert issubclass(api.CalibrationDataReader, object)
    assert isinstance(systolic_sdk.__version__, str)
