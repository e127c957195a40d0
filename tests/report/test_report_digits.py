"""The report's numbers on the shipped model, each recomputed independently."""

from __future__ import annotations

import hashlib
import math
from datetime import datetime

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import runtime_emulator
from runtime_emulator import datapath as dp
from runtime_emulator.array import ArrayConfig
from runtime_emulator.executor import Executor
from tests.report.conftest import SAMPLES


def fp32_values(model_path, names, feeds) -> dict[str, np.ndarray]:
    """Intermediate tensors of the fp32 model, fetched as extra onnxruntime outputs
    (unoptimized graph, as the report runs it: fused kernels round differently)."""
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    inputs = {i.name for i in model.graph.input}
    present = {o.name for o in model.graph.output}
    for n in names:
        if n not in present and n not in inputs:
            model.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
            present.add(n)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no fusions
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    out.update({k: v for k, v in feeds.items() if k in names})
    return out


def initializers(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def by_name(report, name: str) -> dict:
    return next(layer for layer in report["layers"] if layer["name"] == name)


@pytest.mark.parametrize(
    "layer, fp32_name, relu",
    [
        ("/conv1/Conv", "/Relu_output_0", False),
        ("/res_conv/Conv", "/Relu_2_output_0", False),
        ("/Add", "/Add_output_0", False),
        # Gemm as a 1x1 QLinearConv between two Reshapes, ReLU fused: the fp32 Gemm output
        # with the ReLU applied, reshaped to [N, 32, 1, 1].
        ("/fc1/Gemm", "/fc1/Gemm_output_0", True),
        ("/fc2/Gemm", "logits", False),
    ],
)
def test_layer_sqnr_recomputed_by_hand(
    digits_paths, digits_report, digits_feeds, layer, fp32_name, relu
) -> None:
    q = onnx.load(str(digits_paths["quant"]))
    node = next(n for n in q.graph.node if n.name == layer)
    traced = runtime_emulator.run(q, digits_feeds, trace=True)
    y = traced[node.output[0]]
    inits = initializers(digits_paths["quant"])
    scale = np.float32(inits[node.input[6]])
    zp = inits[node.input[7]].astype(np.float32)
    deq = (y.astype(np.float32) - zp) * scale
    ref = fp32_values(digits_paths["fp32"], [fp32_name], digits_feeds)[fp32_name]
    if relu:
        ref = np.maximum(ref, 0)
    ref = ref.reshape(deq.shape).astype(np.float64)
    want = 10 * math.log10(np.sum(ref**2) / np.sum((ref - deq.astype(np.float64)) ** 2))
    row = by_name(digits_report, layer)
    assert row["fp32_tensor"] == fp32_name and row["tensor"] == node.output[0]
    assert row["sqnr_db"] == pytest.approx(want, rel=1e-6)
    assert 20.0 < want < 60.0


def test_every_layer_is_compared(digits_report) -> None:
    layers = digits_report["layers"]
    ops = [layer["op"] for layer in layers]
    assert ops.count("QLinearConv") == 6 and ops.count("QLinearAdd") == 1
    assert not digits_report["unmapped"]
    assert all(isinstance(layer["sqnr_db"], float) for layer in layers)
    assert [layer["index"] for layer in layers] == sorted(layer["index"] for layer in layers)


def test_histograms_and_clipping_recomputed(digits_paths, digits_report, digits_feeds) -> None:
    acts = digits_report["activations"]
    # One per quantization point: the input's QuantizeLinear and every layer.
    assert len(acts) == 1 + len(digits_report["layers"])
    names = [a["fp32_tensor"] for a in acts]
    values = fp32_values(digits_paths["fp32"], names, digits_feeds)
    inits = initializers(digits_paths["quant"])
    for a in acts:
        v = values[a["fp32_tensor"]].astype(np.float32)
        if a["relu"]:
            v = np.maximum(v, 0)
        s = float(a["scale"])
        assert a["clip"] == pytest.approx([s * -128, s * 127], rel=1e-12)
        assert a["dtype"] == "int8" and a["zero_point"] == 0
        assert s in {float(np.float32(x)) for x in inits.values() if x.dtype == np.float32}
        # QuantizeLinear's rule: round half to even of the float32 quotient, then saturate.
        r = np.rint(v / np.float32(s))
        assert a["clipped_below"] == int(np.sum(r < -128)), a["tensor"]
        assert a["clipped_above"] == int(np.sum(r > 127)), a["tensor"]
        assert a["count"] == v.size == sum(a["counts"])
        assert a["clipped_fraction"] == pytest.approx(
            (a["clipped_below"] + a["clipped_above"]) / v.size
        )
        lo, hi = a["edges"]
        assert lo == pytest.approx(min(float(v.min()), s * -128))
        assert hi == pytest.approx(max(float(v.max()), s * 127))
        assert len(a["counts"]) == 64
        want = np.histogram(v.astype(np.float64), bins=64, range=(lo, hi))[0]
        assert a["counts"] == want.tolist()


def test_input_clipping_is_seen(digits_report, digits_feeds) -> None:
    """Test digits brighter than any calibration digit saturate the input's range."""
    a = digits_report["activations"][0]
    assert a["tensor"] == "input_quantized" and a["fp32_tensor"] == "input"
    x = digits_feeds["input"]
    r = np.rint(x / np.float32(a["scale"]))
    assert a["clipped_above"] == int(np.sum(r > 127))


def test_accumulators_recomputed_with_int64(digits_paths, digits_report, digits_feeds) -> None:
    q = onnx.load(str(digits_paths["quant"]))
    inits = initializers(digits_paths["quant"])
    traced = runtime_emulator.run(q, digits_feeds, trace=True)
    env = {**inits, **traced}
    convs = [n for n in q.graph.node if n.op_type == "QLinearConv"]
    for node in convs:
        x, w, b = env[node.input[0]], env[node.input[3]], env[node.input[8]]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        acc = dp.conv_accumulate_reference(
            x.astype(np.int64),
            w.astype(np.int64),
            strides=list(attrs.get("strides", [1, 1])),
            pads=list(attrs.get("pads", [0, 0, 0, 0])),
            dilations=list(attrs.get("dilations", [1, 1])),
            group=int(attrs.get("group", 1)),
        ) + b.astype(np.int64).reshape(1, -1, 1, 1)
        # These are the accumulators the hardware scales: they reproduce the output.
        m = dp.requant_multiplier(env[node.input[1]], env[node.input[4]], env[node.input[6]])
        y = dp.requantize(acc, m, relu=bool(attrs.get("relu", 0)))
        np.testing.assert_array_equal(y, env[node.output[0]], err_msg=node.name)
        a = by_name(digits_report, node.name)["accumulator"]
        assert (a["min"], a["max"]) == (int(acc.min()), int(acc.max())), node.name
        assert a["absmax"] == int(np.abs(acc).max())
        # Bound: |bias| + max|x| * sum|w| per output channel, with |x| <= 128 (int8).
        sums = np.abs(w.astype(np.int64)).reshape(w.shape[0], -1).sum(axis=1)
        assert a["bound"] == int(np.max(np.abs(b.astype(np.int64)) + 128 * sums))
        xmax = int(np.abs(x.astype(np.int64)).max())
        assert a["x_absmax_observed"] == xmax
        assert a["bound_observed_input"] == int(np.max(np.abs(b.astype(np.int64)) + xmax * sums))
        assert a["absmax"] <= a["bound_observed_input"] <= a["bound"]
        assert a["observed_flags"] == [] and a["bound_flags"] == []


def test_cycles_equal_the_array_model(digits_paths, digits_report, digits_feeds) -> None:
    q = onnx.load(str(digits_paths["quant"]))
    _, stats = Executor(q, config=ArrayConfig(dim=16)).layer_stats(
        {"input": digits_feeds["input"][:1]}
    )
    rows = [layer for layer in digits_report["layers"] if layer["array"]]
    assert [r["name"] for r in rows] == [s.name for s in stats]
    for r, s in zip(rows, stats, strict=True):
        a = r["array"]
        assert (a["I"], a["J"], a["K"], a["groups"], a["tiles"]) == (
            s.I,
            s.J,
            s.K,
            s.groups,
            s.tiles,
        )
        assert a["est_cycles"] == s.est_cycles and a["ideal_cycles"] == s.ideal_cycles
        assert a["utilization"] == s.utilization
    # By hand for conv1: 28x28 outputs, 8 channels, 1x3x3 taps on a 16x16 array.
    conv1 = by_name(digits_report, "/conv1/Conv")["array"]
    assert (conv1["I"], conv1["J"], conv1["K"]) == (784, 8, 9)
    assert conv1["tiles"] == math.ceil(784 / 16) and conv1["est_cycles"] == 49 * 16
    assert conv1["ideal_cycles"] == 784 * 8 * 9 / 256
    t = digits_report["totals"]
    assert t["est_cycles"] == sum(s.est_cycles for s in stats)
    assert t["utilization"] == pytest.approx(sum(s.ideal_cycles for s in stats) / t["est_cycles"])


def test_bit_exact_and_agreement_match_validate(digits_paths, digits_report, digits_feeds) -> None:
    from runtime_emulator.validate import validate

    ex = digits_report["exactness"]
    assert ex["status"] == "ok" and ex["bit_exact"] is True and ex["first_divergence"] is None
    assert ex["tensors_compared"] >= 10 and ex["tensors_exact"] == ex["tensors_compared"]
    (out,) = digits_report["outputs"]
    assert out["name"] == "logits" and out["bit_exact"] is True and out["n_diff"] == 0
    rep = validate(
        onnx.load(str(digits_paths["quant"])), onnx.load(str(digits_paths["fp32"])), [digits_feeds]
    )
    assert out["top1_agreement"] == rep.outputs[0].top1_agreement
    assert out["sqnr_db"] == pytest.approx(rep.outputs[0].sqnr_db, rel=1e-9)


def test_metadata(digits_paths, digits_report) -> None:
    from systolic_sdk import __version__

    m = digits_report["meta"]
    assert m["model_sha256"] == hashlib.sha256(digits_paths["quant"].read_bytes()).hexdigest()
    assert m["fp32_sha256"] == hashlib.sha256(digits_paths["fp32"].read_bytes()).hexdigest()
    assert m["samples"] == SAMPLES and m["sdk_version"] == __version__
    assert m["target"] == "systolic" and m["dim"] == 16 and m["fp32_reference"] == "fp32 model"
    assert datetime.fromisoformat(m["date"]).tzinfo is not None


def test_divergence_is_reported(digits_paths, monkeypatch) -> None:
    """A lowering whose first relu Clip is wrong: not bit-exact, first divergence named."""
    import runtime_emulator.validate as v
    from systolic_sdk.report import build_report

    def corrupt(model: onnx.ModelProto) -> onnx.ModelProto:
        low = v.get_backend_lowering(model) if hasattr(v, "get_backend_lowering") else None
        low = low or original(model)
        clip = next(n for n in low.graph.node if n.op_type == "Clip")
        for t in low.graph.initializer:
            if t.name == clip.input[1]:
                t.CopyFrom(numpy_helper.from_array(np.array(1, np.int8), t.name))
        return low

    original = v._default_lowering
    monkeypatch.setattr(v, "_default_lowering", corrupt)
    p = digits_paths
    rep = build_report(p["quant"], p["fp32"], p["data"], max_samples=8, progress=False)
    ex = rep["exactness"]
    assert ex["bit_exact"] is False and ex["explained"] is False
    first = ex["first_divergence"]
    assert first["node"] == "/conv1/Conv" and (first["emulator"], first["reference"]) == (0, 1)
    assert rep["outputs"][0]["bit_exact"] is False


def equalized_digits(out):
    """The shipped model equalized across layers (as the Systolic backend's fp32
    preparation does), then quantized through the core."""
    from systolic_sdk.transforms.equalization import equalize
    from tests.report.conftest import DIGITS, quantize_core

    eq = out.with_name("equalized_fp32.onnx")
    onnx.save(equalize(onnx.load(str(DIGITS / "model.onnx"))), str(eq))
    calib = np.load(DIGITS / "calib.npz")["input"][:64]
    return quantize_core(eq, calib, out)


def test_equalized_model_uses_the_equalized_reference(digits_paths, tmp_path) -> None:
    """With cross-layer equalization the tensors between equalized layers are scaled per
    channel: the report compares them with the equalized fp32 model."""
    from systolic_sdk.report import build_report
    from systolic_sdk.report.reference import EQUALIZED, PLAIN

    q = equalized_digits(tmp_path / "eq.onnx")
    p = digits_paths
    rep = build_report(q, p["fp32"], p["data"], max_samples=16, progress=False)
    m = rep["meta"]
    assert m["fp32_reference"] == EQUALIZED
    assert m["weight_sqnr_db"][EQUALIZED] > m["weight_sqnr_db"][PLAIN] + 10
    assert all(layer["sqnr_db"] > 20 for layer in rep["layers"])
    # The ReLU6 of dw_conv became a fused ReLU plus an int8 Min to per-channel bounds: the
    # layer's result is the Min's output, compared with the fp32 Clip output.
    dw = next(layer for layer in rep["layers"] if layer["name"] == "/dw_conv/Conv")
    assert dw["clamped_by"] == ["Min"] and dw["fp32_tensor"] == "/relu6/Clip_output_0"
    assert dw["output"] == "/relu6/Clip_output_0_relu_quantized"


def test_cpu_backend_qoperator(digits_paths, tmp_path) -> None:
    """A CPU-target QOperator graph (uint8 activations, per-channel weights, QGemm): ReLUs
    folded into the uint8 ranges are followed on the fp32 side; exactness is checked
    against onnxruntime running the graph itself."""
    from systolic_sdk.quantization.types import QuantType
    from systolic_sdk.report import build_report
    from tests.report.conftest import quantize_digits

    q = quantize_digits(
        tmp_path / "cpu.onnx", backend="cpu", per_channel=True,
        activation_type=QuantType.QUInt8, symmetric_activations=False,
    )  # fmt: skip
    p = digits_paths
    rep = build_report(q, p["fp32"], p["data"], max_samples=16, progress=False)
    assert rep["meta"]["target"] == "cpu"
    ex = rep["exactness"]
    assert ex["bit_exact"] is True and "quantized graph itself" in ex["reference"]
    layers = {layer["name"]: layer for layer in rep["layers"]}
    assert layers["/conv1/Conv"]["fp32_tensor"] == "/Relu_output_0"
    assert layers["/fc1/Gemm"]["op"] == "QGemm"
    assert layers["/fc1/Gemm"]["fp32_tensor"] == "/Relu_3_output_0"
    assert all(layer["sqnr_db"] > 25 for layer in rep["layers"])
    assert all(a["dtype"] == "uint8" for a in rep["activations"])
    assert sum(1 for layer in rep["layers"] if layer["array"]) == 4  # the convs, not QGemm


def test_qdq_graph_reports_the_float_ops_it_quantizes(digits_paths, tmp_path) -> None:
    """A QDQ graph has no quantized compute op: each QuantizeLinear after a float op is
    that op's layer (its SQNR is the error accumulated up to it); nothing runs on the
    array."""
    from systolic_sdk import quantize_static
    from systolic_sdk.calibration.reader import ArrayReader
    from systolic_sdk.quantization.types import QuantFormat
    from systolic_sdk.report import build_report
    from tests.report.conftest import DIGITS

    q = tmp_path / "qdq.onnx"
    calib = np.load(DIGITS / "calib.npz")["input"][:64]
    quantize_static(
        str(digits_paths["fp32"]), str(q), ArrayReader({"input": calib}, batch_size=32),
        quant_format=QuantFormat.QDQ,
    )  # fmt: skip
    p = digits_paths
    rep = build_report(q, p["fp32"], p["data"], max_samples=16, progress=False)
    ops = [layer["op"] for layer in rep["layers"]]
    assert ops.count("Conv (QDQ)") == 4 and ops.count("Gemm (QDQ)") == 2
    assert all(layer["sqnr_db"] > 25 and layer["array"] is None for layer in rep["layers"])
    assert rep["totals"]["array_layers"] == 0 and rep["exactness"]["bit_exact"] is True
    assert len(rep["activations"]) == len(rep["layers"]) + 1  # and the input


def test_nhwc_layers_compared_in_their_layout(digits_paths, digits_feeds, tmp_path) -> None:
    """QLinearConv_nhwc (one with a fused MaxPool) and NHWC QLinearAdd: the fp32 NCHW
    values are transposed; SQNR and accumulators recomputed by hand for /res_conv."""
    from systolic_sdk.report import build_report
    from tests.report.conftest import quantize_digits

    q = quantize_digits(tmp_path / "nhwc.onnx", extra_options={"SystolicLayout": "nhwc"})
    p = digits_paths
    feeds = {"input": digits_feeds["input"][:16]}
    rep = build_report(q, p["fp32"], p["data"], max_samples=16, progress=False)
    layers = {layer["name"]: layer for layer in rep["layers"]}
    assert layers["/conv1/Conv"]["op"] == "QLinearConv_nhwc"
    assert layers["/conv1/Conv"]["fp32_tensor"] == "/pool1/MaxPool_output_0"  # pool fused
    assert layers["/Add"]["layout"] == "NHWC"
    assert all(layer["sqnr_db"] > 20 for layer in rep["layers"])
    assert rep["exactness"]["bit_exact"] is True

    model = onnx.load(str(q))
    node = next(n for n in model.graph.node if n.name == "/res_conv/Conv")
    env = {**initializers(q), **runtime_emulator.run(model, feeds, trace=True)}
    y = env[node.output[0]]  # NHWC
    deq = (y.astype(np.float32) - np.float32(env[node.input[7]])) * np.float32(env[node.input[6]])
    ref = fp32_values(p["fp32"], ["/Relu_2_output_0"], feeds)["/Relu_2_output_0"]
    ref = ref.transpose(0, 2, 3, 1).astype(np.float64)
    want = 10 * math.log10(np.sum(ref**2) / np.sum((ref - deq) ** 2))
    assert layers["/res_conv/Conv"]["sqnr_db"] == pytest.approx(want, rel=1e-6)
    x = env[node.input[0]].astype(np.int64).transpose(0, 3, 1, 2)  # NHWC -> NCHW
    w = env[node.input[3]].astype(np.int64).transpose(3, 2, 0, 1)  # HWIO -> OIHW
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    acc = dp.conv_accumulate_reference(
        x, w, strides=list(attrs["strides"]), pads=list(attrs["pads"]), dilations=[1, 1], group=1
    ) + env[node.input[8]].astype(np.int64).reshape(1, -1, 1, 1)
    a = layers["/res_conv/Conv"]["accumulator"]
    assert (a["min"], a["max"]) == (int(acc.min()), int(acc.max()))
