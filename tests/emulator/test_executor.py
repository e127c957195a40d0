"""The graph executor: kernel/float mix, trace, feed errors, targets, real models.

Tests marked "mechanics" register a test-only kernel and do not depend on the
emulator's kernel modules; the tests using the ``kernels`` fixture need
``runtime_emulator.kernels.all`` (the real QLinearConv/QLinearConv_nhwc/QLinearRelu/
QLinearAdd/Q/DQ kernels) and are skipped, saying so, while it is absent.
"""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import runtime_emulator
from runtime_emulator import executor as ex
from runtime_emulator.kernels import KERNELS, SYSTOLIC_DOMAIN, lookup
from systolic_sdk.errors import SdkError

TEST_DOMAIN = "test.executor"


@pytest.fixture
def no_kernel_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mechanics tests: run without importing the real kernel modules."""
    monkeypatch.setattr(ex, "load_kernels", lambda: None)


@pytest.fixture
def twice_kernel(monkeypatch: pytest.MonkeyPatch, no_kernel_modules: None) -> list:
    """A test kernel ``test.executor::Twice(x, [bias]) -> 2*x (+ bias)``; records its calls."""
    calls: list = []

    def twice(inputs, attrs, ctx):
        calls.append((len(inputs), inputs[1] is None, dict(attrs), ctx.target, ctx.node_name))
        y = inputs[0] * np.asarray(2, inputs[0].dtype)
        if inputs[1] is not None:
            y = y + inputs[1]
        return [y]

    monkeypatch.setitem(KERNELS, (TEST_DOMAIN, "Twice"), twice)
    return calls


@pytest.fixture(scope="module")
def kernels() -> None:
    """The real kernel modules (skip, saying why, while they are absent)."""
    try:
        importlib.import_module("runtime_emulator.kernels.all")
    except ModuleNotFoundError as exc:
        if exc.name != "runtime_emulator.kernels.all":
            raise
        pytest.skip("runtime_emulator.kernels.all is not present yet")


def _model(nodes, inputs, outputs, inits=(), opsets=(("", 13),), metadata=None):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    return model


def _mix_model() -> onnx.ModelProto:
    """x -> Relu -> Twice (kernel, optional input omitted) -> Transpose -> Twice(+bias) -> y."""
    bias = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(3, 2), "bias")
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Twice", ["r", ""], ["t"], name="twice1", domain=TEST_DOMAIN, k=3),
        helper.make_node("Transpose", ["t"], ["tt"], name="transpose", perm=[1, 0]),
        helper.make_node("Twice", ["tt", "bias"], ["y"], name="twice2", domain=TEST_DOMAIN),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])],
        [bias],
        opsets=(("", 13), (TEST_DOMAIN, 1)),
    )


X = np.array([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]], np.float32)
Y = 4 * np.maximum(X, 0).T + np.arange(6, dtype=np.float32).reshape(3, 2)


def test_kernel_and_float_nodes_mix(twice_kernel: list) -> None:
    execu = ex.Executor(_mix_model(), target="systolic")
    out = execu.run({"x": X})
    assert list(out) == ["y"]
    np.testing.assert_array_equal(out["y"], Y)
    assert twice_kernel == [
        (2, True, {"k": 3}, "systolic", "twice1"),
        (2, False, {}, "systolic", "twice2"),
    ]
    records = list(execu.iter_nodes({"x": X}))
    assert [(r.name, r.op_type, r.backend) for r in records] == [
        ("relu", "Relu", "onnxruntime"),
        ("twice1", "Twice", "kernel"),
        ("transpose", "Transpose", "onnxruntime"),
        ("twice2", "Twice", "kernel"),
    ]
    assert list(records[3].inputs) == ["tt", "bias"]
    np.testing.assert_array_equal(records[3].outputs["y"], Y)


def test_trace_returns_every_tensor_and_plain_run_frees(twice_kernel: list) -> None:
    execu = ex.Executor(_mix_model())
    traced = execu.run({"x": X}, trace=True)
    assert set(traced) == {"x", "r", "t", "tt", "y"}  # no initializers
    np.testing.assert_array_equal(traced["r"], np.maximum(X, 0))
    np.testing.assert_array_equal(traced["tt"], 2 * np.maximum(X, 0).T)
    np.testing.assert_array_equal(traced["y"], Y)
    # Without trace, every intermediate is freed after its last consumer.
    execu.run({"x": X})
    assert set(execu.last_env) == {"y"}
    traced2 = runtime_emulator.run(_mix_model(), {"x": X}, trace=True)
    assert set(traced2) == set(traced)


def test_reference_backend_runs_float_nodes(twice_kernel: list) -> None:
    execu = ex.Executor(_mix_model(), float_backend="reference")
    records = list(execu.iter_nodes({"x": X}))
    assert [r.backend for r in records] == ["reference", "kernel", "reference", "kernel"]
    np.testing.assert_array_equal(execu.last_env["y"], Y)


def test_out_of_order_nodes_and_constants(no_kernel_modules: None) -> None:
    nodes = [
        helper.make_node("Reshape", ["a", "shape"], ["y"], name="reshape"),
        helper.make_node("Add", ["x", "one"], ["a"], name="add"),
        helper.make_node(
            "Constant", [], ["shape"], name="c", value=numpy_helper.from_array(np.array([4]))
        ),
        helper.make_node("Constant", [], ["one"], name="c1", value_float=1.0),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    execu = ex.Executor(model)
    assert [n.name for n in execu.nodes][-1] == "reshape"
    np.testing.assert_array_equal(execu.run({"x": x})["y"], np.arange(1, 5, dtype=np.float32))
    backends = {r.name: r.backend for r in execu.iter_nodes({"x": x})}
    assert backends["c"] == backends["c1"] == "constant"


def test_if_subgraph_reads_outer_scope(no_kernel_modules: None) -> None:
    then_g = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["o"])],
        "then",
        [],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)],
    )
    else_g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["o"])],
        "else",
        [],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("If", ["c"], ["y"], name="if", then_branch=then_g, else_branch=else_g)
    ]
    model = _model(
        nodes,
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    x = np.array([1, -2, 3], np.float32)
    out = ex.Executor(model).run({"c": np.array(True), "x": x})
    np.testing.assert_array_equal(out["y"], -x)


def test_contrib_op_without_kernel_runs_on_onnxruntime(no_kernel_modules: None) -> None:
    assert lookup("com.microsoft", "QLinearGlobalAveragePool") is None
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(3, np.int8), "z"),
        numpy_helper.from_array(np.array(0.01, np.float32), "s2"),
        numpy_helper.from_array(np.array(-2, np.int8), "z2"),
    ]
    node = helper.make_node(
        "QLinearGlobalAveragePool",
        ["x", "s", "z", "s2", "z2"],
        ["y"],
        name="gap",
        domain="com.microsoft",
        channels_last=0,
    )
    model = _model(
        [node],
        [helper.make_tensor_value_info("x", TensorProto.INT8, [2, 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, None)],
        inits,
        opsets=(("", 13), ("com.microsoft", 1)),
    )
    x = np.random.default_rng(0).integers(-128, 128, (2, 4, 5, 5), dtype=np.int8)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    execu = ex.Executor(model, float_backend="reference")  # contrib ops go to onnxruntime anyway
    np.testing.assert_array_equal(execu.run({"x": x})["y"], want)
    assert [r.backend for r in execu.iter_nodes({"x": x})] == ["onnxruntime"]


def test_op_with_no_implementation_is_a_clear_error(no_kernel_modules: None) -> None:
    node = helper.make_node("Frobnicate", ["x"], ["y"], name="frob", domain="acme")
    model = _model(
        [node],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        opsets=(("", 13), ("acme", 1)),
    )
    with pytest.raises(ex.ExecutionError, match=r"node 'frob' \(acme::Frobnicate\): no emulator"):
        ex.Executor(model).run({"x": np.zeros(1, np.float32)})


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({}, r"input 'x' is missing \(expected float32 \[2,3\]\)"),
        ({"x": X.astype(np.float64)}, r"input 'x': dtype float64, expected float32"),
        ({"x": X.T.copy()}, r"input 'x': shape \[3, 2\], expected float32 \[2,3\]"),
        ({"x": X[None]}, r"input 'x': shape \[1, 2, 3\], expected"),
        ({"x": X, "z": X}, r"input 'z' is not an input of the model \(its inputs: x\)"),
    ],
)
def test_feed_errors_name_the_input(twice_kernel: list, feeds: dict, message: str) -> None:
    execu = ex.Executor(_mix_model())
    with pytest.raises(ex.FeedError, match=message) as info:
        execu.run(feeds)
    assert isinstance(info.value, SdkError)
    assert "\n" not in str(info.value)
    assert twice_kernel == []  # nothing ran


def test_symbolic_dims_accept_any_size(no_kernel_modules: None) -> None:
    model = _model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    execu = ex.Executor(model)
    for n in (1, 5):
        assert execu.run({"x": np.ones((n, 3), np.float32)})["y"].shape == (n, 3)


def _relu_model(op: str, domain: str, relu_attr: bool = False, meta=None) -> onnx.ModelProto:
    attrs = {"relu": 1} if relu_attr else {}
    return _model(
        [helper.make_node(op, ["x"], ["y"], domain=domain, **attrs)],
        [helper.make_tensor_value_info("x", TensorProto.INT8, [4])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [4])],
        metadata=meta,
    )


def test_target_resolution() -> None:
    plain = _relu_model("Relu", "")
    assert ex.resolve_target(plain) == "cpu"
    assert ex.resolve_target(plain, "systolic") == "systolic"
    assert ex.resolve_target(_relu_model("QLinearRelu", "")) == "systolic"
    assert ex.resolve_target(_relu_model("QLinearRelu", SYSTOLIC_DOMAIN)) == "systolic"
    assert ex.resolve_target(_relu_model("QLinearConv", "", relu_attr=True)) == "systolic"
    tagged = _relu_model("QLinearRelu", "", meta={ex.BACKEND_METADATA_KEY: "cpu"})
    assert ex.resolve_target(tagged) == "cpu"
    with pytest.raises(ex.TargetError, match="'gpu'"):
        ex.resolve_target(plain, "gpu")
    bad = _relu_model("Relu", "", meta={ex.BACKEND_METADATA_KEY: "tpu"})
    with pytest.raises(ex.TargetError, match="systolic_sdk.backend='tpu'"):
        ex.resolve_target(bad)


def test_missing_kernel_modules_is_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "runtime_emulator.kernels.all":
            raise ModuleNotFoundError(name=name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ImportError, match="kernels.all is missing"):
        ex.load_kernels()


# --- with the real kernels -------------------------------------------------------------


def _conv_nhwc_model(domain: str) -> tuple[onnx.ModelProto, dict]:
    """x NHWC -> QLinearConv_nhwc (3x3, pads 1, stride 1) -> QLinearRelu -> y NHWC."""
    rng = np.random.default_rng(7)
    w_oihw = rng.integers(-128, 128, (8, 3, 3, 3), dtype=np.int8)
    params = {
        "xs": np.array(0.02, np.float32),
        "zp": np.array(0, np.int8),
        "w": w_oihw.transpose(2, 3, 1, 0).copy(),  # HWIO
        "ws": np.array(0.003, np.float32),
        "ys": np.array(0.05, np.float32),
        "b": rng.integers(-3000, 3000, 8).astype(np.int32),
    }
    inits = [numpy_helper.from_array(v, k) for k, v in params.items()]
    nodes = [
        helper.make_node(
            "QLinearConv_nhwc",
            ["x", "xs", "zp", "w", "ws", "zp", "ys", "zp", "b"],
            ["c"],
            name="conv",
            domain=domain,
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("QLinearRelu", ["c"], ["y"], name="relu", domain=domain),
    ]
    opsets = (("", 13),) if domain == "" else (("", 13), (domain, 1))
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.INT8, [2, 6, 6, 3])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [2, 6, 6, 8])],
        inits,
        opsets=opsets,
    )
    params["w_oihw"] = w_oihw
    return model, params


def _ort_qlinearconv_nchw(x_nchw: np.ndarray, p: dict) -> np.ndarray:
    names = ["x", "xs", "zp", "w", "ws", "zp", "ys", "zp", "b"]
    inits = [
        numpy_helper.from_array(p[k], k if k != "w_oihw" else "w")
        for k in ("xs", "zp", "w_oihw", "ws", "ys", "b")
    ]
    model = _model(
        [helper.make_node("QLinearConv", names, ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        [helper.make_tensor_value_info("x", TensorProto.INT8, list(x_nchw.shape))],
        [helper.make_tensor_value_info("y", TensorProto.INT8, None)],
        inits,
    )
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x_nchw})[0]


@pytest.mark.parametrize("domain", ["", SYSTOLIC_DOMAIN])
def test_systolic_ops_in_both_domains_match_onnxruntime(kernels: None, domain: str) -> None:
    model, p = _conv_nhwc_model(domain)
    x = np.random.default_rng(3).integers(-128, 128, (2, 6, 6, 3), dtype=np.int8)
    execu = ex.Executor(model)
    assert execu.target == "systolic"
    traced = execu.run({"x": x}, trace=True)
    assert [r.backend for r in execu.iter_nodes({"x": x})] == ["kernel", "kernel"]
    # onnxruntime's QLinearConv (NCHW) agrees bit for bit with the datapath (spec 9).
    want_conv = _ort_qlinearconv_nchw(x.transpose(0, 3, 1, 2).copy(), p).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(traced["c"], want_conv)
    np.testing.assert_array_equal(traced["y"], np.maximum(want_conv, 0))
    assert traced["y"].dtype == np.int8


@pytest.fixture(scope="module")
def digits_int8(digits_ort_int8):
    """The shipped model quantized by onnxruntime: QOperator, QInt8/QInt8, symmetric."""
    return digits_ort_int8


def test_digits_int8_bit_exact_with_onnxruntime(kernels: None, digits_int8, digits_test) -> None:
    x = digits_test[0][:256]
    sess = ort.InferenceSession(str(digits_int8), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": x})[0]
    execu = ex.Executor(str(digits_int8))
    assert execu.target == "cpu"
    got = execu.run({"input": x})["logits"]
    backends = {r.op_type: r.backend for r in execu.iter_nodes({"input": x[:2]})}
    assert backends["QLinearConv"] == "kernel"
    assert backends["QLinearAdd"] == "kernel"
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    # The quantized model still classifies the real digits.
    labels = digits_test[1][:256]
    assert (got.argmax(1) == labels).mean() > 0.9


def test_layer_stats_of_a_run(kernels: None, digits_int8, digits_test) -> None:
    from runtime_emulator.array import ArrayConfig

    x = digits_test[0][:4]
    execu = ex.Executor(str(digits_int8), config=ArrayConfig(dim=8))
    outputs, stats = execu.layer_stats({"input": x})
    convs = [n for n in execu.nodes if n.op_type == "QLinearConv"]
    assert [s.name for s in stats] == [n.name for n in convs]
    first = stats[0]  # conv1: 1 -> 8 channels, 3x3, on 28x28 (same padding)
    assert first.input_shape == (4, 1, 28, 28)
    assert (first.I, first.K) == (4 * 28 * 28, 9)
    assert first.tiles == (4 * 28 * 28 // 8) * 1 * 2
    _, observed = execu.layer_stats({"input": x}, observed=True)
    for full, seen in zip(stats, observed, strict=True):
        assert seen.x_absmax <= full.x_absmax == 128
        assert seen.acc_bound <= full.acc_bound
    np.testing.assert_array_equal(outputs["logits"], execu.run({"input": x})["logits"])


def test_target_selects_the_meaning_of_qlinearadd(kernels: None) -> None:
    from runtime_emulator import datapath as dp

    scales = {"sa": 0.05, "sb": 0.07, "sc": 0.09}
    inits = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in scales.items()]
    inits.append(numpy_helper.from_array(np.array(0, np.int8), "z"))
    node = helper.make_node(
        "QLinearAdd",
        ["a", "sa", "z", "b", "sb", "z", "sc", "z"],
        ["y"],
        name="add",
        domain="com.microsoft",
    )
    model = _model(
        [node],
        [helper.make_tensor_value_info(n, TensorProto.INT8, [1000]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [1000])],
        inits,
        opsets=(("", 13), ("com.microsoft", 1)),
    )
    rng = np.random.default_rng(11)
    feeds = {n: rng.integers(-128, 128, 1000, dtype=np.int8) for n in ("a", "b")}
    assert ex.resolve_target(model) == "cpu"
    cpu = ex.Executor(model).run(feeds)["y"]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(cpu, sess.run(None, feeds)[0])
    systolic = ex.Executor(model, target="systolic").run(feeds)["y"]
    # Spec 4: each input rescaled by f32(s_in / s_c) and saturated to int8, then added.
    f32 = np.float32
    parts = [
        dp.sat8(dp.rne(np.multiply(feeds[n].astype(f32), f32(f32(scales[s]) / f32(0.09)))))
        for n, s in (("a", "sa"), ("b", "sb"))
    ]
    want = dp.sat8(parts[0].astype(np.int32) + parts[1].astype(np.int32))
    np.testing.assert_array_equal(systolic, want)
    assert np.count_nonzero(systolic != cpu) > 0  # the two meanings differ on these inputs


@pytest.mark.parametrize("storage_order", [0, 1])
def test_maxpool_indices_output_matches_onnxruntime(kernels: None, storage_order: int) -> None:
    """A MaxPool whose Indices output is a graph output returns it, as onnxruntime does."""
    node = helper.make_node(
        "MaxPool",
        ["x"],
        ["y", "idx"],
        kernel_shape=[2, 2],
        strides=[2, 2],
        pads=[0, 0, 1, 1],
        storage_order=storage_order,
    )
    model = _model(
        [node],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 5])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("idx", TensorProto.INT64, None),
        ],
    )
    x = np.random.default_rng(7).standard_normal((2, 3, 5, 5)).astype(np.float32)
    got = runtime_emulator.run(model, {"x": x})
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want_y, want_idx = sess.run(["y", "idx"], {"x": x})
    assert got["idx"].dtype == np.int64
    np.testing.assert_array_equal(got["idx"], want_idx)
    np.testing.assert_array_equal(got["y"], want_y)


def test_maxpool_omitted_indices_is_not_requested(kernels: None) -> None:
    """An omitted optional output (empty name) is not asked of the kernel."""
    node = helper.make_node("MaxPool", ["x"], ["y", ""], kernel_shape=[2, 2])
    assert ex._output_request(node) == {"num_outputs": 1, "wanted_outputs": [True, False]}
    both = helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2])
    assert ex._output_request(both)["num_outputs"] == 2


def _qlinearconv_model(w: np.ndarray, *, w_is_input: bool, nhwc: bool = False) -> onnx.ModelProto:
    """x -> QLinearConv (3x3, pads 1, relu) -> y, with ``w`` an initializer that may also
    be listed as a graph input (so a feed can replace it)."""
    params = {
        "xs": np.array(0.02, np.float32),
        "zp": np.array(0, np.int8),
        "w": w,
        "ws": np.array(0.003, np.float32),
        "ys": np.array(0.05, np.float32),
        "b": np.arange(-4, 4, dtype=np.int32) * 100,
    }
    op, domain = ("QLinearConv_nhwc", SYSTOLIC_DOMAIN) if nhwc else ("QLinearConv", "")
    node = helper.make_node(
        op,
        ["x", "xs", "zp", "w", "ws", "zp", "ys", "zp", "b"],
        ["y"],
        name="conv",
        domain=domain,
        kernel_shape=[3, 3],
        pads=[1, 1, 1, 1],
        relu=1,
    )
    x_shape = [2, 6, 6, 3] if nhwc else [2, 3, 6, 6]
    inputs = [helper.make_tensor_value_info("x", TensorProto.INT8, x_shape)]
    if w_is_input:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.INT8, list(w.shape)))
    inits = [numpy_helper.from_array(v, k) for k, v in params.items()]
    opsets = (("", 13), (SYSTOLIC_DOMAIN, 1)) if nhwc else (("", 13),)
    return _model(
        [node],
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.INT8, None)],
        inits,
        opsets=opsets,
    )


def _conv_reference(x_nchw: np.ndarray, w_oihw: np.ndarray) -> np.ndarray:
    from runtime_emulator import datapath as dp

    kw = {"strides": [1, 1], "pads": [1] * 4, "dilations": [1, 1], "group": 1}
    acc = dp.conv_accumulate_reference(x_nchw, w_oihw, **kw)
    acc = acc + (np.arange(-4, 4, dtype=np.int64) * 100).reshape(8, 1, 1)
    m = dp.requant_multiplier(np.float32(0.02), np.float32(0.003), np.float32(0.05))
    return dp.requantize(dp.wrap32(acc), m, np.int8, 0, relu=True)


@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "nhwc"])
def test_conv_weights_are_prepared_once_per_model(
    kernels: None, monkeypatch: pytest.MonkeyPatch, nhwc: bool
) -> None:
    from runtime_emulator.kernels import qlinear_conv

    monkeypatch.setenv("SYSTOLIC_EMULATOR_ENGINE", "numpy")  # the NumPy datapath's cache
    calls: list[int] = []
    real = qlinear_conv.prepare_conv_weights
    monkeypatch.setattr(qlinear_conv, "prepare_conv_weights", lambda w: calls.append(1) or real(w))
    rng = np.random.default_rng(11)
    w = rng.integers(-128, 128, (8, 3, 3, 3), dtype=np.int8)
    model = _qlinearconv_model(w.transpose(2, 3, 1, 0).copy() if nhwc else w, w_is_input=False,
                               nhwc=nhwc)  # fmt: skip
    execu = ex.Executor(model)
    assert all(not a.flags.writeable for a in execu.initializers.values())
    for seed in range(3):
        x = np.random.default_rng(seed).integers(-128, 128, (2, 3, 6, 6), dtype=np.int8)
        feed = x.transpose(0, 2, 3, 1).copy() if nhwc else x
        y = execu.run({"x": feed})["y"]
        np.testing.assert_array_equal(y.transpose(0, 3, 1, 2) if nhwc else y,
                                      _conv_reference(x, w))  # fmt: skip
    assert len(calls) == 1


def test_fed_weights_are_not_taken_from_the_cache(kernels: None) -> None:
    """An initializer that is also a graph input may be replaced by a feed: every run
    uses the weights it was given."""
    rng = np.random.default_rng(12)
    w0 = rng.integers(-128, 128, (8, 3, 3, 3), dtype=np.int8)
    execu = ex.Executor(_qlinearconv_model(w0, w_is_input=True))
    x = rng.integers(-128, 128, (2, 3, 6, 6), dtype=np.int8)
    np.testing.assert_array_equal(execu.run({"x": x})["y"], _conv_reference(x, w0))
    w1 = w0.copy()
    for _ in range(2):
        w1[0] = -w1[0]
        w1[3] = rng.integers(-128, 128, w1[3].shape)
        # The same array object, changed in place between runs.
        np.testing.assert_array_equal(execu.run({"x": x, "w": w1})["y"], _conv_reference(x, w1))
    np.testing.assert_array_equal(execu.run({"x": x})["y"], _conv_reference(x, w0))


def test_matmul_operand_is_prepared_once_per_model(
    kernels: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime_emulator import datapath as dp

    monkeypatch.setenv("SYSTOLIC_EMULATOR_ENGINE", "numpy")  # the NumPy datapath's cache
    calls: list[int] = []
    real = dp.prepare_matmul_operand
    monkeypatch.setattr(dp, "prepare_matmul_operand", lambda b: calls.append(1) or real(b))
    rng = np.random.default_rng(13)
    b = rng.integers(-128, 128, (64, 10), dtype=np.int8)
    params = {
        "as": np.array(0.02, np.float32),
        "zp": np.array(0, np.int8),
        "b": b,
        "bs": np.array(0.003, np.float32),
        "ys": np.array(0.001, np.float32),
    }
    node = helper.make_node(
        "QLinearMatMul", ["a", "as", "zp", "b", "bs", "zp", "ys", "zp"], ["y"], name="mm"
    )
    model = _model(
        [node],
        [helper.make_tensor_value_info("a", TensorProto.INT8, [3, 64])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, None)],
        [numpy_helper.from_array(v, k) for k, v in params.items()],
    )
    execu = ex.Executor(model)
    m = dp.requant_multiplier(np.float32(0.02), np.float32(0.003), np.float32(0.001))
    for seed in range(3):
        a = np.random.default_rng(seed).integers(-128, 128, (3, 64), dtype=np.int8)
        want = dp.requantize(dp.wrap32(dp.int_matmul_reference(a, b)), m, np.int8)
        np.testing.assert_array_equal(execu.run({"a": a})["y"], want)
    assert len(calls) == 1
