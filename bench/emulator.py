"""Emulator speed against onnxruntime and onnx.reference, in one run.

Networks:

- an int8 ResNet-18 (standard topology, 224x224, random weights with He init: a speed
  benchmark, not an accuracy one), at batch 1 and 8;
- the shipped model (models/digits_cnn) on its real test images, quantized by
  onnxruntime (QOperator, QInt8 weights and activations, symmetric activations).

Contestants for ResNet-18:

- ``emulator``: ``runtime_emulator.Executor`` on the Systolic-style int8 graph
  (QuantizeLinear, QLinearConv with fused ``relu``, com.microsoft QLinearAdd with
  ``relu``, int8 MaxPool, DQ -> GlobalAveragePool -> Q, QLinearMatMul, int8, zero
  point 0, per-tensor scales), target "systolic", with its default engine (conv layers
  on onnxruntime's integer kernels where the engine's bit-exactness self-check passed,
  ``runtime_emulator.ort_engine``), and again with the NumPy datapath only; both must
  give the same bits (checked every run);
- ``ort-fastest``: onnxruntime on its own fastest int8 form of the same fp32 network
  (``quantize_static`` QDQ, QUInt8 activations, QInt8 weights, per tensor);
- ``ort-same``: onnxruntime on the same int8 graph in standard form (the fused ReLUs
  as int8 Relu nodes, since stock onnxruntime rejects the ``relu`` attribute);
- ``reference``: ``onnx.reference.ReferenceEvaluator`` on that same standard-form graph
  (com.microsoft QLinearAdd given to it as a small NumPy op with onnxruntime's rule).

Timing: ``time.perf_counter``, after one warm-up; the emulator and both onnxruntime
sessions run interleaved (one call each in turn) so they share the machine's load, and
the median and the minimum are printed, with the median CPU time of the process (all
threads) and the load average; onnx.reference is timed alone (median).
onnxruntime with ``intra_op_num_threads=2``. The emulator's output on the standard
graph with target "cpu" is also checked bit for bit against ``ort-same``.

Run: ``python bench/emulator.py`` (about three minutes on 2 cores; ``--quick`` for
fewer repeats). Figures go in bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from runtime_emulator import Executor, ort_engine
from runtime_emulator import datapath as dp

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "models" / "digits_cnn"
OPSET = 17
#: The int8 graphs use opset 19: onnx.reference implements Q/DQ from opset 19 only.
OPSET_INT8 = 19
F32 = np.float32


# --- fp32 ResNet-18 ---------------------------------------------------------------------


class _Builder:
    """Accumulates nodes and initializers of an fp32 graph."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, base: str, arr: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int, relu: bool) -> str:
        w = (self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(F32)
        b = (self.rng.standard_normal(cout) * 0.05).astype(F32)
        y = self.name("conv")
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self.const("w", w), self.const("b", b)],
                [y],
                name=y,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[k // 2] * 4,
            )
        )
        if relu:
            r = self.name("relu")
            self.nodes.append(helper.make_node("Relu", [y], [r], name=r))
            return r
        return y

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        y = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [y], name=y, **attrs))
        return y


def resnet18_fp32(seed: int = 0) -> onnx.ModelProto:
    """ResNet-18 (BatchNorm folded into the conv biases), input [N,3,224,224] -> [N,1000]."""
    b = _Builder(seed)
    x = b.conv("input", 3, 64, 7, 2, relu=True)
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            y = b.conv(x, cin, cout, 3, s, relu=True)
            y = b.conv(y, cout, cout, 3, 1, relu=False)
            short = b.conv(x, cin, cout, 1, s, relu=False) if (s != 1 or cin != cout) else x
            x = b.op("Relu", [b.op("Add", [y, short])])
            cin = cout
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    w = (b.rng.standard_normal((512, 1000)) * np.sqrt(1.0 / 512)).astype(F32)
    logits = b.op("MatMul", [x, b.const("fc_w", w)])
    b.nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        b.nodes,
        "resnet18",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        b.inits,
    )
    del logits
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# --- the Systolic-style int8 graph ------------------------------------------------------


def activation_ranges(model: onnx.ModelProto, sample: np.ndarray) -> dict[str, float]:
    """max |value| of every node output on ``sample`` (fp32, onnxruntime)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    for node in m.graph.node:
        m.graph.output.append(helper.make_value_info(node.output[0], onnx.TypeProto()))
    m.graph.output.append(helper.make_value_info("input", onnx.TypeProto()))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(None, {"input": sample})
    return {n: float(np.abs(v).max()) for n, v in zip(names, values, strict=True)}


def _scale(absmax: float) -> np.ndarray:
    return np.array(absmax / 127 if absmax > 1e-8 else 1.0, F32)


def systolic_int8(model: onnx.ModelProto, sample: np.ndarray, *, fused: bool) -> onnx.ModelProto:
    """Quantize ResNet-18 the Systolic way (int8, zero point 0, per-tensor).

    ``fused``: ReLUs fused into QLinearConv/QLinearAdd (``relu`` attribute, the graph the
    accelerator runs); otherwise standalone int8 Relu nodes (standard ONNX, the same
    values), which stock onnxruntime and onnx.reference accept.
    """
    ranges = activation_ranges(model, sample)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    zp = "zp"
    new_inits.append(numpy_helper.from_array(np.array(0, np.int8), zp))
    scale_of: dict[str, str] = {}
    values: dict[str, np.ndarray] = {}

    def add_init(name: str, arr: np.ndarray) -> str:
        new_inits.append(numpy_helper.from_array(arr, name))
        values[name] = arr
        return name

    def act_scale(tensor: str) -> str:
        if tensor not in scale_of:
            scale_of[tensor] = add_init(f"{tensor}_scale", _scale(ranges[tensor]))
        return scale_of[tensor]

    nodes.append(helper.make_node("QuantizeLinear", ["input", act_scale("input"), zp], ["input_q"]))
    qname = {"input": "input_q"}
    skip: set[str] = set()
    for node in model.graph.node:
        if node.name in skip:
            continue
        outs = consumers.get(node.output[0], [])
        relu_next = len(outs) == 1 and outs[0].op_type == "Relu"
        out_t = outs[0].output[0] if relu_next else node.output[0]
        if node.op_type in ("Conv", "Add") and relu_next:
            skip.add(outs[0].name)
        if node.op_type == "Conv":
            x, w_name, b_name = node.input
            w = inits[w_name]
            s_w = np.array(np.abs(w).max() / 127, F32)
            w_q = dp.quantize_linear(w, s_w, 0, np.int8)
            bias_q, _ = dp.quantize_bias(inits[b_name], values[scale_of[x]], s_w)
            ins = [
                qname[x],
                scale_of[x],
                zp,
                add_init(f"{w_name}_q", w_q),
                add_init(f"{w_name}_scale", s_w),
                zp,
                act_scale(out_t),
                zp,
                add_init(f"{b_name}_q", bias_q),
            ]
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            emit(nodes, "QLinearConv", ins, out_t, attrs, relu_next, fused, "")
            qname[out_t] = f"{out_t}_q"
            scale_of[node.output[0]] = scale_of[out_t]
        elif node.op_type == "Add":
            a, b = node.input
            ins = [qname[a], scale_of[a], zp, qname[b], scale_of[b], zp, act_scale(out_t), zp]
            emit(nodes, "QLinearAdd", ins, out_t, {}, relu_next, fused, "com.microsoft")
            qname[out_t] = f"{out_t}_q"
        elif node.op_type == "MaxPool":
            x = node.input[0]
            y = f"{node.output[0]}_q"
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            nodes.append(helper.make_node("MaxPool", [qname[x]], [y], name=node.name, **attrs))
            qname[node.output[0]] = y
            scale_of[node.output[0]] = scale_of[x]
        elif node.op_type == "GlobalAveragePool":
            x = node.input[0]
            deq, pooled = f"{x}_dq", node.output[0]
            nodes.append(helper.make_node("DequantizeLinear", [qname[x], scale_of[x], zp], [deq]))
            nodes.append(helper.make_node("GlobalAveragePool", [deq], [pooled], name=node.name))
            nodes.append(
                helper.make_node("QuantizeLinear", [pooled, act_scale(pooled), zp], [f"{pooled}_q"])
            )
            qname[pooled] = f"{pooled}_q"
        elif node.op_type == "Flatten":
            x = node.input[0]
            y = f"{node.output[0]}_q"
            nodes.append(helper.make_node("Flatten", [qname[x]], [y], name=node.name))
            qname[node.output[0]] = y
            scale_of[node.output[0]] = scale_of[x]
        elif node.op_type == "MatMul":
            x, w_name = node.input
            w = inits[w_name]
            s_w = np.array(np.abs(w).max() / 127, F32)
            ins = [
                qname[x],
                scale_of[x],
                zp,
                add_init(f"{w_name}_q", dp.quantize_linear(w, s_w, 0, np.int8)),
                add_init(f"{w_name}_scale", s_w),
                zp,
                act_scale("logits"),
                zp,
            ]
            nodes.append(helper.make_node("QLinearMatMul", ins, ["logits_q"], name=node.name))
            nodes.append(
                helper.make_node(
                    "DequantizeLinear", ["logits_q", scale_of["logits"], zp], ["logits"]
                )
            )
        else:
            raise ValueError(f"unexpected op {node.op_type}")
    graph = helper.make_graph(
        nodes, "resnet18_int8", list(model.graph.input), list(model.graph.output), new_inits
    )
    q = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", OPSET_INT8),
            helper.make_opsetid("com.microsoft", 1),
        ],
    )
    q.ir_version = 8
    meta = q.metadata_props.add()
    meta.key, meta.value = "systolic_sdk.backend", "systolic"
    return q


def emit(nodes, op, ins, out_t, attrs, relu_next, fused, domain) -> None:
    """Append a QLinear op producing ``{out_t}_q``, with its ReLU fused or standalone."""
    y = f"{out_t}_q"
    if relu_next and fused:
        nodes.append(helper.make_node(op, ins, [y], name=out_t, domain=domain, relu=1, **attrs))
    elif relu_next:
        pre = f"{out_t}_pre_q"
        nodes.append(helper.make_node(op, ins, [pre], name=out_t, domain=domain, **attrs))
        nodes.append(helper.make_node("Relu", [pre], [y], name=f"{out_t}_relu"))
    else:
        nodes.append(helper.make_node(op, ins, [y], name=out_t, domain=domain, **attrs))


# --- onnxruntime's fastest int8 form ------------------------------------------------------


def ort_fastest_int8(fp32_path: Path, out_path: Path, sample: np.ndarray) -> Path:
    """``quantize_static`` QDQ with QUInt8 activations and QInt8 weights (per tensor)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": sample[i : i + 1]} for i in range(len(sample))])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        str(fp32_path),
        str(out_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out_path


# --- contrib ops for onnx.reference (timing only; onnxruntime's rules) ---------------------


class QLinearAdd(OpRun):
    """com.microsoft QLinearAdd as onnxruntime computes it: dequantize, add, quantize."""

    op_domain = "com.microsoft"

    def _run(self, a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp):  # noqa: D102
        fa = dp.dequantize_linear(a, a_s, a_zp)
        fb = dp.dequantize_linear(b, b_s, b_zp)
        return (dp.quantize_linear(np.add(fa, fb, dtype=F32), y_s, y_zp, y_zp.dtype),)


class QGemm(OpRun):
    """com.microsoft QGemm (transA 0, alpha 1): an integer GEMM plus int32 bias, requantized."""

    op_domain = "com.microsoft"

    def _run(self, a, a_s, a_zp, b, b_s, b_zp, c=None, y_s=None, y_zp=None, **attrs):  # noqa: D102
        bb = b.astype(np.int64) - b_zp.astype(np.int64)
        if attrs.get("transB", 0):
            bb = bb.T
        acc = (a.astype(np.int64) - a_zp.astype(np.int64)) @ bb
        if c is not None:
            acc = acc + c.astype(np.int64)
        if y_s is None:
            return (dp.scale_accumulator(dp.wrap32(acc), dp.requant_multiplier(a_s, b_s, 1.0)),)
        m = dp.requant_multiplier(a_s, b_s, y_s)
        return (dp.requantize(dp.wrap32(acc), m, y_zp.dtype, y_zp),)


REFERENCE_OPS = [QLinearAdd, QGemm]


def with_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """A copy at a newer default opset (onnx.reference has Q/DQ from opset 19 only; the
    ops of these graphs mean the same at 13 and 19)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = max(o.version, version)
    return m


# --- timing -------------------------------------------------------------------------------


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_times(
    fns: list[Callable[[], object]], repeats: int
) -> list[tuple[float, float, float]]:
    """(median wall, min wall, median CPU) time of each function, calling them in turn
    ``repeats`` times after one warm-up call each, so that every contestant sees the same
    machine load. CPU time is the process's (every thread, onnxruntime's included)."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    cpus: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts, cs in zip(fns, times, cpus, strict=True):
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            ts.append(time.perf_counter() - start)
            cs.append(time.process_time() - cpu)
    return [
        (statistics.median(ts), min(ts), statistics.median(cs))
        for ts, cs in zip(times, cpus, strict=True)
    ]


def ort_session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


def _row(label: str, t: float, base: float, note: str = "") -> str:
    return f"  {label:<34} {t * 1e3:10.1f} ms   {t / base:8.2f}x   {note}"


def bench_resnet(
    batches: list[int], repeats: int, ref_repeats: int, ref_batches: list[int]
) -> None:
    """Time every contestant on ResNet-18 and print the table."""
    rng = np.random.default_rng(1)
    fp32 = resnet18_fp32()
    calib = rng.standard_normal((4, 3, 224, 224)).astype(F32)
    fused = systolic_int8(fp32, calib[:2], fused=True)
    plain = systolic_int8(fp32, calib[:2], fused=False)
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = Path(tmp) / "resnet18.onnx"
        onnx.save(fp32, str(fp32_path))
        fastest = ort_fastest_int8(fp32_path, Path(tmp) / "resnet18_u8s8.onnx", calib)
        sess_fast = ort_session(fastest)
    sess_same = ort_session(plain)
    emu = Executor(fused)
    emu_cpu = Executor(plain, target="cpu")
    reference = ReferenceEvaluator(plain, new_ops=REFERENCE_OPS)
    engine_label = (
        "onnxruntime engine" if ort_engine.enabled() else "NumPy datapath: engine self-check failed"
    )
    print(f"ResNet-18 int8, 224x224, {len(fused.graph.node)} nodes; onnxruntime 2 threads")
    for n in batches:
        x = rng.standard_normal((n, 3, 224, 224)).astype(F32)
        feeds = {"input": x}
        same = sess_same.run(None, feeds)[0]
        with ort_engine.using("numpy"):  # the datapath, not onnxruntime against itself
            exact = np.array_equal(emu_cpu.run(feeds)["logits"], same)

        def numpy_engine(feeds=feeds):
            with ort_engine.using("numpy"):
                return emu.run(feeds)

        reference_bits = numpy_engine()
        engine_bits = emu.run(feeds)
        same_bits = all(np.array_equal(v, engine_bits[k]) for k, v in reference_bits.items())
        timed = interleaved_times(
            [
                lambda: emu.run(feeds),  # noqa: B023
                numpy_engine,
                lambda: sess_fast.run(None, feeds),  # noqa: B023
                lambda: sess_same.run(None, feeds),  # noqa: B023
            ],
            repeats,
        )
        (
            (t_emu, m_emu, c_emu),
            (t_np, m_np, c_np),
            (t_fast, m_fast, c_fast),
            (t_same, m_same, c_same),
        ) = timed
        print(f" batch {n}: (ratio = time / emulator time; median, then min, of interleaved runs)")
        for label, t, mn, cpu in (
            (f"emulator ({engine_label})", t_emu, m_emu, c_emu),
            ("emulator (NumPy datapath only)", t_np, m_np, c_np),
            ("onnxruntime fastest int8 (U8S8 QDQ)", t_fast, m_fast, c_fast),
            ("onnxruntime same int8 graph (S8S8)", t_same, m_same, c_same),
        ):
            print(_row(label, t, t_emu, f"min {mn * 1e3:.1f} ms, cpu {cpu * 1e3:.1f} ms"))
        if n in ref_batches:
            t_ref = median_time(lambda: reference.run(None, feeds), ref_repeats)  # noqa: B023
            print(_row("onnx.reference same int8 graph", t_ref, t_emu))
            print(f"  emulator is {t_ref / t_emu:.0f}x faster than onnx.reference")
        else:
            print("  onnx.reference: skipped at this batch (--skip-reference-batch8)")
        print(
            f"  emulator / onnxruntime fastest: {t_emu / t_fast:.1f}x by medians, "
            f"{m_emu / m_fast:.1f}x by minima, {c_emu / c_fast:.1f}x by CPU time "
            "(target <= 3x at batch 8)"
        )
        print(f"  machine load average (1 min) after this batch: {_load():.1f}")
        print(f"  emulator(target=cpu) == onnxruntime on the same graph, bit for bit: {exact}")
        print(f"  emulator engines (onnxruntime, NumPy datapath) agree bit for bit: {same_bits}")


def bench_digits(batches: list[int], repeats: int) -> None:
    """The shipped model, quantized by onnxruntime (QOperator, S8S8 symmetric)."""
    if not (DIGITS / "model.onnx").exists():
        print("digits_cnn: models/digits_cnn/model.onnx not present, skipped")
        return
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    with np.load(DIGITS / "calib.npz") as z:
        calib = z["input"]
    with np.load(DIGITS / "test.npz") as z:
        test = z["input"]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calib[i : i + 50]} for i in range(0, len(calib), 50)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        q_path = Path(tmp) / "digits_int8.onnx"
        quantize_static(
            str(DIGITS / "model.onnx"),
            str(q_path),
            Reader(),
            quant_format=QuantFormat.QOperator,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": True},
        )
        q = onnx.load(str(q_path))
    sess = ort_session(q)
    emu = Executor(q)
    reference = ReferenceEvaluator(with_opset(q, OPSET_INT8), new_ops=REFERENCE_OPS)
    print(f"\ndigits_cnn int8 (onnxruntime QOperator S8S8), {len(q.graph.node)} nodes, real images")
    for n in batches:
        feeds = {"input": test[:n]}
        with ort_engine.using("numpy"):  # the datapath, not onnxruntime against itself
            exact = np.array_equal(emu.run(feeds)["logits"], sess.run(None, feeds)[0])
        t_emu = median_time(lambda: emu.run(feeds), repeats)  # noqa: B023
        t_ort = median_time(lambda: sess.run(None, feeds), repeats)  # noqa: B023
        t_ref = median_time(lambda: reference.run(None, feeds), max(1, repeats // 2))  # noqa: B023
        print(f" batch {n}: (ratio = time / emulator time)")
        print(_row("emulator", t_emu, t_emu))
        print(_row("onnxruntime same int8 graph", t_ort, t_emu))
        print(_row("onnx.reference same int8 graph", t_ref, t_emu))
        print(f"  emulator == onnxruntime bit for bit: {exact}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument(
        "--skip-reference-batch8",
        action="store_true",
        help="time onnx.reference at batch 1 only (it takes about 20 s per batch-8 run)",
    )
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 7
    print(f"numpy {np.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}")
    bench_resnet(
        [1, 8],
        repeats,
        ref_repeats=1 if args.quick else 3,
        ref_batches=[1] if args.skip_reference_batch8 else [1, 8],
    )
    bench_digits([8, 256], repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
