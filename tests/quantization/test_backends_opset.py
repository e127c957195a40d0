"""The backend registry, a third backend registered without touching the core, and
opset upgrade / refusal."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from qtest_graphs import conv, feeds_for
from qtest_graphs import quantize_minmax as quantize
from qtest_helpers import make_model, op_count, run

from systolic_sdk.backends import (
    Backend,
    available_backends,
    get_backend,
    register_backend,
    unregister_backend,
)
from systolic_sdk.backends.cpu_ort import run_onnxruntime
from systolic_sdk.errors import QuantizationError, SdkError
from systolic_sdk.quantization import (
    OutputForm,
    QuantConfig,
    QuantType,
    prepare_model,
    tensors_to_calibrate,
)
from systolic_sdk.quantization.rules.matmul import MatMulRule

QOP, QDQ, INT = OutputForm.QOPERATOR, OutputForm.QDQ, OutputForm.INTEGER


def conv_pool_gemm(opset: int):
    """Conv -> Relu -> MaxPool -> Flatten -> Gemm, valid at ``opset``."""
    rng = np.random.default_rng(5)
    inits: dict = {
        "fc_w": (rng.standard_normal((3, 16)) * 0.3).astype(np.float32),
        "fc_b": (rng.standard_normal(3) * 0.1).astype(np.float32),
    }
    nodes = [
        conv("c1", "x", "a", 2, 4, inits),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    return make_model(nodes, [("x", [2, 2, 4, 4])], ["y"], inits, opset=opset)


def test_registry():
    assert "cpu" in available_backends()
    cpu = get_backend("cpu")
    assert cpu.name == "cpu" and OutputForm.QDQ in cpu.forms
    with pytest.raises(SdkError, match="unknown backend 'gpu'.*available: .*cpu"):
        get_backend("gpu")
    with pytest.raises(SdkError, match="already registered"):
        register_backend(Backend(name="cpu", rules={}))


def test_third_backend_only_matmul_qdq():
    """A backend that quantizes MatMul to QDQ and nothing else, defined as data only."""
    backend = Backend(
        name="matmul_only",
        rules={"MatMul": MatMulRule()},
        forms=frozenset({OutputForm.QDQ}),
        activation_types=frozenset({QuantType.QInt8}),
        weight_types=frozenset({QuantType.QInt8}),
        per_channel=False,
        dynamic=False,
        runner=run_onnxruntime,
    )
    register_backend(backend)
    try:
        inits: dict = {"w": np.full((5, 3), 0.25, np.float32)}
        nodes = [
            conv("c1", "x", "a", 2, 4, inits),
            helper.make_node("Flatten", ["a"], ["f"], name="flat"),
            helper.make_node("Relu", ["f"], ["r"], name="relu"),
            helper.make_node("Slice", ["r", "s0", "s1", "s2"], ["sl"], name="slice"),
            helper.make_node("MatMul", ["sl", "w"], ["y"], name="mm"),
        ]
        inits.update(
            s0=np.array([0], np.int64), s1=np.array([5], np.int64), s2=np.array([1], np.int64)
        )
        model = make_model(nodes, [("x", [2, 2, 3, 3])], ["y"], inits)
        cfg = QuantConfig(backend="matmul_only", form=QDQ)
        assert tensors_to_calibrate(model, cfg) == ["sl", "y"]
        with pytest.warns(UserWarning, match="per-tensor"):
            q = quantize(model, backend="matmul_only", form=QDQ, per_channel=True)
        assert op_count(q, "Conv") == 1  # untouched: no rule for it
        assert op_count(q, "QuantizeLinear") == 2  # MatMul input and output
        assert op_count(q, "DequantizeLinear") == 3  # input, weight, output
        props = {p.key: p.value for p in q.metadata_props}
        assert props["systolic_sdk.backend"] == "matmul_only"
        with pytest.raises(QuantizationError, match="qoperator"):
            quantize(model, backend="matmul_only", form=QOP)
        feeds = feeds_for(model)
        got = get_backend("matmul_only").run(q, feeds)[0]
        np.testing.assert_allclose(got, run(model, feeds)[0], atol=0.05)
    finally:
        unregister_backend("matmul_only")
    assert "matmul_only" not in available_backends()


def test_backend_passes_and_replaced_rules():
    """pre/post passes run in order; a backend can drop a rule from the cpu mapping."""
    import dataclasses

    seen: list[str] = []

    def pre(m: onnx.ModelProto) -> onnx.ModelProto:
        seen.append("pre:" + ",".join(n.op_type for n in m.graph.node))
        return m

    def post(m: onnx.ModelProto, config) -> onnx.ModelProto:
        assert config.backend == "cpu_no_gemm"
        seen.append("post:" + str(op_count(m, "QLinearConv")))
        return m

    def widen_input(m: onnx.ModelProto, ranges: dict) -> dict:
        seen.append("ranges:" + str(len(m.graph.node)))
        return {**ranges, "x": (-8.0, 8.0)}

    cpu = get_backend("cpu")
    rules = {k: v for k, v in cpu.rules.items() if k != "Gemm"}
    register_backend(
        dataclasses.replace(
            cpu,
            name="cpu_no_gemm",
            rules=rules,
            pre_passes=[pre],
            post_passes=[post],
            range_passes=[widen_input],
        )
    )
    try:
        q = quantize(conv_pool_gemm(13), backend="cpu_no_gemm", form=QOP)
        assert op_count(q, "Gemm") == 1 and op_count(q, "QLinearConv") == 1
        # tensors_to_calibrate runs the pre pass too; the post pass runs once, last
        assert seen[-3].startswith("pre:Conv") and seen[-2] == "ranges:5"
        assert seen[-1] == "post:1"
        x_scale = onnx.numpy_helper.to_array(
            next(t for t in q.graph.initializer if t.name == "x_scale")
        )
        assert x_scale == np.float32(16) / np.float32(255)
        assert sum(s.startswith("post") for s in seen) == 1
    finally:
        unregister_backend("cpu_no_gemm")


def test_backend_parameter_hooks():
    """A backend's own scale formula and weight rounding are used by every rule."""
    import dataclasses

    from systolic_sdk.quantization.params import QuantParams, quantize_weight

    def pow2_activation(rmin, rmax, qtype, symmetric, reduce_range):
        m = max(abs(rmin), abs(rmax), 1e-8)
        return QuantParams(np.float32(2.0 ** np.ceil(np.log2(m / 127))), np.int8(0), qtype)

    calls: list[str] = []

    def counting_quantize_weight(w, params):
        calls.append(str(w.shape))
        return quantize_weight(w, params)

    cpu = get_backend("cpu")
    backend = dataclasses.replace(
        cpu,
        name="pow2",
        activation_types=frozenset({QuantType.QInt8}),
        activation_params=pow2_activation,
        quantize_weight=counting_quantize_weight,
    )
    register_backend(backend)
    try:
        q = quantize(conv_pool_gemm(13), backend="pow2", form=QOP)
        act_scales = [
            float(onnx.numpy_helper.to_array(t))
            for t in q.graph.initializer
            if t.name in {"x_scale", "a_scale", "y_scale"}
        ]
        assert len(act_scales) >= 2
        assert all(np.log2(s) == np.round(np.log2(s)) for s in act_scales)
        assert calls == ["(4, 2, 3, 3)", "(3, 16)"]
    finally:
        unregister_backend("pow2")


@pytest.mark.parametrize("form", [QOP, QDQ, INT])
@pytest.mark.parametrize("per_channel", [False, True])
def test_opset9_model_is_upgraded(form, per_channel):
    model = conv_pool_gemm(9)
    q = quantize(model, form=form, per_channel=per_channel, static=form != INT)
    assert next(o.version for o in q.opset_import if o.domain == "") == 13
    onnx.checker.check_model(q, full_check=True)
    feeds = feeds_for(model)
    np.testing.assert_allclose(run(q, feeds)[0], run(model, feeds)[0], atol=0.1)


def test_opset11_per_channel_qdq_upgrades_but_qoperator_keeps_opset():
    model = conv_pool_gemm(11)
    assert (
        prepare_model(model, QuantConfig(form=QDQ, per_channel=True)).opset_import[0].version == 13
    )
    assert prepare_model(model, QuantConfig(form=QDQ)).opset_import[0].version == 11
    q = quantize(model, form=QOP, per_channel=True)
    assert next(o.version for o in q.opset_import if o.domain == "") == 11
    # MaxPool on integers needs opset 12: at 11 it stays float between a DQ and a Q
    assert op_count(q, "QLinearConv") == 1 and op_count(q, "QGemm") == 1
    pool = next(n for n in q.graph.node if n.op_type == "MaxPool")
    assert pool.input[0] == "r"
    # in QDQ the MaxPool runs on floats between DQ and Q: any opset will do
    q = quantize(model, form=QDQ)
    pool = next(n for n in q.graph.node if n.op_type == "MaxPool")
    producer = {o: n for n in q.graph.node for o in n.output}[pool.input[0]]
    assert producer.op_type == "DequantizeLinear"


def test_refused_when_conversion_fails(monkeypatch):
    from systolic_sdk.graph import opset

    def fail(model, target):
        raise RuntimeError("No adapter for op Foo\nmore detail")

    monkeypatch.setattr(opset.version_converter, "convert_version", fail)
    with pytest.raises(SdkError, match="model has opset 9; upgrading it to opset 13.*No adapter"):
        prepare_model(conv_pool_gemm(9), QuantConfig())
    with pytest.raises(SdkError, match="model has opset 11.*per-channel QDQ needs opset 13"):
        prepare_model(conv_pool_gemm(11), QuantConfig(form=QDQ, per_channel=True))


def test_float_prep_hooks_of_three_and_four_arguments():
    """``float_prep`` receives the quantizer's calibration as a fourth argument when it
    takes one; a hook written for three arguments is still called with three."""
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [("x", [2, 5])],
        ["y"],
        {"w": np.full((5, 3), 0.25, np.float32)},
    )
    cfg = QuantConfig(backend="prep", form=QDQ)
    seen: list = []

    def calibrate(m, r, names):
        return {}

    three = Backend(name="prep", rules={}, float_prep=lambda m, r, c: seen.append(3) or m)
    assert three.prepare_float(model, None, cfg, calibrate) is model

    def four(m, r, c, calib):
        seen.append(calib)
        return m

    assert (
        Backend(name="prep", rules={}, float_prep=four).prepare_float(model, None, cfg, calibrate)
        is model
    )
    variadic = Backend(name="prep", rules={}, float_prep=lambda *a: seen.append(len(a)) or a[0])
    variadic.prepare_float(model, None, cfg, calibrate)
    assert seen == [3, calibrate, 4]
