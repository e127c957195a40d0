"""Weights snapped onto the per-tensor int8 grid: exact grid, im2col, GPTQ, clipping."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from runtime_emulator.datapath import rne, saturate
from systolic_sdk.errors import SdkError
from systolic_sdk.transforms import fake_quantize_per_tensor
from systolic_sdk.transforms._graph import GraphIndex
from systolic_sdk.transforms.weight_rounding import (
    _gptq,
    _Layer,
    _layers,
    _patches,
    grid_weights,
    round_weights,
)
from tests.transforms.builders import init, mobile_block, model_of, run


def _spec_int8(w: np.ndarray) -> tuple[np.ndarray, float]:
    """What the Systolic quantizer does to a weight (spec section 7): (q, float64 scale)."""
    w64 = w.astype(np.float64)
    scale = 2.0 * float(np.abs(w64).max()) / 254.0
    return saturate(rne(w64 / scale), np.int8), scale


def _assert_on_grid(w: np.ndarray) -> np.ndarray:
    """The quantizer reproduces ``w`` from its int8 values: w / scale is an integer."""
    q, scale = _spec_int8(w)
    assert int(np.abs(q).max()) == 127
    np.testing.assert_allclose(w.astype(np.float64) / scale, q, rtol=0, atol=1e-4)
    return q


def _calib(rng: np.random.Generator, n: int = 16) -> np.ndarray:
    """Spatially smooth inputs (a blurred random field), like photos."""
    x = rng.standard_normal((n, 4, 9, 9)).astype(np.float32)
    x = x.cumsum(axis=2).cumsum(axis=3) / 4.0
    return x[:, :, :8, :8].copy()


@pytest.mark.parametrize("rounding", ["nearest", "gptq"])
@pytest.mark.parametrize("clip", ["max", "mse"])
def test_every_weight_lands_on_its_grid(rounding: str, clip: str) -> None:
    rng = np.random.default_rng(0)
    model = mobile_block(rng, "Relu6")
    out = round_weights(model, _calib(rng), rounding=rounding, clip=clip)  # type: ignore[arg-type]
    onnx.checker.check_model(out)
    before, after = grid_weights(model), grid_weights(out)
    names = {"expand.w", "dw.w", "project.w", "grouped.w", "fc1.w", "fc2.w"}
    assert set(after) == set(before) == names
    for name, w in after.items():
        q = _assert_on_grid(w)
        assert w.dtype == np.float32 and w.shape == before[name].shape
        if rounding == "nearest" and clip == "max":  # what the quantizer does anyway
            np.testing.assert_array_equal(q, _spec_int8(before[name])[0])
            np.testing.assert_allclose(w, fake_quantize_per_tensor(before[name]), rtol=1e-6)
    # the other initializers and the graph are untouched
    others = {t.name for t in model.graph.initializer} - set(after)
    for name in others:
        a = numpy_helper.to_array(GraphIndex(out).inits[name])
        np.testing.assert_array_equal(a, numpy_helper.to_array(GraphIndex(model).inits[name]))
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in model.graph.node]


def test_gptq_hand_computed() -> None:
    """Two correlated inputs (H = [[1, .5], [.5, 1]]), grid step 1, w = [0.6, 0.6].

    Column 0 rounds to 1 (error -0.4); the optimal compensation moves column 1 by
    -0.4 * H01 / H11 = -0.2, to 0.4, which rounds to 0. Output error dW H dW^T: 0.28
    against 0.48 for nearest rounding ([1, 1]).
    """
    h = np.array([[[1.0, 0.5], [0.5, 1.0]]])
    w = np.array([[[0.6, 0.6]]])
    q = _gptq(w, h, 1.0, 0.0)
    np.testing.assert_array_equal(q, [[[1.0, 0.0]]])

    def err(qq: np.ndarray) -> float:
        d = (w - qq)[0, 0]
        return float(d @ h[0] @ d)

    assert err(q) == pytest.approx(0.28) and err(np.ones_like(w)) == pytest.approx(0.48)
    # uncorrelated inputs: nothing to compensate, plain nearest rounding
    np.testing.assert_array_equal(_gptq(w, np.eye(2)[None], 1.0, 0.0), [[[1.0, 1.0]]])


def test_gptq_keeps_the_largest_weight_at_the_grid_end() -> None:
    """The column of max|w| is rounded first, so compensation never moves it off +-127."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((1, 3, 6))
    w[0, 1, 4] = -5.0
    a = rng.standard_normal((6, 50))
    h = (a @ a.T)[None]
    q = _gptq(w, h, 5.0 / 127.0, 0.01)
    assert q[0, 1, 4] == -127 and np.abs(q).max() == 127


@pytest.mark.parametrize(
    ("kernel", "strides", "pads", "dilations", "group"),
    [
        ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
        ((3, 3), (2, 2), (0, 0, 1, 1), (1, 1), 6),  # EfficientNet's stride-2 depthwise
        ((5, 5), (2, 2), (1, 1, 2, 2), (1, 1), 3),
        ((3, 2), (1, 2), (2, 0, 1, 1), (2, 1), 2),
        ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ],
)
def test_patches_reproduce_the_convolution(kernel, strides, pads, dilations, group) -> None:
    """patches @ W^T per group equals onnxruntime's Conv: the im2col order matches."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 6 // group, *kernel)).astype(np.float32)
    node = helper.make_node(
        "Conv",
        ["x", "w"],
        ["y"],
        kernel_shape=list(kernel),
        strides=list(strides),
        pads=list(pads),
        dilations=list(dilations),
        group=group,
    )
    model = model_of([node], [init("w", w)], ["N", 6, 9, 10], None)  # type: ignore[arg-type]
    x = rng.standard_normal((2, 6, 9, 10)).astype(np.float32)
    y = run(model, x)  # [2, 6, OH, OW]
    (layer,) = _layers(GraphIndex(model))
    p = _patches(layer, x, max_positions=10**6, phase=0)  # [g, samples * positions, cols]
    wg = w.reshape(group, 6 // group, -1)
    got = np.matmul(p, wg.transpose(0, 2, 1))  # [g, samples * positions, rows]
    got = got.reshape(group, 2, -1, 6 // group).transpose(1, 0, 3, 2).reshape(y.shape)
    np.testing.assert_allclose(got, y, rtol=1e-5, atol=1e-5)


def test_patches_subsample_positions() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((2, 2, 1, 1)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])
    model = model_of([node], [init("w", w)], [1, 2, 8, 8], None)  # type: ignore[arg-type]
    layer: _Layer = _layers(GraphIndex(model))[0]
    x = rng.standard_normal((3, 2, 8, 8)).astype(np.float32)
    p = _patches(layer, x, max_positions=16, phase=1)
    assert p.shape == (1, 3 * 16, 2)  # every 2nd row and column, starting at 1
    np.testing.assert_array_equal(p[0, :, 1], x[:, 1, 1::2, 1::2].reshape(-1))


def test_gptq_and_mse_clip_lower_the_output_error_on_real_data(
    digits_model: onnx.ModelProto, digits_calib: np.ndarray, digits_test
) -> None:
    """digits_cnn, held out: the int8 weights GPTQ chooses match fp32 better than nearest."""
    x = digits_test[0][:300]
    ref = run(digits_model, x)

    def error(model: onnx.ModelProto) -> float:
        return float(np.mean((run(model, x) - ref) ** 2))

    calib = digits_calib[:64]
    nearest = error(round_weights(digits_model, calib, rounding="nearest", clip="max"))
    gptq = error(round_weights(digits_model, calib, rounding="gptq", clip="max"))
    both = error(round_weights(digits_model, calib, rounding="gptq", clip="mse"))
    assert gptq < 0.8 * nearest
    assert both < nearest


def test_shared_weight_left_alone_and_bad_arguments() -> None:
    rng = np.random.default_rng(4)
    w = rng.standard_normal((3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["y"]),
    ]
    model = model_of(nodes, [init("w", w)], ["N", 3], ["N", 3])
    out = round_weights(model, rng.standard_normal((8, 3)).astype(np.float32))
    np.testing.assert_array_equal(grid_weights(out)["w"], w)
    for kwargs in ({"rounding": "up"}, {"clip": "p99"}, {"clip_grid": [1.5]}, {"damping": -1}):
        with pytest.raises(SdkError, match="round_weights"):
            round_weights(model, np.zeros((2, 3), np.float32), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(SdkError, match="calibration"):
        round_weights(model, [1, 2])  # type: ignore[arg-type]


def test_blocked_updates_equal_column_by_column(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lazy batch updates (blocks of columns, then one GEMM) change no rounding decision."""
    import systolic_sdk.transforms.weight_rounding as wr

    rng = np.random.default_rng(5)
    w = rng.standard_normal((2, 4, 20))
    a = rng.standard_normal((2, 20, 60))
    a[:, 1:] += a[:, :-1]  # correlated inputs
    h = np.matmul(a, a.transpose(0, 2, 1))
    scale = float(np.abs(w).max()) / 127.0 * 8  # a coarse grid: compensation matters
    monkeypatch.setattr(wr, "_BLOCK", 128)
    whole = _gptq(w, h, scale, 0.01)
    monkeypatch.setattr(wr, "_BLOCK", 3)
    np.testing.assert_array_equal(_gptq(w, h, scale, 0.01), whole)
    assert not np.array_equal(whole, saturate(rne(w / scale), np.int8))
