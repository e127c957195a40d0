"""Cross-layer equalization: hand-computed scales, fp32 equivalence, ReLU6 modes, validity."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from systolic_sdk.errors import SdkError
from systolic_sdk.transforms import equalize
from systolic_sdk.transforms._graph import GraphIndex
from systolic_sdk.transforms.equalization import (
    _inferred_shapes,
    find_chains,
    in_ranges,
    out_ranges,
)
from tests.transforms.builders import init, mobile_block, model_of, run, spread


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _valid(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)


def _two_layer(act: str = "Relu") -> onnx.ModelProto:
    w1 = np.array([[4.0, -1.0], [0.5, -1.0], [9.0, 3.0]]).reshape(3, 2, 1, 1)
    w2 = np.array([[1.0, -4.0, 0.25], [0.5, 2.0, -1.0]]).reshape(2, 3, 1, 1)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="c1"),
        helper.make_node(act, ["h"], ["a"], name="act"),
        helper.make_node("Conv", ["a", "w2", "b2"], ["y"], name="c2"),
    ]
    inits = [init("w1", w1), init("b1", [2.0, 1.0, 3.0]), init("w2", w2), init("b2", [0.5, -0.5])]
    return model_of(nodes, inits, ["N", 2, 3, 3], ["N", 2, 3, 3])


def test_hand_computed_scales_two_layers() -> None:
    """r1 = (4, 1, 9), r2 = (1, 4, 1): s = sqrt(r1 / r2) = (2, 0.5, 3); ranges become (2, 2, 3)."""
    model = _two_layer()
    eq = equalize(model)
    w = _weights(eq)
    np.testing.assert_array_equal(w["w1"].reshape(3, 2), [[2.0, -0.5], [1.0, -2.0], [3.0, 1.0]])
    np.testing.assert_array_equal(w["b1"], [1.0, 2.0, 1.0])
    np.testing.assert_array_equal(w["w2"].reshape(2, 3), [[2.0, -2.0, 0.75], [1.0, 1.0, -3.0]])
    np.testing.assert_array_equal(w["b2"], [0.5, -0.5])  # layer 2's bias is untouched
    chain = find_chains(GraphIndex(eq), _inferred_shapes(eq))[0]
    np.testing.assert_array_equal(out_ranges(chain.first, w["w1"]), [2.0, 2.0, 3.0])
    np.testing.assert_array_equal(in_ranges(chain.second, w["w2"]), [2.0, 2.0, 3.0])
    # the input model is not modified
    np.testing.assert_array_equal(_weights(model)["b1"], [2.0, 1.0, 3.0])
    x = np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(run(eq, x), run(model, x), rtol=1e-6, atol=1e-6)
    _valid(eq)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relu_chains_preserve_fp32_and_equalize_ranges(seed: int) -> None:
    rng = np.random.default_rng(seed)
    model = mobile_block(rng)
    chains = find_chains(GraphIndex(model), _inferred_shapes(model))
    names = [(c.first.node.name, c.second.node.name) for c in chains]
    assert names == [
        ("expand", "dw"),
        ("dw", "project"),
        ("project", "grouped"),
        ("grouped", "fc1"),
        ("fc1", "fc2"),
    ]
    eq = equalize(model, min_range=0.0)
    _valid(eq)
    x = rng.standard_normal((8, 4, 8, 8)).astype(np.float32)
    ref = run(model, x)
    np.testing.assert_allclose(run(eq, x), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    # every chain ends with equal per-channel ranges on both sides (converged sweeps)
    w = _weights(eq)
    for chain in find_chains(GraphIndex(eq), _inferred_shapes(eq)):
        r1 = out_ranges(chain.first, w[chain.first.weight])
        r2 = in_ranges(chain.second, w[chain.second.weight], chain.block)
        np.testing.assert_allclose(r1, r2, rtol=1e-4)


def test_flatten_block_chain_on_digits(digits_model: onnx.ModelProto, digits_test) -> None:
    """digits_cnn: conv1->relu->maxpool->conv2, dw->Clip->Flatten(7x7)->Gemm, Gemm->Relu->Gemm."""
    chains = find_chains(GraphIndex(digits_model), _inferred_shapes(digits_model))
    got = [(c.first.node.name, c.second.node.name, c.block) for c in chains]
    assert got == [
        ("/conv1/Conv", "/conv2/Conv", 1),
        ("/dw_conv/Conv", "/fc1/Gemm", 49),
        ("/fc1/Gemm", "/fc2/Gemm", 1),
    ]
    x = digits_test[0][:300]
    ref = run(digits_model, x)
    for mode in ("exact", "skip"):
        eq = equalize(digits_model, relu6=mode)
        _valid(eq)
        np.testing.assert_allclose(run(eq, x), ref, rtol=1e-5, atol=1e-4)
    assert not np.array_equal(
        _weights(equalize(digits_model))["fc1.weight"], _weights(digits_model)["fc1.weight"]
    )


def _relu6_chain(rng: np.random.Generator) -> onnx.ModelProto:
    w1 = spread(rng, (6, 3, 1, 1), 0, decades=2.0)
    w2 = spread(rng, (4, 6, 1, 1), 1, decades=2.0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="c1"),
        helper.make_node("Clip", ["h", "lo", "hi"], ["a"], name="relu6"),
        helper.make_node("Conv", ["a", "w2"], ["y"], name="c2"),
    ]
    inits = [init("w1", w1), init("b1", np.zeros(6)), init("w2", w2)]
    inits += [init("lo", np.array(0.0)), init("hi", np.array(6.0))]
    return model_of(nodes, inits, ["N", 3, 2, 2], ["N", 4, 2, 2])


def test_relu6_modes_change_fp32_only_where_relu6_saturated() -> None:
    rng = np.random.default_rng(3)
    model = _relu6_chain(rng)
    w1 = _weights(model)["w1"].reshape(6, 3)
    x = rng.standard_normal((64, 3, 2, 2)).astype(np.float32)
    pre = np.einsum("oc,nchw->nohw", w1, x)
    # small inputs: no pre-activation reaches 6, every mode is exact
    small = (x * (5.0 / np.abs(pre).max())).astype(np.float32)
    # large inputs: many pre-activations exceed 6
    large = (x * (60.0 / np.abs(pre).max())).astype(np.float32)
    ref_small, ref_large = run(model, small), run(model, large)
    tol = {"rtol": 1e-5, "atol": 1e-5}
    for mode in ("exact", "skip", "max", "relu", "keep"):
        eq = equalize(model, relu6=mode)
        _valid(eq)
        ops = [n.op_type for n in eq.graph.node]
        if mode in ("exact", "skip"):
            np.testing.assert_allclose(run(eq, large), ref_large, **tol)
        else:
            assert not np.allclose(run(eq, large), ref_large, **tol), mode
        if mode != "keep":  # keep also moves the bound below 6 for channels with S < 1
            np.testing.assert_allclose(run(eq, small), ref_small, **tol)
        expected = {
            "exact": ["Conv", "Relu", "Min", "Conv"],
            "relu": ["Conv", "Relu", "Conv"],
        }.get(mode, ["Conv", "Clip", "Conv"])
        assert ops == expected, mode
    # "max": one scalar bound, the loosest channel's exact bound 6 / S_i
    w = _weights(equalize(model, relu6="max"))
    s = np.abs(w1).max(axis=1) / np.abs(w["w1"].reshape(6, 3)).max(axis=1)
    bound = [v for k, v in w.items() if k.endswith("_max")][0]
    np.testing.assert_allclose(bound, (6.0 / s).max(), rtol=1e-5)


def test_not_equalized_when_tensor_fans_out_or_is_an_output() -> None:
    model = _two_layer()
    model.graph.output.append(helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, None))
    eq = equalize(model)
    for name, value in _weights(model).items():
        np.testing.assert_array_equal(_weights(eq)[name], value)


def test_near_dead_channels_keep_their_scale() -> None:
    model = _two_layer()
    w1 = _weights(model)["w1"].copy()
    w1[1] *= 1e-4  # channel 1's range is 1e-4, far below 1e-2 * max
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w1, "w1"))
    eq = _weights(equalize(model))
    np.testing.assert_array_equal(eq["w1"][1], w1[1])
    np.testing.assert_array_equal(eq["b1"][1], 1.0)
    eq0 = _weights(equalize(model, min_range=0.0))
    assert not np.array_equal(eq0["w1"][1], w1[1])


def test_bad_arguments_raise_sdk_error() -> None:
    with pytest.raises(SdkError, match="relu6"):
        equalize(_two_layer(), relu6="relu7")  # type: ignore[arg-type]
    with pytest.raises(SdkError, match="iterations"):
        equalize(_two_layer(), iterations=0)
    with pytest.raises(SdkError, match="ModelProto"):
        equalize("model.onnx")  # type: ignore[arg-type]
