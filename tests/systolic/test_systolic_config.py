"""What the systolic backend accepts, adapts (with a warning) or refuses."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from systolic_helpers import initializers, nodes_of, quantize_systolic

from systolic_sdk.backends import available_backends, get_backend
from systolic_sdk.errors import QuantizationError
from systolic_sdk.quantization.types import OutputForm, QuantType
from systolic_sdk.quantization.warn import QuantizationWarning


@pytest.fixture
def tiny(make_tiny_model):
    model = make_tiny_model()
    feeds = {"x": np.random.default_rng(1).normal(0, 1, (16, 1, 4, 4)).astype(np.float32)}
    return model, feeds


def test_registered_on_demand() -> None:
    assert "systolic" in available_backends()
    assert get_backend("systolic").name == "systolic"


@pytest.mark.parametrize("field", ["activation_type", "weight_type"])
def test_uint8_refused(tiny, field: str) -> None:
    model, feeds = tiny
    with pytest.raises(QuantizationError, match="int8 only.*QUInt8"):
        quantize_systolic(model, feeds, **{field: QuantType.QUInt8})


def test_dynamic_refused(tiny) -> None:
    model, feeds = tiny
    with pytest.raises(QuantizationError, match="'systolic' does not support dynamic"):
        quantize_systolic(model, ranges={}, static=False)


def test_per_channel_adapted_with_warning(tiny) -> None:
    model, feeds = tiny
    with pytest.warns(QuantizationWarning, match="per-tensor"):
        q = quantize_systolic(model, feeds, per_channel=True)
    (conv,) = nodes_of(q, "QLinearConv")
    assert initializers(q)[conv.input[4]].shape == ()


def test_per_channel_refused_under_strict(tiny) -> None:
    model, feeds = tiny
    with pytest.raises(QuantizationError, match="per-tensor.*strict"):
        quantize_systolic(model, feeds, per_channel=True, strict=True)


def test_qdq_adapted_to_qoperator(tiny) -> None:
    model, feeds = tiny
    with pytest.warns(QuantizationWarning, match="QOperator"):
        q = quantize_systolic(model, feeds, form=OutputForm.QDQ)
    assert nodes_of(q, "QLinearConv") and nodes_of(q, "QLinearMatMul")
    with pytest.raises(QuantizationError, match="strict"):
        quantize_systolic(model, feeds, form=OutputForm.QDQ, strict=True)


def test_integer_form_refused(tiny) -> None:
    model, feeds = tiny
    with pytest.raises(QuantizationError, match="integer form"):
        quantize_systolic(model, feeds, form=OutputForm.INTEGER)


def test_asymmetric_and_reduce_range_adapted(tiny) -> None:
    model, feeds = tiny
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = quantize_systolic(model, feeds, symmetric_activations=False, reduce_range=True)
    messages = " | ".join(str(w.message) for w in caught)
    assert "symmetric" in messages and "reduce_range" in messages
    for name, arr in initializers(q).items():
        if name.endswith("zero_point"):
            assert arr.dtype == np.int8 and np.all(arr == 0)


def test_metadata_and_domains(tiny) -> None:
    model, feeds = tiny
    q = quantize_systolic(model, feeds)
    meta = {p.key: p.value for p in q.metadata_props}
    assert meta["systolic_sdk.backend"] == "systolic"
    (conv,) = nodes_of(q, "QLinearConv")
    assert any(a.name == "relu" and a.i == 1 for a in conv.attribute)
    assert not nodes_of(q, "QLinearRelu")
    assert all(op.domain != "com.systolic" for op in q.opset_import)
