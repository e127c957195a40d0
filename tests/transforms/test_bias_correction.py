"""Empirical bias correction: hand-computed case, exact expected outputs, readers, validity."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from systolic_sdk.calibration.reader import ArrayReader, CalibrationDataReader
from systolic_sdk.errors import SdkError
from systolic_sdk.transforms import correct_bias, fake_quantize_per_tensor
from systolic_sdk.transforms._graph import GraphIndex, linear_layer
from systolic_sdk.transforms.bias_correction import fake_quantize_per_channel
from tests.transforms.builders import init, model_of, run


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _fake_quantized(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every Conv/Gemm/MatMul weight replaced by its per-tensor Q(W)."""
    out = copy.deepcopy(model)
    index = GraphIndex(out)
    for node in out.graph.node:
        layer = linear_layer(index, node)
        if layer is not None:
            w = numpy_helper.to_array(index.inits[layer.weight])
            index.set_init(layer.weight, fake_quantize_per_tensor(w, layer.weight))
    return out


def _channel_means(y: np.ndarray) -> np.ndarray:
    return y.astype(np.float64).swapaxes(0, 1).reshape(y.shape[1], -1).mean(axis=1)


W_HAND = np.array([[1.0, 0.3], [0.25, -1.0]], dtype=np.float32)


def _hand_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c")]
    inits = [init("w", W_HAND.reshape(2, 2, 1, 1)), init("b", [0.1, -0.2])]
    return model_of(nodes, inits, ["N", 2, 2, 2], ["N", 2, 2, 2])


def _hand_inputs() -> np.ndarray:
    """Channel 0 takes 1 and 3 (mean 2), channel 1 takes -1 and -5 (mean -3)."""
    x = np.empty((4, 2, 2, 2), dtype=np.float32)
    x[:, 0] = np.array([1.0, 3.0] * 8).reshape(4, 2, 2)
    x[:, 1] = np.array([-1.0, -5.0] * 8).reshape(4, 2, 2)
    return x


def test_default_weight_quantizer_is_spec_section_7() -> None:
    """max|w| = 1: scale = 2/254 = 1/127; q = rne(w * 127) = [[127, 38], [32, -127]]."""
    step = np.float32(2.0 / 254.0)
    expected = np.array([[127, 38], [32, -127]], dtype=np.float32) * step
    np.testing.assert_array_equal(fake_quantize_per_tensor(W_HAND, "w"), expected)
    np.testing.assert_array_equal(fake_quantize_per_tensor(np.zeros((2, 2)), "z"), 0.0)
    per_channel = fake_quantize_per_channel(np.array([[1.0, 0.3], [0.5, -0.25]]), axis=0)
    row1_step = np.float32(1.0 / 254.0)
    np.testing.assert_array_equal(per_channel[1], np.array([127, -64], np.float32) * row1_step)


@pytest.mark.parametrize("sequential", [True, False])
def test_hand_computed_correction(sequential: bool) -> None:
    """b' = b - dW . E[x] with dW01 = 38/127 - 0.3, dW10 = 32/127 - 0.25, E[x] = (2, -3)."""
    step = np.float32(2.0 / 254.0)
    dw01 = float(np.float32(38) * step) - float(np.float32(0.3))
    dw10 = float(np.float32(32) * step) - float(np.float32(0.25))
    expected = [0.1 - dw01 * -3.0, -0.2 - dw10 * 2.0]
    out = correct_bias(_hand_model(), _hand_inputs(), sequential=sequential)
    w = _weights(out)
    np.testing.assert_allclose(w["b"], expected, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(w["w"], W_HAND.reshape(2, 2, 1, 1))  # weights stay fp32
    onnx.checker.check_model(out, full_check=True)


def test_activation_quantization_in_the_loop_hand_computed() -> None:
    """Input fake-quantized with scale 2: {1, 3} -> {0, 4} (ties to even), {-1, -5} ->
    {0, -4}; E[x~] = (2, -2) instead of (2, -3). b' = b - (Q(W) E[x~] - W E[x])."""
    step = float(np.float32(2.0 / 254.0))
    expected = [0.1 - (2 * step * (127 - 38) - 1.1), -0.2 - (2 * step * (32 + 127) - 3.5)]
    out = correct_bias(_hand_model(), _hand_inputs(), activation_scales={"x": 2.0})
    np.testing.assert_allclose(_weights(out)["b"], expected, rtol=0, atol=1e-6)
    onnx.checker.check_model(out, full_check=True)
    assert [n.op_type for n in out.graph.node] == ["Conv"]  # the Q/DQ are only for measuring
    with pytest.raises(SdkError, match="'nope', not a tensor"):
        correct_bias(_hand_model(), _hand_inputs(), activation_scales={"nope": 1.0})
    with pytest.raises(SdkError, match="sequential"):
        correct_bias(_hand_model(), _hand_inputs(), sequential=False, activation_scales={"x": 2})


def _padded_model(rng: np.random.Generator, stride: int, pads: list[int]) -> onnx.ModelProto:
    nodes = [
        helper.make_node(
            "Conv", ["x", "w1"], ["h"], name="c1", pads=pads, strides=[stride, stride]
        ),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
        helper.make_node("Conv", ["a", "w2", "b2"], ["y"], name="c2", pads=[1, 1, 1, 1]),
    ]
    inits = [
        init("w1", rng.standard_normal((5, 3, 3, 3)) * 0.3),
        init("w2", rng.standard_normal((4, 5, 3, 3)) * 0.3),
        init("b2", rng.standard_normal(4)),
    ]
    return model_of(nodes, inits, ["N", 3, 7, 7], ["N", 4, None, None])


@pytest.mark.parametrize(("stride", "pads"), [(1, [1, 1, 1, 1]), (2, [0, 0, 1, 1])])
def test_sequential_matches_fp32_mean_of_last_layer_with_padding(stride, pads) -> None:
    """Sequential: with all weights quantized, the last layer's mean output per channel
    equals the fp32 model's on the calibration data (borders included); the first
    layer (no bias before: one is created) likewise."""
    rng = np.random.default_rng(stride)
    model = _padded_model(rng, stride, pads)
    x = (rng.standard_normal((24, 3, 7, 7)) + np.array([1.0, -2.0, 0.5])[:, None, None]).astype(
        np.float32
    )
    out = correct_bias(model, {"x": x}, batch_size=5)
    onnx.checker.check_model(out, full_check=True)
    assert list(_weights(out)) != list(_weights(model))  # c1 got a bias
    assert out.graph.node[0].input[2]
    quant = _fake_quantized(out)
    ref = _channel_means(run(model, x))
    got = _channel_means(run(quant, x))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    # without correction the mean output is off by far more
    plain = _channel_means(run(_fake_quantized(model), x))
    assert np.abs(plain - ref).max() > 100 * np.abs(got - ref).max()
    # layerwise correction fixes each layer's own dW . E[x] only: the first layer's mean
    # output is exact, the last layer still sees the first layer's propagated error.
    layerwise = correct_bias(model, {"x": x}, sequential=False)
    lw = _channel_means(run(_fake_quantized(layerwise), x))
    assert np.abs(lw - ref).max() > np.abs(got - ref).max()


def test_gemm_matmul_and_conv_without_bias_get_one() -> None:
    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], name="conv"),
        helper.make_node("Flatten", ["c"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "wm"], ["m"], name="mm"),
        helper.make_node("Relu", ["m"], ["r"]),
        helper.make_node("Gemm", ["r", "wg"], ["y"], name="gemm", transB=1, alpha=0.5),
    ]
    inits = [
        init("wc", rng.standard_normal((3, 2, 1, 1))),
        init("wm", rng.standard_normal((12, 6))),
        init("wg", rng.standard_normal((4, 6))),
    ]
    model = model_of(nodes, inits, ["N", 2, 2, 2], ["N", 4])
    x = (rng.standard_normal((32, 2, 2, 2)) + 1.5).astype(np.float32)
    out = correct_bias(model, x)
    onnx.checker.check_model(out, full_check=True)
    ops = [n.op_type for n in out.graph.node]
    assert ops == ["Conv", "Flatten", "MatMul", "Add", "Relu", "Gemm"]
    assert len(out.graph.node[0].input) == 3 and len(out.graph.node[5].input) == 3
    ref = run(model, x).mean(axis=0)
    got = run(_fake_quantized(out), x).mean(axis=0)
    np.testing.assert_allclose(got, ref, atol=1e-5 * np.abs(ref).max())


class _OnceReader(CalibrationDataReader):
    """A reader without rewind(): the pass must keep its feeds."""

    def __init__(self, x: np.ndarray) -> None:
        self._it = iter([{"x": x[i : i + 2]} for i in range(0, len(x), 2)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def test_readers_and_arrays_agree() -> None:
    x = _hand_inputs()
    by_array = _weights(correct_bias(_hand_model(), x))["b"]
    by_dict = _weights(correct_bias(_hand_model(), {"x": x}, batch_size=3))["b"]
    by_reader = _weights(correct_bias(_hand_model(), ArrayReader({"x": x}, batch_size=2)))["b"]
    by_once = _weights(correct_bias(_hand_model(), _OnceReader(x)))["b"]
    for other in (by_dict, by_reader, by_once):
        np.testing.assert_allclose(other, by_array, rtol=0, atol=1e-7)


def test_custom_weight_quantizer_is_used() -> None:
    """An identity quantizer (dW = 0) leaves every bias as it was."""
    out = correct_bias(_hand_model(), _hand_inputs(), lambda w, name: w)
    np.testing.assert_array_equal(_weights(out)["b"], np.float32([0.1, -0.2]))


def test_bad_inputs_raise_sdk_error() -> None:
    with pytest.raises(SdkError, match="no calibration data for input 'x'"):
        correct_bias(_hand_model(), {"input": _hand_inputs()})
    with pytest.raises(SdkError, match="calibration data must be"):
        correct_bias(_hand_model(), [1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(SdkError, match="changed the shape of 'w'"):
        correct_bias(_hand_model(), _hand_inputs(), lambda w, name: w.reshape(-1))
    with pytest.raises(SdkError, match="empty"):
        correct_bias(_hand_model(), np.zeros((0, 2, 2, 2), np.float32))


def test_digits_mean_logits_match_after_correction(digits_model, digits_calib, digits_test) -> None:
    out = correct_bias(digits_model, digits_calib)
    onnx.checker.check_model(out, full_check=True)
    ref = run(digits_model, digits_calib).mean(axis=0)
    corrected = run(_fake_quantized(out), digits_calib).mean(axis=0)
    plain = run(_fake_quantized(digits_model), digits_calib).mean(axis=0)
    assert np.abs(corrected - ref).max() < 1e-4 * np.abs(ref).max()
    assert np.abs(plain - ref).max() > 10 * np.abs(corrected - ref).max()
    # and on held-out digits the mean shift is smaller too
    x = digits_test[0][:500]
    ref_t = run(digits_model, x).mean(axis=0)
    assert (
        np.abs(run(_fake_quantized(out), x).mean(axis=0) - ref_t).max()
        < np.abs(run(_fake_quantized(digits_model), x).mean(axis=0) - ref_t).max()
    )
