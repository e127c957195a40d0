"""Graph forms of the systolic backend: ReLU fusion, Clip/Relu6, Gemm, Add, lowering."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from systolic_helpers import initializers, nodes_of, quantize_systolic, relu_attr, run_ort

from runtime_emulator.kernels import SYSTOLIC_DOMAIN
from systolic_sdk.backends import get_backend
from systolic_sdk.backends.systolic import check_systolic_graph

F32 = np.float32
RNG = np.random.default_rng(7)


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _conv_inits(cin: int = 2, cout: int = 3, scale: float = 0.6) -> dict:
    return {
        "w": RNG.normal(0, scale, (cout, cin, 3, 3)).astype(F32),
        "b": RNG.normal(0, 0.2, (cout,)).astype(F32),
    }


def _conv(out: str = "c") -> onnx.NodeProto:
    return helper.make_node("Conv", ["x", "w", "b"], [out], name="conv", pads=[1, 1, 1, 1])


X_IN = [("x", ["N", 2, 6, 6])]


def _feeds(n: int = 32, scale: float = 1.0) -> dict:
    return {"x": RNG.normal(0, scale, (n, 2, 6, 6)).astype(F32)}


def _emulated_and_lowered(q: onnx.ModelProto, feeds: dict) -> tuple[list, list]:
    backend = get_backend("systolic")
    return backend.run(q, feeds), run_ort(backend.lower(q), feeds)


def _assert_bit_exact(q: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    emulated, lowered = _emulated_and_lowered(q, feeds)
    for a, b in zip(emulated, lowered, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    return emulated


def test_relu_fused_only_into_a_sole_consumer_producer() -> None:
    nodes = [
        _conv(),
        helper.make_node("Relu", ["c"], ["r"], name="relu_shared"),
        helper.make_node("Add", ["c", "r"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["t"], name="relu_after_add"),
    ]
    model = _model(nodes, X_IN, [("t", ["N", 3, 6, 6])], _conv_inits())
    feeds = _feeds()
    q = quantize_systolic(model, feeds)
    (conv,) = nodes_of(q, "QLinearConv")
    (add,) = nodes_of(q, "QLinearAdd")
    (relu,) = nodes_of(q, "QLinearRelu")
    assert relu_attr(conv) == 0, "the conv output also feeds the Add: no fusion"
    assert relu.domain == SYSTOLIC_DOMAIN and relu.input[0] == conv.output[0]
    assert relu_attr(add) == 1 and add.domain == "com.microsoft"
    assert any(op.domain == SYSTOLIC_DOMAIN for op in q.opset_import)
    check_systolic_graph(q)
    (y,) = _assert_bit_exact(q, feeds)
    (ref,) = run_ort(model, feeds)
    assert np.abs(y - ref).max() < 0.1 * np.abs(ref).max()


def _clip_model(lo: float, hi: float, extra_reader: bool = False) -> onnx.ModelProto:
    inits = _conv_inits(scale=1.5)
    inits["lo"], inits["hi"] = np.array(lo, F32), np.array(hi, F32)
    nodes = [_conv(), helper.make_node("Clip", ["c", "lo", "hi"], ["k"], name="clip")]
    outputs = [("k", ["N", 3, 6, 6])]
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["c"], ["n"], name="neg"))
        outputs.append(("n", ["N", 3, 6, 6]))
    return _model(nodes, X_IN, outputs, inits)


def test_relu6_with_range_beyond_six_becomes_a_fused_relu() -> None:
    model = _clip_model(0.0, 6.0)
    feeds = _feeds(scale=3.0)
    (ref,) = run_ort(model, feeds)
    assert ref.max() == 6.0, "the sample must saturate the Clip"
    q = quantize_systolic(model, feeds)
    (conv,) = nodes_of(q, "QLinearConv")
    assert relu_attr(conv) == 1 and not nodes_of(q, "Clip")
    assert initializers(q)[conv.input[6]] == F32(F32(6.0) / F32(127))
    (y,) = _assert_bit_exact(q, feeds)
    assert y.min() == 0.0 and y.max() == 6.0


def test_relu6_on_a_shared_tensor_keeps_an_exact_int8_clip() -> None:
    model = _clip_model(0.0, 6.0, extra_reader=True)
    feeds = _feeds(scale=3.0)
    q = quantize_systolic(model, feeds)
    (conv,) = nodes_of(q, "QLinearConv")
    assert relu_attr(conv) == 0 and not nodes_of(q, "QLinearRelu")
    (clip,) = nodes_of(q, "Clip")
    inits = initializers(q)
    s = inits[conv.input[6]]
    assert inits[clip.input[1]] == 0 and inits[clip.input[2]] == round(float(F32(6.0) / s))
    assert inits[clip.input[2]] < 127
    y, _ = _assert_bit_exact(q, feeds)
    assert y.max() <= 6.0 + float(s) / 2 and y.min() == 0.0


def test_symmetric_clip_stays_an_int8_clip() -> None:
    model = _clip_model(-1.0, 1.0)
    feeds = _feeds(scale=3.0)
    q = quantize_systolic(model, feeds)
    (clip,) = nodes_of(q, "Clip")
    inits = initializers(q)
    assert inits[clip.input[1]] == -127 and inits[clip.input[2]] == 127
    (y,) = _assert_bit_exact(q, feeds)
    assert y.min() == -1.0 and y.max() == 1.0


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_forms_and_relu_through_reshape(trans_b: int) -> None:
    w1 = RNG.normal(0, 0.4, (8, 16)).astype(F32)
    w2 = RNG.normal(0, 0.4, (16, 5)).astype(F32)
    inits = {
        "w1": w1.T.copy() if trans_b else w1,
        "b1": RNG.normal(0, 0.3, (16,)).astype(F32),
        "w2": w2.T.copy() if trans_b else w2,
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["g"], name="fc1", transB=trans_b),
        helper.make_node("Relu", ["g"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2", transB=trans_b),
    ]
    model = _model(nodes, [("x", ["N", 8])], [("y", ["N", 5])], inits)
    feeds = {"x": RNG.normal(0, 1, (64, 8)).astype(F32)}
    q = quantize_systolic(model, feeds)
    (conv,) = nodes_of(q, "QLinearConv")
    (mm,) = nodes_of(q, "QLinearMatMul")
    assert relu_attr(conv) == 1 and not nodes_of(q, "QLinearRelu")
    got = initializers(q)
    assert got[conv.input[3]].shape == (16, 8, 1, 1) and got[mm.input[3]].shape == (16, 5)
    (y,) = _assert_bit_exact(q, feeds)
    (ref,) = run_ort(model, feeds)
    assert np.abs(y - ref).max() < 0.05 * np.abs(ref).max()


def test_broadcast_add_stays_float() -> None:
    inits = _conv_inits()
    inits["k"] = RNG.normal(0, 1, (3, 1, 1)).astype(F32)
    nodes = [_conv(), helper.make_node("Add", ["c", "k"], ["y"], name="add")]
    model = _model(nodes, X_IN, [("y", ["N", 3, 6, 6])], inits)
    q = quantize_systolic(model, _feeds())
    assert not nodes_of(q, "QLinearAdd")
    (add,) = nodes_of(q, "Add")
    assert add.input[1] == "k"


def test_every_quantized_tensor_is_int8_with_zero_point_zero() -> None:
    nodes = [_conv(), helper.make_node("Relu", ["c"], ["y"], name="relu")]
    q = quantize_systolic(_model(nodes, X_IN, [("y", ["N", 3, 6, 6])], _conv_inits()), _feeds())
    for name, arr in initializers(q).items():
        if "zero_point" in name:
            assert arr.dtype == np.int8 and arr.shape == () and arr == 0, name
        if name.endswith("_scale"):
            assert arr.dtype == np.float32 and arr.shape == (), name


def _qlinear_add_graph(s_a: float, s_b: float, s_c: float, relu: int) -> onnx.ModelProto:
    inits = {
        "sa": np.array(s_a, F32),
        "sb": np.array(s_b, F32),
        "sc": np.array(s_c, F32),
        "z": np.array(0, np.int8),
    }
    node = helper.make_node(
        "QLinearAdd",
        ["a", "sa", "z", "b", "sb", "z", "sc", "z"],
        ["y"],
        name="add",
        domain="com.microsoft",
        relu=relu,
    )
    graph = helper.make_graph(
        [node],
        "add",
        [helper.make_tensor_value_info(n, TensorProto.INT8, ["N", 64]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.INT8, ["N", 64])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)],
    )


def test_qlinear_add_lowering_is_the_accelerator_rule() -> None:
    import runtime_emulator

    feeds = {k: RNG.integers(-128, 128, (8, 64)).astype(np.int8) for k in ("a", "b")}
    lower = get_backend("systolic").lower
    # Multipliers 0.5 and 0.75 give exact .5 ties: each input is rounded on its own.
    cases = [(0.5, 0.75, 1.0, 0), (0.02, 0.03, 0.04, 1), (0.1, 0.3, 0.07, 0)]
    for s_a, s_b, s_c, relu in cases:
        model = _qlinear_add_graph(s_a, s_b, s_c, relu)
        systolic = runtime_emulator.run(model, feeds, target="systolic")["y"]
        (lowered,) = run_ort(lower(model), feeds)
        assert np.array_equal(systolic, lowered)
        if relu:
            assert lowered.min() == 0
    # The same graph read with onnxruntime's rule (round once) differs: the test can tell.
    model = _qlinear_add_graph(*cases[0])
    (lowered,) = run_ort(lower(model), feeds)
    assert not np.array_equal(runtime_emulator.run(model, feeds, target="cpu")["y"], lowered)


def test_global_average_pool_runs_on_the_host() -> None:
    inits = _conv_inits()
    inits["wf"] = RNG.normal(0, 0.5, (3, 4)).astype(F32)
    nodes = [
        _conv(),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "wf"], ["y"], name="fc"),
    ]
    model = _model(nodes, X_IN, [("y", ["N", 4])], inits)
    feeds = _feeds()
    q = quantize_systolic(model, feeds)
    (gap,) = nodes_of(q, "QLinearGlobalAveragePool")
    assert gap.domain == "com.microsoft"
    (y,) = _assert_bit_exact(q, feeds)
    (ref,) = run_ort(model, feeds)
    assert np.abs(y - ref).max() < 0.05 * np.abs(ref).max()
