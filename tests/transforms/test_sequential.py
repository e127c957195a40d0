"""round_sequentially: GPTQ and bias correction measured in the int8 model, layer by layer."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from systolic_sdk.backends.systolic.scales import activation_scales
from systolic_sdk.calibration.reader import ArrayReader
from systolic_sdk.errors import SdkError
from systolic_sdk.transforms import correct_bias
from systolic_sdk.transforms._graph import probe_session
from systolic_sdk.transforms.bias_correction import _fake_quantize_activations
from systolic_sdk.transforms.sequential import (
    _fake_quant,
    _match_activation,
    round_sequentially,
)
from systolic_sdk.transforms.weight_rounding import grid_weights, round_weights
from tests.transforms.builders import init, mobile_block, model_of, run
from tests.transforms.test_weight_rounding import _assert_on_grid, _calib


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_match_activation_by_hand() -> None:
    """Channel 0: fp32 mean after Clip(0, 6) is (0 + 1 + 2.5 + 6) / 4 = 2.375; the int8
    values (-1, 0.5, 2, 7) reach it with d = 0.5 ((0.5 + d) + (2 + d) + 6 = 9.5). Channel 1
    is below 0 in both: any d <= 2 keeps the mean 0, the one nearest 0 is 0. Channel 2
    saturates in fp32 only: the mean 6 needs every value >= 6, d = 6 - (-1) = 7."""
    y_q = np.array([[[[-1.0, 0.5, 2.0, 7.0]], [[-5, -4, -3, -2]], [[-1.0, 0.0, 1.0, 2.0]]]])
    y_fp = np.array([[[[-1.0, 1.0, 2.5, 7.0]], [[-3, -2, -1, -0.5]], [[7.0, 8.0, 9.0, 10.0]]]])
    d = _match_activation(y_fp, y_q, 0.0, 6.0, "Conv")
    np.testing.assert_allclose(d, [0.5, 0.0, 7.0], atol=1e-6)
    # channels last for a Gemm; a Relu has no upper bound: channel 0 needs
    # (0.5 + 2 + 7) + 3 d = 10.5, channel 2 (-1 + 0 + 1 + 2) + 4 d = 34
    d = _match_activation(y_fp[0, :, 0].T, y_q[0, :, 0].T, 0.0, np.inf, "Gemm")
    np.testing.assert_allclose(d, [1.0 / 3.0, 0.0, 8.0], atol=1e-6)


def test_fake_quant_is_quantize_then_dequantize_linear() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 3, 5, 5)) * 4).astype(np.float32)
    x.reshape(-1)[:4] = [0.05, -0.05, 0.15, 100.0]  # ties to even, saturation
    s = np.float32(0.1)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    inits = [init("s", np.array(s)), helper.make_tensor("z", onnx.TensorProto.INT8, [], [0])]
    want = run(model_of(nodes, inits, [2, 3, 5, 5], [2, 3, 5, 5]), x)
    np.testing.assert_array_equal(_fake_quant(x, float(s)), want)
    assert _fake_quant(x, None) is x


def test_without_activation_quantization_one_layer_is_gptq_plus_bias_correction() -> None:
    """One conv, no activation scales: the int8 model's inputs are the fp32 ones, so the
    result is round_weights' GPTQ grid and correct_bias' layerwise correction exactly."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c", pads=[1, 1, 1, 1])]
    model = model_of(nodes, [init("w", w), init("b", rng.standard_normal(6))], ["N", 4, 8, 8], None)
    x = _calib(rng)
    got = round_sequentially(model, x, {})
    rounded = round_weights(model, x)
    grid = grid_weights(rounded)
    want = correct_bias(model, x, lambda v, name: grid[name], sequential=False)
    np.testing.assert_array_equal(_weights(got)["w"], grid["w"])
    np.testing.assert_allclose(_weights(got)["b"], _weights(want)["b"], rtol=0, atol=1e-6)


def test_activation_means_match_fp32_in_the_int8_model() -> None:
    """With int8 activations: weights on their grid, and after each Clip(0, 6) the mean of
    every channel on the calibration data is fp32's, in the int8 model (the raw conv output
    of the simulation, before its own rounding)."""
    rng = np.random.default_rng(2)
    model = mobile_block(rng, "Relu6")
    x = _calib(rng, 24)
    scales = activation_scales(model, ArrayReader({"x": x}, 8))
    out = round_sequentially(model, x, scales)
    for w in grid_weights(out).values():
        _assert_on_grid(w)
    sim = copy.deepcopy(out)
    _fake_quantize_activations(sim, scales)
    raw = ["expand.y", "dw.y", "project.y"]
    got = probe_session(sim, raw, "test").run(raw, {"x": x})
    ref = probe_session(model, raw, "test").run(raw, {"x": x})
    for g, r in zip(got, ref, strict=True):
        mean_q = np.clip(g.astype(np.float64), 0, 6).mean(axis=(0, 2, 3))
        mean_fp = np.clip(r.astype(np.float64), 0, 6).mean(axis=(0, 2, 3))
        np.testing.assert_allclose(mean_q, mean_fp, rtol=2e-3, atol=2e-3)
    # the quantized simulation is closer to fp32 on held-out data than plain rounding
    x_eval = _calib(rng, 24)
    plain = round_weights(model, x, rounding="nearest", clip="max")
    sim_plain = copy.deepcopy(plain)
    _fake_quantize_activations(sim_plain, scales)

    def err(m: onnx.ModelProto) -> float:
        y = probe_session(m, [], "test").run(["y"], {"x": x_eval})[0]
        return float(np.linalg.norm(y - run(model, x_eval)))

    assert err(sim) < err(sim_plain)


def test_max_samples_takes_evenly_spaced_samples() -> None:
    rng = np.random.default_rng(5)
    model = mobile_block(rng, "Relu6")
    x = _calib(rng, 10)
    scales = activation_scales(model, ArrayReader({"x": x}, 8))
    capped = round_sequentially(model, x, scales, max_samples=4)
    by_hand = round_sequentially(model, x[[0, 3, 6, 9]], scales, max_samples=None)
    assert capped.SerializeToString() == by_hand.SerializeToString()
    assert capped.SerializeToString() != round_sequentially(model, x, scales).SerializeToString()


def test_bad_inputs_raise_sdk_error() -> None:
    model = mobile_block(np.random.default_rng(3), "Relu")
    x = _calib(np.random.default_rng(3))
    with pytest.raises(SdkError, match="names 'nope'"):
        round_sequentially(model, x, {"nope": 1.0})
    with pytest.raises(SdkError, match="damping"):
        round_sequentially(model, x, {}, damping=-1.0)
    with pytest.raises(SdkError, match="max_samples >= 1"):
        round_sequentially(model, x, {}, max_samples=0)
    with pytest.raises(SdkError, match="empty"):
        round_sequentially(model, {"x": x[:0]}, {})


def test_digits_model_closer_to_fp32_than_fp32_measured(
    digits_model, digits_calib, digits_test
) -> None:
    """The shipped model, 64 calibration samples, int8 activations: held-out logits of
    the int8 simulation are closer to fp32 than with GPTQ + bias correction on fp32."""
    from systolic_sdk.transforms import per_tensor_recipe

    calib = digits_calib[:64]
    x_eval = digits_test[0][:300]
    scales = activation_scales(digits_model, ArrayReader({"input": calib}, 8))
    in_loop = per_tensor_recipe(digits_model, calib, activation_scales=scales)
    on_fp32 = per_tensor_recipe(digits_model, calib, int8_in_loop=False)
    ref = run(digits_model, x_eval).astype(np.float64)

    def err(m: onnx.ModelProto) -> float:
        sim = copy.deepcopy(m)
        _fake_quantize_activations(sim, scales)
        y = probe_session(sim, [], "test").run(None, {"input": x_eval})[0]
        return float(np.linalg.norm(y - ref))

    assert err(in_loop) < err(on_fp32)


def test_matmul_without_bias_gains_one_and_is_rounded() -> None:
    """A bias-less MatMul after a Flatten (its output renamed when the bias Add is added):
    every layer ends on the int8 grid and the MatMul keeps a bias of its own."""
    from tests.conftest import tiny_conv_model

    model = tiny_conv_model()
    x = np.random.default_rng(2).normal(size=(16, 1, 4, 4)).astype(np.float32)
    scales = {"r": float(np.abs(x).max()) / 127, "f": float(np.abs(x).max()) / 127}
    out = round_sequentially(model, ArrayReader({"x": x}, 4), scales)
    w = _weights(out)
    for name in ("w", "w2"):
        _assert_on_grid(w[name])
    adds = [n for n in out.graph.node if n.op_type == "Add"]
    assert len(adds) == 1 and adds[0].output[0] == "y"
    assert run(out, {"x": x}).shape == (16, 3)


def test_a_bias_less_matmul_read_by_a_relu_matches_the_mean_after_it(monkeypatch) -> None:
    """MatMul (no bias) -> Relu -> MatMul: the bias Add inserted for the first MatMul is
    where its output meets the Relu, so the bias moves until every channel's mean after
    the Relu is fp32's in the int8 model, as for a Conv or Gemm."""
    from systolic_sdk.transforms import sequential

    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((16, 24)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((24, 5)).astype(np.float32) * 0.3
    model = model_of(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
        ],
        [init("w1", w1), init("w2", w2)],
        ["N", 16],
        ["N", 5],
    )
    x = rng.standard_normal((128, 16)).astype(np.float32)  # 128: all samples are used
    x[0] *= 16  # an outlier: coarse int8 steps for x, whose noise the Relu rectifies
    scales = activation_scales(model, ArrayReader({"x": x}, 64))
    h_fp = probe_session(model, ["h"], "test").run(["h"], {"x": x})[0]
    mean_fp = np.maximum(h_fp.astype(np.float64), 0).mean(axis=0)

    def mean_after_relu(rounded: onnx.ModelProto) -> np.ndarray:
        sim = copy.deepcopy(rounded)
        _fake_quantize_activations(sim, scales)
        h = probe_session(sim, ["h"], "test").run(["h"], {"x": x})[0]
        return np.maximum(h.astype(np.float64), 0).mean(axis=0)

    matched = mean_after_relu(round_sequentially(model, x, scales))
    np.testing.assert_allclose(matched, mean_fp, rtol=0, atol=1e-6)
    # Step 2 alone (the mean before the Relu matched) leaves the means after it apart.
    monkeypatch.setattr(sequential, "_activation_bounds", lambda index, node: None)
    before_only = mean_after_relu(round_sequentially(model, x, scales))
    assert np.abs(before_only - mean_fp).max() > 1e-3
