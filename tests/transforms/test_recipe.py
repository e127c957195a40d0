"""per_tensor_recipe: switches, grid weights with corrected biases, readers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from systolic_sdk.backends.systolic.scales import activation_scales
from systolic_sdk.calibration.reader import ArrayReader, CalibrationDataReader
from systolic_sdk.transforms import equalize, per_tensor_recipe
from systolic_sdk.transforms.sequential import round_sequentially
from systolic_sdk.transforms.weight_rounding import grid_weights, round_weights
from tests.transforms.builders import mobile_block, run
from tests.transforms.test_weight_rounding import _assert_on_grid, _calib


class _OnceReader(CalibrationDataReader):
    """A reader that can be read once (no rewind)."""

    def __init__(self, x: np.ndarray) -> None:
        self._feeds = [{"x": x[i : i + 4]} for i in range(0, len(x), 4)]

    def get_next(self) -> dict[str, np.ndarray] | None:
        return self._feeds.pop(0) if self._feeds else None


def _first_layer_means(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Per-channel mean of the first conv's output ("expand.y") over ``x``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info("expand.y", TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(["expand.y"], {"x": x})[0].astype(np.float64)
    return y.mean(axis=(0, 2, 3))


def test_everything_off_returns_an_equal_copy() -> None:
    rng = np.random.default_rng(0)
    model = mobile_block(rng, "Relu6")
    x = _calib(rng)
    off = {"equalization": False, "bias_correction": False, "weight_rounding": False}
    for data in (x, None):
        out = per_tensor_recipe(model, data, **off)
        assert out is not model
        assert out.SerializeToString() == model.SerializeToString()
    # no data: the data-driven steps are skipped, whatever the switches say
    out = per_tensor_recipe(model, None)
    assert out.SerializeToString() == model.SerializeToString()


def test_equalization_alone_is_equalize() -> None:
    rng = np.random.default_rng(1)
    model = mobile_block(rng, "Relu6")
    out = per_tensor_recipe(
        model, _calib(rng), equalization=True, bias_correction=False, weight_rounding=False
    )
    props = {p.key: p.value for p in out.metadata_props}
    assert props == {"systolic_sdk.float_prep": "equalization"}  # what was applied
    del out.metadata_props[:]
    assert out.SerializeToString() == equalize(model).SerializeToString()


def test_fp32_measured_grid_weights_and_mean_preserving_biases() -> None:
    """Measured on fp32: weights on their per-tensor grid (GPTQ), biases corrected so that
    the first layer's mean output on the calibration data is the fp32 one."""
    rng = np.random.default_rng(0)
    model = mobile_block(rng, "Relu6")
    x = _calib(rng)
    out = per_tensor_recipe(model, x, int8_in_loop=False)
    onnx.checker.check_model(out)
    assert [i.name for i in out.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    for w in grid_weights(out).values():
        _assert_on_grid(w)
    np.testing.assert_allclose(
        _first_layer_means(out, x), _first_layer_means(model, x), rtol=1e-5, atol=1e-5
    )
    rounded_only = per_tensor_recipe(model, x, bias_correction=False, int8_in_loop=False)
    assert not np.allclose(_first_layer_means(rounded_only, x), _first_layer_means(model, x))
    # held out: closer to fp32 than the weights the quantizer would round by itself
    x_eval = _calib(rng)
    ref = run(model, x_eval)
    nearest = round_weights(model, x, rounding="nearest", clip="max")
    assert np.linalg.norm(run(out, x_eval) - ref) < np.linalg.norm(run(nearest, x_eval) - ref)


def test_reader_without_rewind_is_read_once_and_replayed() -> None:
    rng = np.random.default_rng(3)
    model = mobile_block(rng, "Relu6")
    x = _calib(rng)
    from_reader = per_tensor_recipe(model, _OnceReader(x))
    from_array = per_tensor_recipe(model, ArrayReader({"x": x}, 4))
    assert from_reader.SerializeToString() == from_array.SerializeToString()


def test_default_measures_in_the_int8_model() -> None:
    """The default is round_sequentially with the Systolic backend's MinMax scales; given
    scales (a mapping or a function) are used instead."""
    rng = np.random.default_rng(4)
    model = mobile_block(rng, "Relu6")
    x = _calib(rng)
    out = per_tensor_recipe(model, x)
    for w in grid_weights(out).values():
        _assert_on_grid(w)
    scales = activation_scales(model, ArrayReader({"x": x}, 8))
    assert "a1" in scales and "x" in scales
    by_hand = round_sequentially(model, ArrayReader({"x": x}, 8), scales)
    del out.metadata_props[:]
    assert out.SerializeToString() == by_hand.SerializeToString()
    halved = {k: v / 2 for k, v in scales.items()}
    from_function = per_tensor_recipe(model, x, activation_scales=lambda m, r: halved)
    from_mapping = per_tensor_recipe(model, x, activation_scales=halved)
    assert from_function.SerializeToString() == from_mapping.SerializeToString()
    del from_mapping.metadata_props[:]
    assert from_mapping.SerializeToString() != out.SerializeToString()
